"""The impression log: what was shown under an experiment, one JSON Lines file per UTC day
(``<root>/YYYY-MM-DD.jsonl``), shared by every worker of the service.

A line: ``{"impression_id", "ts", "user_id", "experiment", "arm", "policy", "source", "snapshot"
(the partition), "snapshot_version" (its build), "pin_ids"}``; ``arm`` is null for a request that named its own ``?policy=`` (outside the
experiment, kept so it can be counted). Lines are written in small groups, not fsynced per
request: each worker buffers up to ``flush_lines`` lines or ``flush_seconds`` of traffic and
appends the group with one ``write`` under an exclusive ``flock``. A killed worker loses at most
its buffer (fewer than ``flush_lines`` impressions, at most ``flush_seconds`` old); what was
written survives a killed process (a machine crash may lose what the OS had not yet written). A
line cut by a crash is sealed by the next append and skipped, and counted, by the reader.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

SUFFIX = ".jsonl"
FIELDS = ("impression_id", "ts", "user_id", "experiment", "arm", "policy", "source", "snapshot", "pin_ids")


@dataclass
class ImpressionStats:
    recorded: int = 0
    written: int = 0
    groups: int = 0
    lost: int = 0  # lines a failed write could not keep (counted, never fatal to a request)
    errors: list[str] = field(default_factory=list)


class ImpressionLog:
    def __init__(self, root: str | Path, *, flush_lines: int = 64, flush_seconds: float = 1.0) -> None:
        self.root = Path(root)
        self.flush_lines = flush_lines
        self.flush_seconds = flush_seconds
        self.stats = ImpressionStats()
        self._buffer: dict[str, list[bytes]] = {}
        self._pending = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, line: dict[str, Any], day: date) -> None:
        data = orjson.dumps(line) + b"\n"
        with self._lock:
            self._buffer.setdefault(day.isoformat(), []).append(data)
            self._pending += 1
            self.stats.recorded += 1
            if self._pending >= self.flush_lines:
                self._flush_locked()
        if self._thread is None:
            self._start()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def _flush_locked(self) -> None:
        groups, self._buffer, self._pending = self._buffer, {}, 0
        for day, lines in groups.items():
            try:
                append_lines(self.root / f"{day}{SUFFIX}", b"".join(lines))
            except OSError as exc:
                self.stats.lost += len(lines)
                self.stats.errors = [*self.stats.errors[-4:], f"{day}: {exc}"]
            else:
                self.stats.written += len(lines)
                self.stats.groups += 1


def append_lines(path: Path, data: bytes) -> None:
    """Append whole lines under an exclusive lock, first sealing a line a crash left unfinished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: the last byte
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_impressions(
    root: str | Path, days: Iterable[date], *, mentioning: str | None = None
) -> tuple[pd.DataFrame, int]:
    """Every readable impression of those days' files, and how many lines could not be read (torn,
    garbage, missing fields): skipped and counted, never fatal. ``mentioning``: only the files
    whose text contains it are read (a later day's file holds a snapshot's traffic only if the
    snapshot's date is written in it), so looking for a stale snapshot's traffic costs a byte
    search of each file, not a parse."""
    rows, unreadable = [], 0
    for day in days:
        path = Path(root) / f"{day.isoformat()}{SUFFIX}"
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            continue
        if mentioning is not None and mentioning.encode() not in content:
            continue
        for raw in content.split(b"\n"):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
                row = {key: line[key] for key in FIELDS}
                row["user_id"] = int(row["user_id"])
                row["ts"] = pd.Timestamp(row["ts"]).tz_localize(None)
                if not isinstance(row["pin_ids"], list) or not all(type(p) is int for p in row["pin_ids"]):
                    raise ValueError("pin_ids")
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                unreadable += 1
                continue
            rows.append(row)
    frame = pd.DataFrame(rows, columns=list(FIELDS))
    if not frame.empty:
        frame["ts"] = pd.to_datetime(frame["ts"])
    return frame, unreadable


def impression_days(root: str | Path) -> list[date]:
    """The days of the impression files under ``root``, in order (other files are ignored)."""
    days = []
    for path in Path(root).glob(f"*{SUFFIX}"):
        try:
            days.append(date.fromisoformat(path.name.removesuffix(SUFFIX)))
        except ValueError:
            continue
    return sorted(days)


def prune_impressions(root: str | Path, *, keep_days: int, today: date) -> list[str]:
    """Remove the day files older than ``keep_days`` before ``today``; other files are left alone."""
    removed = []
    for day in impression_days(root):
        if (today - day).days > keep_days:
            path = Path(root) / f"{day.isoformat()}{SUFFIX}"
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
