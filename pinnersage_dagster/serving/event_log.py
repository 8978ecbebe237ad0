"""The service's durable event intake: an append-only log, one JSON Lines file per UTC day of
the events' ``ts`` (``<root>/YYYY-MM-DD.jsonl``, lines as ``core.events`` defines them).

- **Durable before 2xx.** Accepted events are appended under an exclusive lock on the day's
  file and fsynced before ``append`` returns; if that fails, ``EventLogError`` (the API answers
  503). A line is never rewritten: files only grow, until retention removes a whole file that
  the warehouse holds (``core.retention``); a writer that finds its file removed under it
  opens a new one, so nothing is written into a removed file.
- **One copy per event.** Under the lock, the writer first reads what other writers (other
  workers) appended, so an event identical in every field is kept once, whichever worker got
  it. Identity is exact (``core.events.identity``), never a hash.
- **Bounded memory.** Dedup keys are held per day file, only for the days this worker can
  still accept (``retire_before``, called when a newer snapshot covers a day): about
  ``DEDUP_BYTES_PER_EVENT`` bytes per event of those days, per worker.
- **Torn records.** A crash mid-write can leave a last line without its newline. The next
  writer (or ingestion) terminates it with a newline before appending, so the torn bytes
  become one unreadable line, skipped and counted by readers, never merged into the next event.
- **Followers.** ``follow`` returns what was appended since the last call, by anyone: every
  worker sees every accepted event on its next request.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ..core.events import OnlineEvent, decode, encode, identity, log_day, log_path, read_lines

ONE_DAY = timedelta(days=1)
# measured with tracemalloc (tests/test_acknowledged_events.py): a 25-byte key object and its set slot
DEDUP_BYTES_PER_EVENT = 170  # 86 to 163 measured, by where the set is in its growth


class EventLogError(RuntimeError):
    """The log could not be written: nothing may be acknowledged."""


@dataclass
class LogStats:
    appended: int = 0
    duplicates: int = 0
    read: int = 0
    unreadable_lines: int = 0


@dataclass
class _DayState:
    """What this worker knows of one day's file: how far it has read it, and its events' keys."""

    inode: int | None = None
    offset: int = 0
    keys: set[bytes] = field(default_factory=set)


class EventLog:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.stats = LogStats()
        self._days: dict[date, _DayState] = {}
        self._lock = threading.Lock()
        self._listed_mtime: int | None = None  # the folder's mtime when its day files were last listed
        self._present: list[date] = []

    def path(self, day: date) -> Path:
        return log_path(self.root, day)

    @property
    def dedup_keys(self) -> int:
        """Dedup keys held now (about ``DEDUP_BYTES_PER_EVENT`` bytes each)."""
        return sum(len(state.keys) for state in self._days.values())

    def retire_before(self, day: date) -> None:
        """Forget the days before ``day``: this worker no longer accepts their events."""
        with self._lock:
            for old in [d for d in self._days if d < day]:
                del self._days[old]

    def append(self, events: list[OnlineEvent]) -> tuple[list[bool], list[OnlineEvent]]:
        """Append the events not yet in the log, durably. Returns, per event, whether it was new,
        and the events other writers appended meanwhile (for the caller's follower state)."""
        by_day: dict[date, list[int]] = {}
        for i, event in enumerate(events):
            by_day.setdefault(event.ts.date(), []).append(i)
        kept, others = [False] * len(events), []
        with self._lock:
            for day, positions in by_day.items():
                others += self._append_day(day, events, positions, kept)
        self.stats.appended += sum(kept)
        self.stats.duplicates += len(events) - sum(kept)
        return kept, others

    def _append_day(
        self, day: date, events: list[OnlineEvent], positions: list[int], kept: list[bool]
    ) -> list[OnlineEvent]:
        path = self.path(day)
        fd = self._open_locked(path)
        state = self._days.setdefault(day, _DayState())
        added: list[bytes] = []
        try:
            others = self._catch_up(day, path, fd)  # what the other workers wrote first
            lines = []
            for i in positions:
                key = identity(events[i])
                if key in state.keys:
                    continue
                state.keys.add(key)
                added.append(key)
                lines.append(encode(events[i]))
                kept[i] = True
            if lines:
                size = os.fstat(fd).st_size
                prefix = b"" if size == 0 or _ends_with_newline(fd, size) else b"\n"  # seal a torn record
                payload = prefix + b"".join(lines)
                written = os.write(fd, payload)
                if written != len(payload):
                    raise OSError(f"short write: {written} of {len(payload)} bytes")
                os.fsync(fd)
                state.offset = size + len(payload)
            return others
        except OSError as exc:
            state.keys.difference_update(added)  # nothing of this day is acknowledged
            for i in positions:
                kept[i] = False
            raise EventLogError(f"cannot append to the event log {path}: {exc}") from exc
        finally:
            os.close(fd)  # closing releases the lock

    def _open_locked(self, path: Path) -> int:
        """The day's file, open for appending and exclusively locked; a file retention removed
        while we waited for the lock is left alone and a new one opened."""
        while True:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise EventLogError(f"cannot open the event log {path}: {exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink > 0:
                    return fd
            except OSError as exc:
                os.close(fd)
                raise EventLogError(f"cannot lock the event log {path}: {exc}") from exc
            os.close(fd)

    def follow(self, since: date, until: date | None = None) -> list[OnlineEvent]:
        """Events appended (by anyone) to the files of days ``since`` .. ``until`` (default: tomorrow,
        UTC) since the last call. Cheap when nothing changed: one stat per day. Days before
        ``since`` are forgotten (their dedup keys freed)."""
        until = until or datetime.now(UTC).date() + ONE_DAY
        out: list[OnlineEvent] = []
        with self._lock:
            for old in [d for d in self._days if d < since]:
                del self._days[old]
            for day in self._present_days(since, until):
                out += self._catch_up(day, self.path(day))
        return out

    def _present_days(self, since: date, until: date) -> list[date]:
        """The days in ``since .. until`` that have a log. The folder is listed again only when its
        mtime changed (a file was created or removed) or is too recent to trust, so a request costs
        one stat of the folder and one per day present, however old the served snapshot."""
        try:
            mtime = os.stat(self.root).st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != self._listed_mtime or time.time_ns() - mtime < 2_000_000_000:
            self._present = sorted(d for d in (log_day(name) for name in os.listdir(self.root)) if d is not None)
            self._listed_mtime = mtime
        return [d for d in self._present if since <= d <= until]

    def _catch_up(self, day: date, path: Path, fd: int | None = None) -> list[OnlineEvent]:
        try:
            stat = os.fstat(fd) if fd is not None else os.stat(path)
        except FileNotFoundError:
            return []
        state = self._days.setdefault(day, _DayState())
        if state.inode != stat.st_ino:  # first look, or a new file where a removed one was
            state.inode, state.offset = stat.st_ino, 0
            state.keys.clear()
        if stat.st_size <= state.offset:
            return []
        try:
            lines, state.offset, _ = read_lines(path, state.offset, stat.st_size)
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            event = decode(line)
            if event is None:
                if line:  # an empty line carries nothing (a seal after a torn record)
                    self.stats.unreadable_lines += 1
                continue
            state.keys.add(identity(event))
            events.append(event)
        self.stats.read += len(events)
        return events


def _ends_with_newline(fd: int, size: int) -> bool:
    return os.pread(fd, 1, size - 1) == b"\n"


def iter_day(path: Path) -> Iterator[tuple[int, bytes, OnlineEvent | None]]:
    """(line number, raw line, event or None if unreadable) of one day's file."""
    lines, _, tail = read_lines(path)
    for number, line in enumerate(lines, 1):
        yield number, line, decode(line)
    if tail:  # a torn last record with no newline: unreadable, still counted
        yield len(lines) + 1, tail, None
