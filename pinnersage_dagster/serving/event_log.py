"""The service's durable event intake: an append-only log, one JSON Lines file per UTC day of
the events' ``ts`` (``<root>/YYYY-MM-DD.jsonl``, one ``{"user_id", "pin_id", "action", "ts"}``
object per line).

- **Durable before 2xx.** Accepted events are appended under an exclusive lock on the day's
  file and fsynced before ``append`` returns; if that fails, ``EventLogError`` (the API answers
  503). A line is never rewritten: files only grow.
- **One copy per event.** Under the lock, the writer first reads what other writers (other
  workers) appended, so an event with the same content is kept once, whichever worker got it.
- **Torn records.** A crash mid-write can leave a last line without its newline. The next
  writer terminates it with a newline before appending, so the torn bytes become one unreadable
  line, skipped and counted by readers, never merged into the next event.
- **Followers.** ``follow`` returns what was appended since the last call, by anyone: every
  worker sees every accepted event on its next request.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from .online import OnlineEvent


ONE_DAY = timedelta(days=1)


class EventLogError(RuntimeError):
    """The log could not be written: nothing may be acknowledged."""


@dataclass
class LogStats:
    appended: int = 0
    duplicates: int = 0
    read: int = 0
    unreadable_lines: int = 0


def encode(event: OnlineEvent) -> bytes:
    ts = event.ts.isoformat(timespec="microseconds")
    return (json.dumps({"user_id": event.user_id, "pin_id": event.pin_id, "action": event.action, "ts": ts},
                       separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> OnlineEvent | None:
    """The event of one line, or None if the line is not a whole, well-formed event."""
    try:
        raw = json.loads(line)
        ts = pd.Timestamp(raw["ts"])
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        user_id, pin_id, action = raw["user_id"], raw["pin_id"], raw["action"]
        if not all(type(v) is int for v in (user_id, pin_id)) or not isinstance(action, str):
            return None
        return OnlineEvent(ts=ts, user_id=user_id, pin_id=pin_id, action=action)
    except (ValueError, KeyError, TypeError):
        return None


def read_lines(path: Path, start: int = 0) -> tuple[list[bytes], int, bytes]:
    """Complete lines from byte ``start``, the offset after the last newline, and the trailing
    partial line (a write in progress, or a torn record: followers read it once it ends)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), start + end, data[end:]


class EventLog:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.stats = LogStats()
        self._offsets: dict[Path, int] = {}
        self._seen: dict[Path, set[int]] = {}  # hashes of the events in each day's file (8-byte keys, not lines)
        self._lock = threading.Lock()
        self._paths: dict[date, Path] = {}

    def path(self, day: date) -> Path:
        path = self._paths.get(day)
        if path is None:
            path = self._paths[day] = self.root / f"{day:%Y-%m-%d}.jsonl"
        return path

    def append(self, events: list[OnlineEvent]) -> tuple[list[bool], list[OnlineEvent]]:
        """Append the events not yet in the log, durably. Returns, per event, whether it was new,
        and the events other writers appended meanwhile (for the caller's follower state)."""
        by_day: dict[date, list[int]] = {}
        for i, event in enumerate(events):
            by_day.setdefault(event.ts.date(), []).append(i)
        kept, others = [False] * len(events), []
        with self._lock:
            for day, positions in by_day.items():
                path = self.path(day)
                try:
                    self.root.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                except OSError as exc:
                    raise EventLogError(f"cannot open the event log {path}: {exc}") from exc
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    others += self._catch_up(path)  # what the other workers wrote first
                    seen = self._seen.setdefault(path, set())
                    lines = []
                    for i in positions:
                        key = hash(events[i])
                        if key in seen:
                            continue
                        seen.add(key)
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
                        self._offsets[path] = size + len(payload)
                except OSError as exc:
                    for i in positions:  # nothing of this day is acknowledged
                        if kept[i]:
                            self._seen[path].discard(hash(events[i]))
                            kept[i] = False
                    raise EventLogError(f"cannot append to the event log {path}: {exc}") from exc
                finally:
                    os.close(fd)  # closing releases the lock
        self.stats.appended += sum(kept)
        self.stats.duplicates += len(events) - sum(kept)
        return kept, others

    def follow(self, since: date, until: date | None = None) -> list[OnlineEvent]:
        """Events appended (by anyone) to the files of days ``since`` .. ``until`` (default: tomorrow,
        UTC) since the last call. Cheap when nothing changed: one stat per day."""
        until = until or datetime.now(timezone.utc).date() + ONE_DAY
        out: list[OnlineEvent] = []
        with self._lock:
            day = since
            while day <= until:
                out += self._catch_up(self.path(day))
                day += ONE_DAY
        return out

    def _catch_up(self, path: Path) -> list[OnlineEvent]:
        start = self._offsets.get(path, 0)
        try:
            if os.stat(path).st_size <= start:
                return []
            lines, self._offsets[path], _ = read_lines(path, start)
        except FileNotFoundError:
            return []
        seen = self._seen.setdefault(path, set())
        events = []
        for line in lines:
            event = decode(line)
            if event is None:
                self.stats.unreadable_lines += 1
                continue
            seen.add(hash(event))
            events.append(event)
        self.stats.read += len(events)
        return events


def _ends_with_newline(fd: int, size: int) -> bool:
    return os.pread(fd, 1, size - 1) == b"\n"


def iter_day(path: Path) -> Iterator[tuple[int, bytes, OnlineEvent | None]]:
    """(line number, raw line, event or None if unreadable) of one day's file, for ingestion."""
    lines, _, tail = read_lines(path)
    for number, line in enumerate(lines, 1):
        yield number, line, decode(line)
    if tail:  # a torn last record with no newline: unreadable, still counted
        yield len(lines) + 1, tail, None
