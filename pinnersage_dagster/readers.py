"""Turn inputs (Parquet/CSV files, or the synthetic world) into the contract's raw rows.

Files are parsed by an in-memory DuckDB (never the warehouse file, so reading holds no
warehouse lock): each value is cast with TRY_CAST next to its raw text, and the contract
(``core.contract``) decides row by row. A file that cannot be read at all raises
``ContractError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import glob
from datetime import date, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from .core.contract import ACTION_COLUMNS, PIN_COLUMNS, ContractError, RawPins, require_columns
from .core.synthetic import PinCatalog, SyntheticWorld, generate_day_actions

CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
# rejects: a line DuckDB cannot parse (too many or too few fields, an unterminated quote) is kept
# aside with its line number and error instead of failing the file (``csv_rejects``)
CSV_RELATION = "read_csv(?, all_varchar = true, header = true, store_rejects = true, rejects_limit = 0)"
MALFORMED_TEXT_CHARS = 300


def _relation_sql(path: str) -> str:
    if path.endswith(CSV_SUFFIXES):
        return CSV_RELATION
    if path.endswith(".parquet"):
        return "read_parquet(?)"
    raise ContractError(f"{path}: unsupported file type (expected .parquet or .csv)")


def csv_rejects(conn: duckdb.DuckDBPyConnection, path: str) -> pd.DataFrame:
    """The lines of ``path`` the last CSV reads rejected: ``line`` (1 = the header) and ``detail``
    (error and text); the connection's reject tables are emptied for the next file."""
    try:
        rows = conn.execute(
            "SELECT DISTINCT e.line, e.error_type, e.error_message, e.csv_line FROM reject_errors e "
            "JOIN reject_scans s USING (scan_id, file_id) WHERE s.file_path = ? ORDER BY e.line",
            [path],
        ).fetchall()
        conn.execute("DELETE FROM reject_errors")
        conn.execute("DELETE FROM reject_scans")
    except duckdb.CatalogException:  # nothing rejected yet on this connection
        rows = []
    seen: dict[int, str] = {}
    for line, kind, message, text in rows:
        seen.setdefault(int(line), f"{kind}: {message}; line {line}: {(text or '')[:MALFORMED_TEXT_CHARS]}")
    return pd.DataFrame({"line": list(seen), "detail": list(seen.values())}, columns=["line", "detail"])


def require_some_line(parsed: int, rejects: pd.DataFrame, path: str) -> None:
    """A file of which no line parses is not row-level damage: it is the wrong or a broken file."""
    if parsed == 0 and len(rejects):
        raise ContractError(
            f"{path}: no line could be read ({len(rejects)} rejected; first: {rejects['detail'].iloc[0]})"
        )


def data_row_numbers(ordinals: np.ndarray, rejected_lines: np.ndarray) -> np.ndarray:
    """The file's data row number (1 = the line after the header) of each parsed row, given its
    ordinal among parsed rows and the (sorted) lines that were rejected before or among them."""
    lines = np.sort(np.asarray(rejected_lines, dtype=np.int64))
    thresholds = lines - 1 - np.arange(len(lines))  # parsed rows from this ordinal on come after reject i
    return np.asarray(ordinals, dtype=np.int64) + np.searchsorted(thresholds, ordinals, side="right")


def connect() -> duckdb.DuckDBPyConnection:
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


def id_expression(column: str) -> str:
    """An integer id, or NULL: DuckDB's own cast rounds '3.5' to 4, which would invent an id."""
    text = f"trim(CAST({column} AS VARCHAR))"
    return f"TRY_CAST(CASE WHEN regexp_full_match({text}, '[+-]?[0-9]+(\\.0*)?') THEN split_part({text}, '.', 1) END AS BIGINT)"


# Epoch numbers: below 1e11 they are seconds (1e11 s is the year 5138), from 1e11 to 1e14 milliseconds.
EPOCH_SECONDS_BELOW = 1e11
EPOCH_MILLIS_BELOW = 1e14
_NUMBER = "'[+-]?[0-9]+(\\.[0-9]*)?'"


def _epoch(number: str) -> str:
    return (
        f"CASE WHEN abs({number}) < {EPOCH_SECONDS_BELOW:.0f} THEN make_timestamp(CAST(round({number} * 1e6) AS BIGINT)) "
        f"WHEN abs({number}) < {EPOCH_MILLIS_BELOW:.0f} THEN make_timestamp(CAST(round({number} * 1e3) AS BIGINT)) END"
    )


def ts_expression(column: str, kind: str = "VARCHAR") -> str:
    """A UTC ``TIMESTAMP`` from a column of DuckDB type ``kind``, or NULL where it does not parse.

    Accepted: timestamps (naive values are UTC), timestamps with an offset, dates (midnight
    UTC), and epoch seconds or milliseconds as numbers or digit strings (docs/own-data.md).
    """
    kind = kind.upper()
    if kind.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"timezone('UTC', {column})"
    if kind.startswith("TIMESTAMP") or kind == "DATE":
        return f"CAST({column} AS TIMESTAMP)"
    if kind in NUMERIC_TYPES or kind.startswith("DECIMAL"):
        return _epoch(f"CAST({column} AS DOUBLE)")
    text = f"trim(CAST({column} AS VARCHAR))"
    return (
        f"CASE WHEN regexp_full_match({text}, {_NUMBER}) THEN {_epoch(f'TRY_CAST({text} AS DOUBLE)')} "
        f"ELSE timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ)) END"
    )


NUMERIC_TYPES = {
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "FLOAT",
    "DOUBLE",
    "REAL",
}


def _ts(column: str) -> str:
    return ts_expression(column)


def parse_column_names(text: str | None) -> dict[str, str]:
    """``"pin_id=item_id,ts=time"``: the contract's action columns under other names in your files."""
    names: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        ours, _, theirs = (x.strip() for x in part.partition("="))
        if ours not in ACTION_COLUMNS or not theirs:
            raise ContractError(
                f"action column mapping {part!r}: expected <one of {list(ACTION_COLUMNS)}>=<your column>"
            )
        names[ours] = theirs
    return names


def renamed(relation: str, names: dict[str, str]) -> str:
    """``relation`` with the mapped columns renamed to the contract's names."""
    if not names:
        return relation
    pairs = ", ".join(f'"{theirs}" AS {ours}' for ours, theirs in names.items())
    return f"(SELECT * RENAME ({pairs}) FROM {relation})"


def require_action_columns(columns: list[str], names: dict[str, str], source: str) -> None:
    require_columns(columns, tuple(names.get(c, c) for c in ACTION_COLUMNS), source)


def read_action_files(pattern: str, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Raw action rows of every file matching ``pattern`` (columns per ``validate_actions``); a
    CSV line that cannot be parsed is a row with its ``malformed`` text, the rest is read."""
    frames, names = [], names or {}
    conn = connect()
    try:
        for path in expand(pattern):
            require_action_columns(_columns(conn, path), names, path)
            sql = f"""
                SELECT ? AS source, row_number() OVER () AS row_number,
                       {id_expression("user_id")} AS user_id, CAST(user_id AS VARCHAR) AS raw_user_id,
                       {id_expression("pin_id")} AS pin_id, CAST(pin_id AS VARCHAR) AS raw_pin_id,
                       CAST(action AS VARCHAR) AS action, CAST(action AS VARCHAR) AS raw_action,
                       {_ts("ts")} AS ts, CAST(ts AS VARCHAR) AS raw_ts
                FROM {renamed(_relation_sql(path), names)}
            """
            try:
                frame = conn.execute(sql, [path, path]).df()
            except duckdb.Error as exc:
                raise ContractError(f"{path}: cannot be read: {exc}") from exc
            if path.endswith(CSV_SUFFIXES):
                rejects = csv_rejects(conn, path)
                require_some_line(len(frame), rejects, path)
                frame = with_malformed_lines(frame, rejects, path)
            frames.append(frame)
    finally:
        conn.close()
    return raw_action_frame(pd.concat(frames, ignore_index=True))


def with_malformed_lines(frame: pd.DataFrame, rejects: pd.DataFrame, path: str) -> pd.DataFrame:
    """Parsed action rows renumbered as the file's data rows, plus a row per rejected line."""
    frame = frame.assign(malformed=pd.Series(pd.NA, index=frame.index, dtype="object"))
    if rejects.empty:
        return frame
    frame["row_number"] = data_row_numbers(frame["row_number"].to_numpy(), rejects["line"].to_numpy())
    broken = pd.DataFrame({"source": path, "row_number": rejects["line"] - 1, "malformed": rejects["detail"]})
    return pd.concat([frame, broken], ignore_index=True).sort_values("row_number", kind="stable").reset_index(drop=True)


def raw_action_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Typed ids and timestamps of raw action rows read by DuckDB."""
    for column in ("user_id", "pin_id"):
        frame[column] = frame[column].astype("Int64")
    frame["ts"] = pd.to_datetime(frame["ts"]).astype("datetime64[us]")
    return frame


def read_pin_files(pattern: str) -> RawPins:
    """Raw pin rows of every file matching ``pattern``; ``quality`` and ``created_at`` are optional."""
    parts, has_embeddings, malformed = [], set(), []
    conn = connect()
    try:
        for path in expand(pattern):
            columns = _columns(conn, path)
            require_columns(columns, PIN_COLUMNS, path)
            has_embeddings.add("embedding" in columns)
            embedding = "embedding" if "embedding" in columns else "NULL"
            quality = "quality" if "quality" in columns else "NULL"
            created = "created_at" if "created_at" in columns else "NULL"
            sql = f"""
                SELECT ? AS source, row_number() OVER () AS row_number,
                       {id_expression("pin_id")} AS pin_id, CAST(pin_id AS VARCHAR) AS raw_pin_id,
                       TRY_CAST({embedding} AS DOUBLE[]) AS embedding,
                       TRY_CAST({quality} AS DOUBLE) AS quality, CAST({quality} AS VARCHAR) AS raw_quality,
                       {_ts(created)} AS created_at, CAST({created} AS VARCHAR) AS raw_created_at
                FROM {_relation_sql(path)}
            """
            try:
                part = conn.sql(sql, params=[path, path]).to_arrow_table()
            except duckdb.Error as exc:
                raise ContractError(f"{path}: cannot be read: {exc}") from exc
            rejects = (
                csv_rejects(conn, path) if path.endswith(CSV_SUFFIXES) else pd.DataFrame(columns=["line", "detail"])
            )
            require_some_line(part.num_rows, rejects, path)
            if len(rejects):
                numbers = data_row_numbers(part.column("row_number").to_numpy(), rejects["line"].to_numpy())
                part = part.set_column(part.schema.get_field_index("row_number"), "row_number", pa.array(numbers))
                nulls = {name: pa.nulls(len(rejects), part.schema.field(name).type) for name in part.column_names}
                nulls.update(
                    source=pa.array([path] * len(rejects)), row_number=pa.array(rejects["line"] - 1, pa.int64())
                )
                part = pa.concat_tables([part, pa.table(nulls, schema=part.schema)])
            parts.append(part)
            malformed += [pd.NA] * (part.num_rows - len(rejects)) + rejects["detail"].tolist()
    finally:
        conn.close()
    if len(has_embeddings) > 1:
        raise ContractError(f"{pattern}: some files have an embedding column and some do not; use one layout")
    table = pa.concat_tables(parts)
    frame = table.drop(["embedding"]).to_pandas()
    row_number = frame["row_number"].to_numpy()
    return RawPins(
        source=frame["source"].astype(str),
        malformed=pd.Series(malformed, dtype="object"),
        row_number=row_number,
        pin_id=frame["pin_id"].astype("Int64"),
        raw_pin_id=frame["raw_pin_id"],
        embedding=table.column("embedding").combine_chunks(),
        quality=frame["quality"].astype("Float64"),
        raw_quality=frame["raw_quality"],
        created_at=pd.to_datetime(frame["created_at"]).astype("datetime64[us]"),
        raw_created_at=frame["raw_created_at"],
        has_embeddings=has_embeddings.pop(),
    )


def pin_files_have_embeddings(pattern: str) -> bool:
    """Whether the pins file(s) carry an ``embedding`` column (read from the header alone)."""
    conn = connect()
    try:
        return all("embedding" in _columns(conn, path) for path in expand(pattern))
    finally:
        conn.close()


def read_pin_ids(pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """The distinct integer pin ids of the pins file(s), sorted, and each one's earliest
    ``created_at`` (NaT: unknown, always existed), read from those two columns alone."""
    conn = connect()
    try:
        frames = []
        for path in expand(pattern):
            columns = _columns(conn, path)
            require_columns(columns, PIN_COLUMNS, path)
            created = _ts("created_at") if "created_at" in columns else "CAST(NULL AS TIMESTAMP)"
            sql = f"SELECT {id_expression('pin_id')} AS pin_id, {created} AS created_at FROM {_relation_sql(path)}"
            try:
                frames.append(conn.execute(sql, [path]).df())
            except duckdb.Error as exc:
                raise ContractError(f"{path}: cannot be read: {exc}") from exc
    finally:
        conn.close()
    frame = pd.concat(frames, ignore_index=True).dropna(subset=["pin_id"])
    frame["created_at"] = pd.to_datetime(frame["created_at"]).astype("datetime64[us]")
    first = frame.groupby(frame["pin_id"].astype(np.int64))["created_at"].min().sort_index()
    return first.index.to_numpy(np.int64), first.to_numpy()


def learned_raw_pins(conn: duckdb.DuckDBPyConnection, raw: RawPins | None, day: date) -> RawPins:
    """Pin rows with the embeddings ``pin_embeddings`` learned for ``day`` (``conn``: the warehouse).

    With a pins file (without embeddings), its rows get the learned embedding of their pin, NULL
    where none was learned; without one, the catalog is the learned pins (quality 1.0, always existed).
    """
    learned = conn.sql(
        "SELECT pin_id, embedding FROM pin_embeddings WHERE partition_date = ? ORDER BY pin_id", params=[day]
    ).to_arrow_table()
    ids, vectors = learned.column("pin_id").to_numpy(), learned.column("embedding").combine_chunks()
    if raw is None:
        n = len(ids)
        none = pd.Series([pd.NA] * n, dtype="object")
        return RawPins(
            source=f"pins learned from the log (pin_embeddings of {day})",
            row_number=np.arange(1, n + 1),
            pin_id=pd.Series(ids, dtype="Int64"),
            raw_pin_id=pd.Series(ids.astype(str)),
            embedding=vectors,
            quality=pd.Series([pd.NA] * n, dtype="Float64"),
            raw_quality=none,
            created_at=pd.Series(pd.NaT, index=range(n), dtype="datetime64[us]"),
            raw_created_at=none,
        )
    wanted = raw.pin_id.fillna(-1).to_numpy(np.int64)
    at = np.clip(np.searchsorted(ids, wanted), 0, max(len(ids) - 1, 0))
    found = (len(ids) > 0) & (ids[at] == wanted) if len(ids) else np.zeros(len(wanted), bool)
    take = pa.array(np.where(found, at, 0), mask=~found)
    return dataclasses.replace(
        raw, embedding=vectors.take(take) if len(ids) else pa.nulls(len(wanted), pa.list_(pa.float32()))
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
        raise ContractError(
            f"actions path {pattern!r} must contain '{{date}}', e.g. data/input/actions/{{date}}.parquet"
        )
    return pattern.replace("{date}", day.isoformat())


def day_bounds(day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(datetime.combine(day, datetime.min.time()))
    return start, start + pd.Timedelta(days=1)
