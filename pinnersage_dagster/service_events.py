"""The service's event logs into the warehouse: every accepted event exactly once, whatever day
it arrives.

The service appends each accepted event to the log of its ``ts``'s UTC day
(``serving.event_log``), and keeps accepting a day's events until a snapshot covering that day
is served, so a log can grow after the run of its day has read it (a late event). The run of
day D (``raw_actions``) therefore *claims*, from the logs of day D and of every earlier day
still on disk, the bytes no run has claimed yet: D's own log, and what earlier logs gained
since they were last read.

- A claim is a byte range [start, end) of one file, ending at a line boundary (a torn last
  record is sealed first, under the writers' lock: ``core.events.sealed_size``). Its lines
  land in ``service_events`` (partition = the claiming day; one row per line, an unreadable
  line with its text), and the range in ``event_log_ingestions``, in the same transaction as
  the day's ``raw_actions``: what is recorded as ingested is exactly what was read.
- Claims are permanent. A re-run of day D validates D's claimed events again from
  ``service_events`` (the warehouse's copy outlives the file), and claims what is new.
- Retention removes a log only when claims cover every byte of it, no live service can still
  append to it (the day is covered by every snapshot a service marks in use), under the
  writers' lock; its claims are then retired, so a new file of that name starts unclaimed.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from .core.contract import QUARANTINE_COLUMNS
from .core.events import decode, lines_before, log_day, read_lines, sealed_size
from .core.retention import horizon

UNREADABLE_TEXT_CHARS = 500


@dataclass(frozen=True)
class Claim:
    """Lines [first_line, first_line + len(lines)) of one log file: bytes [start, end)."""

    file: str
    start: int
    end: int
    first_line: int
    lines: list[bytes]


def claimed_ranges(conn: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[int, int]]]:
    """The live (not retired) claims of every file, sorted."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    rows = conn.execute(
        "SELECT file, start_byte, end_byte FROM event_log_ingestions WHERE NOT retired ORDER BY file, start_byte"
    ).fetchall()
    for file, start, end in rows:
        ranges.setdefault(file, []).append((int(start), int(end)))
    return ranges


def gaps(covered: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The ranges of [0, size) that ``covered`` (sorted, disjoint) leaves out."""
    out, position = [], 0
    for start, end in covered:
        if start > position:
            out.append((position, min(start, size)))
        position = max(position, end)
    if position < size:
        out.append((position, size))
    return [(a, b) for a, b in out if a < b]


def new_claims(root: Path, day: date, claimed: dict[str, list[tuple[int, int]]]) -> list[Claim]:
    """What the run of ``day`` claims: the unclaimed bytes of every log of ``day`` or earlier."""
    claims = []
    for path in sorted(Path(root).glob("*")) if Path(root).is_dir() else []:
        file_day = log_day(path)
        if file_day is None or file_day > day or not path.is_file():
            continue
        covered = claimed.get(path.name, [])
        if not gaps(covered, path.stat().st_size):
            continue  # nothing new: no lock taken
        size = sealed_size(path)
        for start, end in gaps(covered, size):
            lines, stop, _ = read_lines(path, start, end)
            if stop != end:  # claims end at line boundaries, and the file is sealed up to ``size``
                raise RuntimeError(f"{path}: bytes {start}..{end} do not end a line; the log was changed by hand")
            claims.append(Claim(path.name, start, end, lines_before(path, start) + 1, lines))
    return claims


OVERLAP_SQL = """
    SELECT c.file, c.start_byte, c.end_byte, i.partition_date
    FROM incoming_claims c JOIN event_log_ingestions i
      ON i.file = c.file AND NOT i.retired AND i.start_byte < c.end_byte AND c.start_byte < i.end_byte
    LIMIT 1
"""


def record_claims(conn: duckdb.DuckDBPyConnection, day: date, claims: list[Claim]) -> None:
    """Record the claims of ``day`` and their lines (inside the caller's transaction)."""
    if not claims:
        return
    ranges = pd.DataFrame(
        {"file": [c.file for c in claims], "start_byte": [c.start for c in claims], "end_byte": [c.end for c in claims]}
    )
    conn.register("incoming_claims", ranges)
    try:
        overlap = conn.execute(OVERLAP_SQL).fetchall()
        if overlap:  # a concurrent run got there first (the duckdb pool normally prevents this)
            file, start, end, other = overlap[0]
            raise RuntimeError(f"{file} bytes {start}..{end} were claimed meanwhile by raw_actions of {other}: re-run")
        conn.execute(
            "INSERT INTO event_log_ingestions SELECT ?, file, start_byte, end_byte, false FROM incoming_claims", [day]
        )
    finally:
        conn.unregister("incoming_claims")
    rows: list[tuple[object, ...]] = []
    for claim in claims:
        for number, line in enumerate(claim.lines, claim.first_line):
            event = decode(line)
            if event is not None:
                rows.append((claim.file, number, event.user_id, event.pin_id, event.action, event.ts, None))
            elif line:  # an empty line is the seal after a torn record: no event, nothing to keep
                text = line[:UNREADABLE_TEXT_CHARS].decode("utf-8", "replace")
                rows.append((claim.file, number, None, None, None, None, text))
    frame = pd.DataFrame(rows, columns=["file", "line", "user_id", "pin_id", "action", "ts", "raw"])
    frame["user_id"], frame["pin_id"] = frame["user_id"].astype("Int64"), frame["pin_id"].astype("Int64")
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[us]")
    conn.register("incoming_events", frame)
    try:
        conn.execute(
            "INSERT INTO service_events SELECT ?, file, line, user_id, pin_id, action, ts, raw FROM incoming_events",
            [day],
        )
    finally:
        conn.unregister("incoming_events")


def claimed_events(conn: duckdb.DuckDBPyConnection, day: date, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every event ``day`` has claimed (old and new), as raw action rows with the day of their log
    (``log_day``), and its unreadable lines as quarantine rows (``unreadable_event_line``)."""
    frame = conn.execute(
        "SELECT file, line, user_id, pin_id, action, ts, raw FROM service_events WHERE partition_date = ? ORDER BY file, line",
        [day],
    ).df()
    source = frame["file"].map(lambda name: str(Path(root) / name))
    bad = frame["raw"].notna()
    unreadable = pd.DataFrame(
        {
            "source": source[bad],
            "row_number": frame["line"][bad],
            "reason": "unreadable_event_line",
            "detail": frame["raw"][bad],
            "user_id": None,
            "pin_id": None,
            "action": None,
            "ts": None,
        },
        columns=QUARANTINE_COLUMNS + ["user_id", "pin_id", "action", "ts"],
    ).reset_index(drop=True)
    good = frame[~bad].reset_index(drop=True)
    rows = pd.DataFrame(
        {
            "source": source[~bad].reset_index(drop=True),
            "row_number": good["line"],
            "user_id": good["user_id"].astype("Int64"),
            "pin_id": good["pin_id"].astype("Int64"),
            "action": good["action"],
            "ts": pd.to_datetime(good["ts"]).astype("datetime64[us]"),
            "log_day": good["file"].map(log_day),
        }
    )
    for column in ("user_id", "pin_id", "action", "ts"):
        rows[f"raw_{column}"] = rows[column].astype(str) if len(rows) else pd.Series(dtype="object")
    return rows, unreadable


def prune_event_logs(
    conn: duckdb.DuckDBPyConnection, root: Path, *, keep_days: int, today: date, served: set[str]
) -> list[str]:
    """Remove the logs older than ``keep_days`` from ``today`` that the warehouse holds entirely
    and no live service can append to (a service serving partition S appends to days after S
    only); retire their claims. Returns the removed file names."""
    root = Path(root)
    oldest_kept = horizon(today, keep_days)
    served_days = [d for d in (_as_day(p) for p in served) if d is not None]
    appendable_from = min(served_days) + timedelta(days=1) if served_days else None
    claimed = claimed_ranges(conn)
    removed = []
    for name, covered in claimed.items():
        path, file_day = root / name, log_day(name)
        if not path.exists():  # removed by an earlier pass that stopped before retiring its claims
            _retire(conn, name)
            continue
        if file_day is None or file_day >= oldest_kept:
            continue
        if appendable_from is not None and file_day >= appendable_from:
            continue
        if _remove_if_claimed(path, covered):
            _retire(conn, name)
            removed.append(name)
    return removed


def _remove_if_claimed(path: Path, covered: list[tuple[int, int]]) -> bool:
    """Unlink the file if claims cover every byte, holding the writers' lock (a writer waiting
    for it then finds the file removed and opens a new one: ``serving.event_log``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if gaps(covered, os.fstat(fd).st_size) or os.fstat(fd).st_nlink == 0:
            return False
        path.unlink()
        return True
    finally:
        os.close(fd)


def _retire(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    conn.execute("UPDATE event_log_ingestions SET retired = true WHERE file = ? AND NOT retired", [name])


def _as_day(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def migrate_legacy_ledger(conn: duckdb.DuckDBPyConnection, root: Path) -> int:
    """Warehouses from before claims recorded one ``bytes`` size per (day, file), and kept no copy
    of the events. Turn each into the claim [0, bytes) and copy its lines into ``service_events``
    from the file if it is still there (retire it if not). Returns the claims migrated."""
    columns = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'event_log_ingestions'"
        ).fetchall()
    }
    if "bytes" not in columns:
        return 0
    legacy = conn.execute("SELECT partition_date, file, bytes FROM event_log_ingestions").fetchall()
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute("DROP TABLE event_log_ingestions")
        conn.execute(
            "CREATE TABLE event_log_ingestions (partition_date DATE NOT NULL, file VARCHAR NOT NULL, "
            "start_byte BIGINT NOT NULL, end_byte BIGINT NOT NULL, retired BOOLEAN NOT NULL)"
        )
        for day, file, size in legacy:
            path = Path(root) / file
            if not path.exists() or path.stat().st_size < size:
                conn.execute("INSERT INTO event_log_ingestions VALUES (?, ?, 0, ?, true)", [day, file, size])
                continue
            lines, stop, _ = read_lines(path, 0, size)
            record_claims(conn, day, [Claim(file, 0, stop, 1, lines)])
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return len(legacy)
