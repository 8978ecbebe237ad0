"""Retention: how many days of published artifacts and event logs stay on disk.

A root holds one folder (artifacts) or file (event logs) per UTC day, named ``YYYY-MM-DD``.
Publishing day D removes the days older than the newest day minus ``keep_days - 1``, except:

- the newest day, and the day just published;
- a serving snapshot some service is serving: each running service keeps a marker file under
  ``<serving root>/.in_use/`` naming its partition, touched at every snapshot poll; a marker
  older than ``MARKER_FRESH_SECONDS`` is a service that is gone;
- an event log that is not yet in the warehouse: it is removed only once ``raw_actions`` has
  ingested all of it (the size it recorded equals the file's size). An event log is data.

Anything not named like a day (the pool graph, markers, stray files) is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from datetime import date, timedelta
from pathlib import Path

IN_USE = ".in_use"
MARKER_FRESH_SECONDS = 15 * 60


def _day(name: str) -> date | None:
    try:
        return date.fromisoformat(name.removesuffix(".jsonl"))
    except ValueError:
        return None


def days(root: Path, suffix: str = "") -> dict[date, Path]:
    """The day entries of a root: folders (``suffix=''``) or files ending in ``suffix``."""
    out = {}
    for path in Path(root).iterdir() if Path(root).is_dir() else []:
        if suffix and not path.name.endswith(suffix) or not suffix and not path.is_dir():
            continue
        day = _day(path.name)
        if day is not None:
            out[day] = path
    return out


def horizon(newest: date, keep_days: int) -> date:
    """The oldest day kept."""
    return newest - timedelta(days=keep_days - 1)


def prune_artifacts(root: Path, *, keep_days: int, protect: set[str]) -> list[str]:
    """Remove day folders older than the horizon, except ``protect`` (partition names) and the newest."""
    present = days(root)
    if not present:
        return []
    oldest_kept = horizon(max(present), keep_days)
    removed = []
    for day, path in sorted(present.items()):
        if day < oldest_kept and day.isoformat() not in protect:
            shutil.rmtree(path)
            removed.append(day.isoformat())
    return removed


def prune_event_logs(root: Path, *, keep_days: int, today: date, ingested_bytes: dict[str, int]) -> list[str]:
    """Remove event logs older than the horizon (from ``today``) whose every byte is ingested."""
    oldest_kept = horizon(today, keep_days)
    removed = []
    for day, path in sorted(days(root, ".jsonl").items()):
        if day < oldest_kept and ingested_bytes.get(path.name) == path.stat().st_size:
            path.unlink()
            removed.append(path.name)
    return removed


def disk_bytes(path: Path) -> int:
    """Bytes a folder holds on disk, each file once (hard links shared with other days count once here too)."""
    seen, total = set(), 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            stat = os.stat(os.path.join(dirpath, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def marker_path(serving_root: Path) -> Path:
    return Path(serving_root) / IN_USE / f"{socket.gethostname()}-{os.getpid()}"


def mark_in_use(serving_root: Path, partition: str) -> None:
    """Say (and keep saying, by calling again) that this process serves ``partition``."""
    path = marker_path(serving_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f"{path.name}.tmp"
    temporary.write_text(partition)
    os.replace(temporary, path)


def clear_in_use(serving_root: Path) -> None:
    marker_path(serving_root).unlink(missing_ok=True)


def served_partitions(serving_root: Path, now: float | None = None) -> set[str]:
    """Partitions named by fresh markers: what running services are serving."""
    now = time.time() if now is None else now
    out = set()
    for marker in (Path(serving_root) / IN_USE).glob("*"):
        try:
            if now - marker.stat().st_mtime <= MARKER_FRESH_SECONDS and not marker.name.endswith(".tmp"):
                out.add(marker.read_text().strip())
        except OSError:
            continue  # a marker removed meanwhile
    return out
