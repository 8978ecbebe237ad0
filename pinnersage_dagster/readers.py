"""Turn inputs (Parquet/CSV files, or the synthetic world) into the contract's raw rows.

Files are parsed by an in-memory DuckDB (never the warehouse file, so reading holds no
warehouse lock): each value is cast with TRY_CAST next to its raw text, and the contract
(``core.contract``) decides row by row. A file that cannot be read at all raises
``ContractError`` naming the file.
"""

from __future__ import annotations

import glob
from datetime import date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from .core.contract import ACTION_COLUMNS, PIN_COLUMNS, ContractError, RawPins, require_columns
from .core.synthetic import PinCatalog, SyntheticWorld, generate_day_actions

_CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")


def _relation_sql(path: str) -> str:
    if path.endswith(_CSV_SUFFIXES):
        return "read_csv(?, all_varchar = true, header = true)"
    if path.endswith(".parquet"):
        return "read_parquet(?)"
    raise ContractError(f"{path}: unsupported file type (expected .parquet or .csv)")


def _connect() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    return conn


def _columns(conn: duckdb.DuckDBPyConnection, path: str) -> list[str]:
    try:
        return [row[0] for row in conn.execute(f"DESCRIBE SELECT * FROM {_relation_sql(path)}", [path]).fetchall()]
    except duckdb.Error as exc:
        raise ContractError(f"{path}: cannot be read: {exc}") from exc


def expand(pattern: str) -> list[str]:
    """Files matching a path or glob, sorted; an empty match is an error naming the pattern."""
    files = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise ContractError(f"{missing[0] if missing else pattern}: no such file")
    return files


def _id(column: str) -> str:
    """An integer id, or NULL: DuckDB's own cast rounds '3.5' to 4, which would invent an id."""
    text = f"trim(CAST({column} AS VARCHAR))"
    return f"TRY_CAST(CASE WHEN regexp_full_match({text}, '[+-]?[0-9]+(\\.0*)?') THEN split_part({text}, '.', 1) END AS BIGINT)"


def _ts(column: str) -> str:
    return f"timezone('UTC', TRY_CAST({column} AS TIMESTAMPTZ))"


def read_action_files(pattern: str) -> pd.DataFrame:
    """Raw action rows of every file matching ``pattern`` (columns per ``validate_actions``)."""
    frames = []
    conn = _connect()
    try:
        for path in expand(pattern):
            require_columns(_columns(conn, path), ACTION_COLUMNS, path)
            sql = f"""
                SELECT ? AS source, row_number() OVER () AS row_number,
                       {_id('user_id')} AS user_id, CAST(user_id AS VARCHAR) AS raw_user_id,
                       {_id('pin_id')} AS pin_id, CAST(pin_id AS VARCHAR) AS raw_pin_id,
                       CAST(action AS VARCHAR) AS action, CAST(action AS VARCHAR) AS raw_action,
                       {_ts("ts")} AS ts, CAST(ts AS VARCHAR) AS raw_ts
                FROM {_relation_sql(path)}
            """
            try:
                frames.append(conn.execute(sql, [path, path]).df())
            except duckdb.Error as exc:
                raise ContractError(f"{path}: cannot be read: {exc}") from exc
    finally:
        conn.close()
    frame = pd.concat(frames, ignore_index=True)
    for column in ("user_id", "pin_id"):
        frame[column] = frame[column].astype("Int64")
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[us]")
    return frame


def read_pin_files(pattern: str) -> RawPins:
    """Raw pin rows of every file matching ``pattern``; ``quality`` and ``created_at`` are optional."""
    parts = []
    conn = _connect()
    try:
        for path in expand(pattern):
            columns = _columns(conn, path)
            require_columns(columns, PIN_COLUMNS, path)
            quality = "quality" if "quality" in columns else "NULL"
            created = "created_at" if "created_at" in columns else "NULL"
            sql = f"""
                SELECT ? AS source, row_number() OVER () AS row_number,
                       {_id('pin_id')} AS pin_id, CAST(pin_id AS VARCHAR) AS raw_pin_id,
                       TRY_CAST(embedding AS DOUBLE[]) AS embedding,
                       TRY_CAST({quality} AS DOUBLE) AS quality, CAST({quality} AS VARCHAR) AS raw_quality,
                       {_ts(created)} AS created_at, CAST({created} AS VARCHAR) AS raw_created_at
                FROM {_relation_sql(path)}
            """
            try:
                parts.append(conn.sql(sql, params=[path, path]).to_arrow_table())
            except duckdb.Error as exc:
                raise ContractError(f"{path}: cannot be read: {exc}") from exc
    finally:
        conn.close()
    table = pa.concat_tables(parts)
    frame = table.drop(["embedding"]).to_pandas()
    row_number = frame["row_number"].to_numpy()
    return RawPins(
        source=",".join(sorted(set(frame["source"]))) if len(frame) else pattern,
        row_number=row_number,
        pin_id=frame["pin_id"].astype("Int64"),
        raw_pin_id=frame["raw_pin_id"],
        embedding=table.column("embedding").combine_chunks(),
        quality=frame["quality"].astype("Float64"),
        raw_quality=frame["raw_quality"],
        created_at=pd.to_datetime(frame["created_at"]).astype("datetime64[us]"),
        raw_created_at=frame["raw_created_at"],
    )


def synthetic_raw_pins(world: SyntheticWorld, catalog: PinCatalog) -> RawPins:
    n = len(catalog.pin_id)
    pin_id = pd.Series(catalog.pin_id, dtype="Int64")
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(catalog.embedding.ravel()), world.dim)
    created = pd.Series(catalog.created_at)
    quality = pd.Series(catalog.quality, dtype="Float64")
    return RawPins(
        source=f"synthetic(seed={world.seed})",
        row_number=np.arange(1, n + 1),
        pin_id=pin_id,
        raw_pin_id=pin_id,
        embedding=embedding,
        quality=quality,
        raw_quality=quality,
        created_at=created,
        raw_created_at=created,
    )


def synthetic_raw_actions(world: SyntheticWorld, day: date) -> pd.DataFrame:
    events = generate_day_actions(world, day)
    frame = pd.DataFrame(
        {
            "source": f"synthetic(seed={world.seed}, day={day.isoformat()})",
            "row_number": np.arange(1, len(events) + 1),
            "user_id": events["user_id"].astype("Int64"),
            "pin_id": events["pin_id"].astype("Int64"),
            "action": events["action"],
            "ts": events["ts"].astype("datetime64[us]"),
        }
    )
    for column in ACTION_COLUMNS:
        frame[f"raw_{column}"] = frame[column]
    return frame


def partition_file(pattern: str, day: date) -> str:
    """The action file pattern of one day: ``{date}`` is replaced by ``YYYY-MM-DD``."""
    if "{date}" not in pattern:
        raise ContractError(f"actions path {pattern!r} must contain '{{date}}', e.g. data/input/actions/{{date}}.parquet")
    return pattern.replace("{date}", day.isoformat())


def day_bounds(day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(datetime.combine(day, datetime.min.time()))
    return start, start + pd.Timedelta(days=1)
