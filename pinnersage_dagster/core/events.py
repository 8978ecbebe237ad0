"""One action event as the service's event log stores it: the files, the line format, the only
code that reads a line, and the event's exact identity.

Files: one per UTC day of the events' ``ts``, ``<root>/YYYY-MM-DD.jsonl``, append-only; every
writer holds an exclusive ``flock`` on the file while it appends.

A line is a JSON object ``{"user_id", "pin_id", "action", "ts"}`` ending in a newline: ids are
JSON integers within int64, ``action`` is ``repin`` or ``click``, ``ts`` an ISO 8601 date-time
string (UTC when it carries no offset) within pandas' nanosecond range. Other keys are ignored,
so a newer writer may add some. ``decode`` never raises: any byte string that is not such an
event (torn, garbled, an integer past int64, a nested bomb) is ``None``, which every reader
counts and skips, so no line of a log can stop a reader.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd

SUFFIX = ".jsonl"
ACTIONS = ("repin", "click")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_ACTION_CODE = {action: code for code, action in enumerate(ACTIONS)}
_IDENTITY = struct.Struct("<qqqB")  # ts (ns), user, pin, action: 25 bytes, exact


@dataclass(frozen=True, order=True, slots=True)
class OnlineEvent:
    ts: pd.Timestamp  # tz-naive UTC
    user_id: int
    pin_id: int
    action: str


def identity(event: OnlineEvent) -> bytes:
    """The event's full identity as 25 bytes: equal exactly when every field is equal (no hash)."""
    return _IDENTITY.pack(event.ts.value, event.user_id, event.pin_id, _ACTION_CODE[event.action])


def encode(event: OnlineEvent) -> bytes:
    ts = event.ts.isoformat(timespec="microseconds")
    line = {"user_id": event.user_id, "pin_id": event.pin_id, "action": event.action, "ts": ts}
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


def _is_int64(value: object) -> bool:
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def parse_ts(text: str) -> pd.Timestamp | None:
    """A tz-naive UTC timestamp from ISO 8601 text, or None (unparseable or out of range)."""
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        ts = pd.Timestamp(parsed).as_unit("ns")
    except (ValueError, OverflowError):  # OutOfBoundsDatetime is a ValueError
        return None
    return ts


def decode(line: bytes) -> OnlineEvent | None:
    """The event of one line, or None if the line is not a whole, well-formed event."""
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):  # not UTF-8 or not JSON (UnicodeDecodeError is a ValueError)
        return None
    if type(raw) is not dict:
        return None
    user_id, pin_id, action, ts = raw.get("user_id"), raw.get("pin_id"), raw.get("action"), raw.get("ts")
    if not (isinstance(user_id, int) and isinstance(pin_id, int) and _is_int64(user_id) and _is_int64(pin_id)):
        return None
    if type(action) is not str or action not in ACTIONS or type(ts) is not str or (parsed := parse_ts(ts)) is None:
        return None
    return OnlineEvent(ts=parsed, user_id=user_id, pin_id=pin_id, action=action)


def log_path(root: Path | str, day: date) -> Path:
    """The event log of one UTC day: the one place its name is built."""
    return Path(root) / f"{day:%Y-%m-%d}{SUFFIX}"


def log_day(path: Path | str) -> date | None:
    """The day an event log file holds, or None if the name is not a day's log."""
    name = Path(path).name
    if not name.endswith(SUFFIX):
        return None
    try:
        return date.fromisoformat(name.removesuffix(SUFFIX))
    except ValueError:
        return None


def read_lines(path: Path, start: int = 0, end: int | None = None) -> tuple[list[bytes], int, bytes]:
    """Complete lines of bytes [start, end) (default: to the end of the file), the offset after
    the last newline, and the trailing partial line (a write in progress, or a torn record)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(end - start)
    stop = data.rfind(b"\n") + 1
    return data[:stop].splitlines(), start + stop, data[stop:]


def lines_before(path: Path, offset: int, chunk: int = 1 << 20) -> int:
    """How many lines end before byte ``offset`` (the line number of a line starting there, minus 1)."""
    count = 0
    with open(path, "rb") as f:
        while f.tell() < offset:
            count += f.read(min(chunk, offset - f.tell())).count(b"\n")
    return count


def sealed_size(path: Path) -> int:
    """The file's size once every line in it is whole. Under the writers' lock no write is in
    progress, so a last line without its newline is a torn record (a writer died mid-write): it
    is terminated here, as the next writer would, and becomes one unreadable line."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
            os.fsync(fd)
            size += 1
        return size
    finally:
        os.close(fd)
