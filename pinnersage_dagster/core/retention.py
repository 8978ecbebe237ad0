"""Retention: how many days of published artifacts stay on disk (event logs: ``service_events``).

A root holds one folder per UTC day. Only *real days* count: a folder named ``YYYY-MM-DD``, not
after today, holding a readable ``manifest.json``; anything else (the pool graph, markers, a
stray ``backup/`` copy, an empty folder named like a future day) is logged and never touched.
Publishing day D removes the days older than the newest real day minus ``keep_days - 1``, except:

- the newest day, and the day just published;
- a serving snapshot some service is serving: each running service keeps a marker file under
  ``<serving root>/.in_use/`` naming its partition, touched at every snapshot poll; a marker
  older than ``MARKER_FRESH_SECONDS`` is a service that is gone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

IN_USE = ".in_use"
MARKER_FRESH_SECONDS = 15 * 60
# what a root holds besides its days, not worth a warning: the pool graph, the source stamp (provenance.STAMP)
EXPECTED_OTHERS = {"pool_graph", "SOURCE.json"}

log = logging.getLogger(__name__)


def utc_today() -> date:
    return datetime.now(UTC).date()


def days(root: Path, today: date | None = None, ignored: dict[str, str] | None = None) -> dict[date, Path]:
    """The real days of a root: folders named ``YYYY-MM-DD``, not after ``today`` (default: today,
    UTC), with a readable manifest. Anything else is ignored, with its reason put in ``ignored``
    (name -> why) for the caller to report."""
    today = today or utc_today()
    out = {}
    for path in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        if path.name.startswith(".") or path.name in EXPECTED_OTHERS:
            continue
        why = _not_a_day(path, today)
        if why is None:
            out[date.fromisoformat(path.name)] = path
        elif ignored is not None:
            ignored[path.name] = why
    return out


def _not_a_day(path: Path, today: date) -> str | None:
    try:
        day = date.fromisoformat(path.name)
    except ValueError:
        return "not named as a day (YYYY-MM-DD)"
    if not path.is_dir():
        return "not a folder"
    if day > today:
        return f"a day after today ({today})"
    try:
        json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return "no readable manifest.json"
    return None


def horizon(newest: date, keep_days: int) -> date:
    """The oldest day kept."""
    return newest - timedelta(days=keep_days - 1)


def prune_artifacts(root: Path, *, keep_days: int, protect: set[str], today: date | None = None) -> list[str]:
    """Remove real days older than the horizon, except ``protect`` (partition names) and the newest.
    What is not a real day is never removed, and logged."""
    ignored: dict[str, str] = {}
    present = days(root, today, ignored)
    for name, why in ignored.items():
        log.warning("retention ignores %s: %s", Path(root) / name, why)
    if not present:
        return []
    oldest_kept = horizon(max(present), keep_days)
    removed = []
    for day, path in sorted(present.items()):
        if day < oldest_kept and day.isoformat() not in protect:
            shutil.rmtree(path)
            removed.append(day.isoformat())
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
