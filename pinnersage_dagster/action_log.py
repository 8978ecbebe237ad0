"""An action log that spans any number of days: one Parquet/CSV file, a glob, or a folder
(hive-partitioned or not) read recursively.

The row's ``ts`` decides its day; folder names are never trusted for that (a ``day=...``
folder may hold late events, or a text key). Partition day D takes the rows whose ``ts`` falls
in [D, D+1) UTC. Two partitions also take the rows no day would otherwise see, so that none is
lost: the first partition of the deployment takes rows before it and rows whose ``ts`` is
missing or unparseable, and the newest partition (yesterday) takes rows in the future. The
contract then quarantines them with their reason.

Parquet is read with the day's filter pushed into the scan (row groups outside the day are
skipped by their statistics). CSV has no statistics: a run parses each file once, keeps the
run's days in a temporary table and splits them by day.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from .core.contract import ContractError
from .readers import (
    CSV_RELATION,
    CSV_SUFFIXES,
    connect,
    csv_rejects,
    data_row_numbers,
    expand,
    id_expression,
    raw_action_frame,
    renamed,
    require_action_columns,
    require_some_line,
    ts_expression,
)


@dataclass(frozen=True)
class Span:
    """What one run reads: its days, and where the rows no day covers go."""

    days: list[date]
    first_partition: date  # takes rows before it and rows without a usable ts
    newest_partition: date  # takes rows after ``now``
    now: pd.Timestamp

    def condition(self, day: date, ts: str) -> str:
        """SQL: the rows of ``day`` (``ts`` is the parsed UTC timestamp expression)."""
        return self._rows(day, day, ts)

    def run_condition(self, ts: str) -> str:
        """SQL: a range covering every day of the run (a run's days are consecutive; otherwise a superset)."""
        return self._rows(min(self.days), max(self.days), ts)

    def _rows(self, first: date, last: date, ts: str) -> str:
        parts = [f"({ts} >= DATE '{first}' AND {ts} < DATE '{last + timedelta(days=1)}')"]
        if first <= self.first_partition <= last:
            parts.append(f"({ts} IS NULL OR {ts} < DATE '{self.first_partition}')")
        if first <= self.newest_partition <= last:
            parts.append(f"({ts} > TIMESTAMP '{self.now.isoformat(sep=' ')}')")
        return " OR ".join(parts)


@dataclass(frozen=True)
class ActionLog:
    path: str
    names: tuple[tuple[str, str], ...] = ()  # (contract column, your column) pairs

    def files(self) -> list[str]:
        """The log's files, sorted; all Parquet or all CSV."""
        root = Path(self.path)
        if root.is_dir():
            files = sorted(
                str(p) for p in root.rglob("*") if p.is_file() and p.name.endswith((".parquet", *CSV_SUFFIXES))
            )
            if not files:
                raise ContractError(f"{self.path}: folder holds no .parquet or .csv files")
        else:
            files = expand(self.path)
        kinds = {f.endswith(".parquet") for f in files}
        if len(kinds) > 1:
            raise ContractError(f"{self.path}: mixes Parquet and CSV files; use one format per log")
        if not kinds.pop() and not all(f.endswith(CSV_SUFFIXES) for f in files):
            bad = next(f for f in files if not f.endswith(CSV_SUFFIXES))
            raise ContractError(f"{bad}: unsupported file type (expected .parquet or .csv)")
        return files

    def read(self, span: Span) -> Iterator[tuple[date, pd.DataFrame]]:
        """The raw rows of each day of ``span`` (shape of ``readers.read_action_files``)."""
        files = self.files()
        conn = connect()
        try:
            names = dict(self.names)
            reader = (
                _ParquetLog(conn, files, names) if files[0].endswith(".parquet") else _CsvLog(conn, files, span, names)
            )
            for day in span.days:
                yield day, reader.day(day, span)
        except duckdb.Error as exc:
            raise ContractError(f"{self.path}: cannot be read: {exc}") from exc
        finally:
            conn.close()

    def newest_day(self, now: pd.Timestamp) -> date | None:
        """The newest day with a row not in the future, or None for an empty log."""
        files = self.files()
        conn = connect()
        try:
            names = dict(self.names)
            if files[0].endswith(".parquet"):
                log = _ParquetLog(conn, files, names)
                ts = ts_expression("ts", log.ts_type)
                sql = f"SELECT max({ts}) FROM {log.relation} WHERE {ts} <= ?"
                newest = conn.execute(sql, [files, now.to_pydatetime()]).fetchall()[0][0]
            else:
                newest = None
                ts = ts_expression("ts")
                for path in files:
                    sql = f"SELECT max({ts}) FROM {renamed(_CsvLog.RELATION, names)} WHERE {ts} <= ?"
                    value = conn.execute(sql, [path, now.to_pydatetime()]).fetchall()[0][0]
                    newest = value if newest is None or (value is not None and value > newest) else newest
        except duckdb.Error as exc:
            raise ContractError(f"{self.path}: cannot be read: {exc}") from exc
        finally:
            conn.close()
        return None if newest is None else newest.date()


def _select(ts: str) -> str:
    return f"""
        {id_expression("user_id")} AS user_id, CAST(user_id AS VARCHAR) AS raw_user_id,
        {id_expression("pin_id")} AS pin_id, CAST(pin_id AS VARCHAR) AS raw_pin_id,
        CAST(action AS VARCHAR) AS action, CAST(action AS VARCHAR) AS raw_action,
        {ts} AS ts, CAST(ts AS VARCHAR) AS raw_ts
    """


class _ParquetLog:
    """Every file in one scan, the day's filter pushed down on the raw ``ts`` column."""

    RELATION = (
        "read_parquet(?, file_row_number = true, filename = true, union_by_name = true, hive_partitioning = true)"
    )

    def __init__(self, conn: duckdb.DuckDBPyConnection, files: list[str], names: dict[str, str]) -> None:
        self.conn, self.files = conn, files
        self.relation = renamed(self.RELATION, names)
        schema = conn.execute(
            "SELECT file_name, list(name) FROM parquet_schema(?) GROUP BY file_name", [files]
        ).fetchall()
        for path, columns in schema:
            require_action_columns(columns, names, path)
        self.ts_type: str = conn.execute(f"DESCRIBE SELECT ts FROM {self.relation}", [files]).fetchall()[0][1]

    def _pushdown(self, day: date, span: Span) -> str:
        """A filter on the raw column the scan can apply to row-group statistics (TRUE if none)."""
        if day in (span.first_partition, span.newest_partition):
            return "TRUE"
        lo, hi = pd.Timestamp(day), pd.Timestamp(day + timedelta(days=1))
        kind = self.ts_type.upper()
        if kind.startswith("TIMESTAMP WITH TIME ZONE"):
            return f"(ts >= TIMESTAMPTZ '{lo}+00' AND ts < TIMESTAMPTZ '{hi}+00')"
        if kind.startswith("TIMESTAMP") or kind == "DATE":
            return f"(ts >= TIMESTAMP '{lo}' AND ts < TIMESTAMP '{hi}')"
        if kind in ("INTEGER", "BIGINT", "DOUBLE", "FLOAT", "UBIGINT", "HUGEINT"):
            s0, s1 = lo.timestamp(), hi.timestamp()
            return f"((ts >= {s0} AND ts < {s1}) OR (ts >= {s0 * 1000} AND ts < {s1 * 1000}))"
        return "TRUE"

    def day(self, day: date, span: Span) -> pd.DataFrame:
        ts = ts_expression("ts", self.ts_type)
        sql = f"""
            SELECT filename AS source, file_row_number + 1 AS row_number, {_select(ts)}
            FROM {self.relation}
            WHERE {self._pushdown(day, span)} AND ({span.condition(day, ts)})
            ORDER BY filename, file_row_number
        """
        return raw_action_frame(self.conn.execute(sql, [self.files]).df())


class _CsvLog:
    """Each file parsed once per run into a temporary table of the run's days. A line that cannot
    be parsed has no usable ts: the first partition quarantines it (``malformed_csv_line``)."""

    RELATION = CSV_RELATION

    def __init__(self, conn: duckdb.DuckDBPyConnection, files: list[str], span: Span, names: dict[str, str]) -> None:
        self.conn = conn
        self.rejects: dict[str, pd.DataFrame] = {}
        ts = ts_expression("ts")
        keep = span.run_condition("ts")
        conn.execute(
            "CREATE TEMP TABLE span_rows (source VARCHAR, row_number BIGINT, user_id BIGINT, raw_user_id VARCHAR, "
            "pin_id BIGINT, raw_pin_id VARCHAR, action VARCHAR, raw_action VARCHAR, ts TIMESTAMP, raw_ts VARCHAR)"
        )
        for path in files:
            columns = [r[0] for r in conn.execute(f"DESCRIBE SELECT * FROM {self.RELATION}", [path]).fetchall()]
            require_action_columns(columns, names, path)
            conn.execute(
                f"""
                INSERT INTO span_rows
                SELECT * FROM (
                    SELECT ? AS source, row_number() OVER () AS row_number, {_select(ts)}
                    FROM {renamed(self.RELATION, names)})
                WHERE {keep}
                """,
                [path, path],
            )
            self.rejects[path] = csv_rejects(conn, path)
            if len(self.rejects[path]):  # a file none of whose lines parse is broken, not damaged
                parsed = conn.execute(f"SELECT count(*) FROM {renamed(self.RELATION, names)}", [path]).fetchall()[0][0]
                csv_rejects(conn, path)
                require_some_line(parsed, self.rejects[path], path)

    def day(self, day: date, span: Span) -> pd.DataFrame:
        sql = f"SELECT * FROM span_rows WHERE {span.condition(day, 'ts')} ORDER BY source, row_number"
        frame = self.conn.execute(sql).df()
        parts = []
        for path, rows in frame.groupby("source", sort=True) if len(frame) else []:
            rejects = self.rejects.get(path)
            if rejects is not None and len(rejects):
                rows = rows.assign(
                    row_number=data_row_numbers(rows["row_number"].to_numpy(), rejects["line"].to_numpy())
                )
            parts.append(rows)
        if day == span.first_partition:
            parts += [
                pd.DataFrame({"source": path, "row_number": r["line"] - 1, "malformed": r["detail"]})
                for path, r in self.rejects.items()
                if len(r)
            ]
        if not parts:
            return raw_action_frame(frame)
        return raw_action_frame(pd.concat(parts, ignore_index=True))
