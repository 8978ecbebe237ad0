"""The DuckDB warehouse: table definitions and the few reads and writes the assets share.

Table name = asset name. Partitioned tables carry ``partition_date`` and are written by
``replace_partitions``: delete the run's window and insert, in one transaction, so a
re-run replaces a partition and a reader sees either the old rows or the new ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB type
    description: str
    required: bool = True  # NOT NULL

    @property
    def ddl(self) -> str:
        return f"{self.name} {self.type}" + (" NOT NULL" if self.required else "")


@dataclass(frozen=True)
class Table:
    """A warehouse table, declared once: its DDL, its column list for inserts and the column
    schema the Dagster UI shows (``reporting.table_schema``) all come from here."""

    name: str
    columns: tuple[Column, ...]
    partitioned: bool = True  # carries partition_date and is replaced a partition at a time

    @property
    def ddl(self) -> str:
        return ", ".join(c.ddl for c in self.columns)

    @property
    def column_names(self) -> str:
        return ", ".join(c.name for c in self.columns)


def _c(name: str, type_: str, description: str, required: bool = True) -> Column:
    return Column(name, type_, description, required)


DAY = _c("partition_date", "DATE", "the partition day D")
_ACTION = (
    _c("user_id", "BIGINT", "the user"),
    _c("pin_id", "BIGINT", "the pin acted on"),
    _c("action", "VARCHAR", "repin or click"),
    _c("ts", "TIMESTAMP", "when, UTC"),
)
_QUARANTINE = (
    _c("source", "VARCHAR", "the one file (or input) the row came from", False),
    _c("row_number", "BIGINT", "its data row in that file (1 = after the header), or line of a log", False),
    _c("reason", "VARCHAR", "the first rule the row breaks"),
    _c("detail", "VARCHAR", "what exactly (a length, a parse error and the line's text)", False),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "raw_actions",
            (
                _c(
                    "partition_date",
                    "DATE",
                    "the day whose run took it in: the UTC day of ts, or later for a late service event",
                ),
                *_ACTION,
            ),
        ),
        Table(
            "raw_actions_quarantine",
            (DAY, *_QUARANTINE, *(_c(c.name, "VARCHAR", f"raw {c.name}", False) for c in _ACTION)),
        ),
        Table("action_windows", (DAY, *_ACTION)),
        Table(
            "user_clusters",
            (
                DAY,
                _c("user_id", "BIGINT", "the user"),
                _c("cluster_id", "BIGINT", "per user, from 0"),
                _c("kind", "VARCHAR", "ward, or singleton (no Ward cluster: one per pin)"),
                _c("merge_cost", "DOUBLE", "the cluster's last Ward merge distance; NULL for singletons", False),
                _c("n_pins", "BIGINT", "member pins"),
                _c("pin_ids", "BIGINT[]", "member pins, sorted"),
            ),
        ),
        Table(
            "user_medoids",
            (
                DAY,
                _c("user_id", "BIGINT", "the user"),
                _c("cluster_id", "BIGINT", "as in user_clusters"),
                _c("medoid_pin_id", "BIGINT", "the cluster's medoid (Eq. 2)"),
                _c("importance", "DOUBLE", "Eq. 3 at T_now = D+1"),
                _c("size", "BIGINT", "member pins"),
                _c("n_actions", "BIGINT", "the cluster's actions in the window"),
                _c("kind", "VARCHAR", "as in user_clusters"),
            ),
        ),
        # the users of day D whose window differs from D-1's (``assets.interests``: when D reuses
        # D-1's interests, the per-user pass runs for these users only)
        Table("interest_changed_users", (DAY, _c("user_id", "BIGINT", "a user whose window changed since D-1"))),
        # the embedding of every pin of D's window as D's interests saw it (kept for D and D-1 only)
        Table(
            "interest_pin_fingerprints",
            (DAY, _c("pin_id", "BIGINT", "a pin of D's window"), _c("fingerprint", "UBIGINT", "hash(embedding)")),
        ),
        Table(
            "pin_embeddings",
            (
                _c("partition_date", "DATE", "D (learned from actions before D)"),
                _c("pin_id", "BIGINT", "the pin"),
                _c("embedding", "FLOAT[]", "unit vector of embedding_dim"),
            ),
        ),
        Table(
            "pin_embeddings_quarantine",
            (
                DAY,
                _c("pin_id", "BIGINT", "the pin"),
                _c("reason", "VARCHAR", "why no embedding"),
                _c("detail", "VARCHAR", "what exactly", False),
            ),
        ),
        # claims of the service's event logs (``service_events``): partition = the day that claimed them
        Table(
            "event_log_ingestions",
            (
                _c("partition_date", "DATE", "the day whose run claimed the bytes"),
                _c("file", "VARCHAR", "the log file's name"),
                _c("start_byte", "BIGINT", "first byte claimed"),
                _c("end_byte", "BIGINT", "byte after the last claimed"),
                _c("retired", "BOOLEAN", "the file was removed by retention"),
            ),
        ),
        Table(
            "service_events",
            (
                _c("partition_date", "DATE", "the day whose run claimed the line"),
                _c("file", "VARCHAR", "the log file's name"),
                _c("line", "BIGINT", "its line in the file"),
                *(_c(c.name, c.type, c.description, False) for c in _ACTION),
                _c("raw", "VARCHAR", "the line's text when it is not a readable event", False),
            ),
        ),
        Table(
            "pins_quarantine",
            (
                *_QUARANTINE,
                _c("pin_id", "VARCHAR", "raw pin_id", False),
                _c("quality", "VARCHAR", "raw quality", False),
                _c("created_at", "VARCHAR", "raw created_at", False),
            ),
            partitioned=False,
        ),
        Table(
            "candidate_pool",
            (
                _c("pin_id", "BIGINT", "a pin that may be recommended"),
                _c("quality", "DOUBLE", ">= quality_threshold"),
                _c("created_at", "TIMESTAMP", "UTC; NULL = always existed", False),
                _c("n_duplicates", "BIGINT", "near-duplicates it stands for"),
            ),
            partitioned=False,
        ),
        Table(
            "candidate_pool_exclusions",
            (
                _c("pin_id", "BIGINT", "a pin left out of the pool"),
                _c("reason", "VARCHAR", "low_quality or near_duplicate"),
                _c("representative_pin_id", "BIGINT", "the pin kept instead", False),
                _c("cosine", "DOUBLE", "to the representative", False),
            ),
            partitioned=False,
        ),
        Table(
            "synthetic_pin_truth",
            (
                _c("pin_id", "BIGINT", "a synthetic pin"),
                _c("category", "BIGINT", "", False),
                _c("topic", "BIGINT", "", False),
                _c("duplicate_of", "BIGINT", "", False),
                _c("low_quality", "BOOLEAN", "", False),
            ),
            partitioned=False,
        ),
        Table(
            "synthetic_interest_truth",
            (
                _c("user_id", "BIGINT", "a synthetic user"),
                _c("topic", "BIGINT", "", False),
                _c("weight", "DOUBLE", "", False),
                _c("start_date", "DATE", "", False),
                _c("end_date", "DATE", "", False),
            ),
            partitioned=False,
        ),
        # the source the warehouse was built from (``provenance``, ``guards.require_source``): one row
        Table(
            "warehouse_source",
            (
                _c("fingerprint", "VARCHAR", "a hash of what defines the source's data"),
                _c("label", "VARCHAR", "the source, as a person reads it"),
                _c("identity", "VARCHAR", "JSON: the source's kind and fields"),
                _c("stamped_at", "TIMESTAMP", "when, UTC"),
            ),
            partitioned=False,
        ),
        # what each asset's partition was built from (``guards``); partition_date NULL: unpartitioned
        Table(
            "lineage",
            (
                _c("asset", "VARCHAR", "the asset"),
                _c("partition_date", "DATE", "its partition; NULL if unpartitioned", False),
                _c("version", "VARCHAR", "a hash of its content, or its build id"),
                _c("inputs", "VARCHAR", "JSON: the versions it read, and its figures"),
                _c("rows", "BIGINT", "its rows"),
                _c("written_at", "TIMESTAMP", "when, UTC"),
            ),
            partitioned=False,
        ),
    )
}
# the catalog: its embedding column is FLOAT[d] for the data's dimension d (``write_pins``)
PINS = Table(
    "pins",
    (
        _c("pin_id", "BIGINT", "unique"),
        _c("embedding", "FLOAT[]", "unit-normalised, of the catalog's dimension"),
        _c("quality", "DOUBLE", "in [0, 1]; 1.0 when not given"),
        _c("created_at", "TIMESTAMP", "UTC; NULL = always existed", False),
    ),
    partitioned=False,
)


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the tables, and add the (nullable) columns a newer release declares to older ones."""
    for table in TABLES.values():
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table.name} ({table.ddl})")
        present = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table.name]
            ).fetchall()
        }
        for column in table.columns:
            if column.name not in present and not column.required:
                conn.execute(f"ALTER TABLE {table.name} ADD COLUMN {column.ddl}")


def table_exists(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchall()[0][0]
    )


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All statements inside commit together or not at all."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _insert(conn: duckdb.DuckDBPyConnection, table: str, columns: str, rows: pd.DataFrame | pa.Table) -> None:
    conn.register("incoming_rows", rows)
    try:
        conn.execute(f"INSERT INTO {table} SELECT {columns} FROM incoming_rows")
    finally:
        conn.unregister("incoming_rows")


def replace_partitions(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    rows: pd.DataFrame | pa.Table,
    first: date,
    last: date,
    atomic: bool = True,
) -> int:
    """Replace partitions [first, last] of ``table`` with ``rows`` (which carry ``partition_date``),
    in a transaction of its own (``atomic``) or in the caller's."""
    if not atomic:
        conn.execute(f"DELETE FROM {table} WHERE partition_date BETWEEN ? AND ?", [first, last])
        _insert(conn, table, TABLES[table].column_names, rows)
        return len(rows)
    with transaction(conn):
        return replace_partitions(conn, table, rows, first, last, atomic=False)


def replace_table(
    conn: duckdb.DuckDBPyConnection, table: str, rows: pd.DataFrame | pa.Table, atomic: bool = True
) -> int:
    """Replace the whole content of an unpartitioned catalog table, in a transaction of its own
    (``atomic``) or in the caller's."""
    if not atomic:
        conn.execute(f"DELETE FROM {table}")
        _insert(conn, table, TABLES[table].column_names, rows)
        return len(rows)
    with transaction(conn):
        return replace_table(conn, table, rows, atomic=False)


PIN_WRITE_ROWS = 131_072  # rows of an unsorted catalog inserted at a time
PIN_WRITE_MEMORY = "256MB"  # DuckDB's buffer pool while the catalog is written or scanned (small_buffer_pool)


# the catalog's content version (``guards.table_version``): what every downstream artifact records
PIN_VERSION_COLUMNS = "pin_id, embedding, quality, created_at"


def write_pins(conn: duckdb.DuckDBPyConnection, accepted: pd.DataFrame, embeddings: np.ndarray) -> None:
    """Replace the pin catalog, inside the caller's transaction, stored in pin id order. The
    embedding column is ``FLOAT[d]`` for the data's dimension d. Unsorted rows go in by slices
    of that order, so the catalog's matrix is never copied whole (1 GiB at 1M pins)."""
    dim = int(embeddings.shape[1])
    ddl = PINS.ddl.replace("FLOAT[]", f"FLOAT[{dim}]")
    conn.execute(f"CREATE OR REPLACE TABLE pins ({ddl})")
    with small_buffer_pool(conn):
        for rows in _pin_slices(accepted, embeddings):
            _insert(conn, "pins", PINS.column_names, rows)


@contextmanager
def small_buffer_pool(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """DuckDB's memory limit lowered to ``PIN_WRITE_MEMORY`` inside the block. DuckDB keeps the
    blocks it writes or reads cached up to its limit: beside the caller's catalog matrix, a
    second copy of the catalog (1 GiB at 1M pins). They are on disk, so a small pool while the
    catalog is written or scanned costs nothing (measured on the write: 3.1 s either way, 0.28
    instead of 0.98 GiB). Never raised above what the operator set; a limit DuckDB cannot read
    back (no limit shows as PiB) is left alone."""
    limit = conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    current = duckdb_size_bytes(limit)
    lower = current is not None and current > (duckdb_size_bytes(PIN_WRITE_MEMORY) or 0)
    if lower:
        conn.execute(f"SET memory_limit = '{PIN_WRITE_MEMORY}'")
    try:
        yield
    finally:
        if lower:  # DuckDB shows the limit to 0.1 MiB: restored to within that
            conn.execute(f"SET memory_limit = '{limit}'")


DUCKDB_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", flags=re.IGNORECASE)
_SIZE_UNITS = {
    "B": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def duckdb_size_bytes(size: str) -> float | None:
    """A size DuckDB reads ('1GB', '953.6 MiB') in bytes; None when it is not one."""
    match = DUCKDB_SIZE.fullmatch(size.strip())
    return None if match is None else float(match[1]) * _SIZE_UNITS[match[2].upper()]


def pin_table(accepted: pd.DataFrame, embeddings: np.ndarray) -> pa.Table:
    """The catalog's rows in their given order, with the types the table stores (the embeddings
    not copied when they are float32 already): what ``guards.table_version`` of the table would
    hash, before anything is written."""
    return _arrow_pins(*_pin_columns(accepted), embeddings)


def _pin_slices(accepted: pd.DataFrame, embeddings: np.ndarray) -> Iterator[pa.Table]:
    """The catalog's rows as the table stores them, in pin id order: one Arrow table when the
    rows come sorted, else slices of ``PIN_WRITE_ROWS`` (never a whole copy of the matrix)."""
    ids, quality, created = _pin_columns(accepted)
    order = None if bool(np.all(ids[1:] > ids[:-1])) else np.argsort(ids, kind="stable")
    step = max(len(ids), 1) if order is None else PIN_WRITE_ROWS
    for start in range(0, len(ids), step):  # an empty catalog is the empty table
        rows = slice(start, start + step) if order is None else order[start : start + step]
        yield _arrow_pins(ids[rows], quality[rows], created[rows], embeddings[rows])


def _pin_columns(accepted: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    created = pd.to_datetime(accepted["created_at"]).astype("datetime64[us]").to_numpy()
    return accepted["pin_id"].to_numpy(), accepted["quality"].to_numpy(), created


def _arrow_pins(ids: np.ndarray, quality: np.ndarray, created: np.ndarray, embeddings: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "pin_id": pa.array(ids, pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).ravel()), int(embeddings.shape[1])
            ),
            "quality": pa.array(quality, pa.float64()),
            "created_at": pa.array(created, pa.timestamp("us")),
        }
    )


def embedding_matrix(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """The ``FLOAT[d]`` column of an Arrow result as an (n, d) float32 matrix."""
    array = table.column(column).combine_chunks()
    if len(array) == 0:
        dim = array.type.list_size if hasattr(array.type, "list_size") else 0
        return np.empty((0, dim), dtype=np.float32)
    return array.values.to_numpy(zero_copy_only=False).reshape(len(array), -1).astype(np.float32, copy=False)


def query_arrow(conn: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pa.Table:
    return conn.sql(sql, params=params or []).to_arrow_table()


# the pool as it stood at the end of day D: pins created by then (or of unknown creation time)
POOL_IDS_AT_SQL = "SELECT pin_id FROM candidate_pool WHERE created_at IS NULL OR created_at < ? ORDER BY pin_id"
POOL_AT_SQL = """
    SELECT c.pin_id, p.embedding
    FROM candidate_pool c JOIN pins p USING (pin_id)
    WHERE c.created_at IS NULL OR c.created_at < ?
    ORDER BY c.pin_id
"""
# the catalog's pins a day's window acts on: their embeddings and their ids, sorted; one filter,
# so both read the same pins (the pass reads the embeddings by those ids: ``fill_embeddings_of``)
_DAY_PINS_FILTER = "WHERE pin_id IN (SELECT DISTINCT pin_id FROM action_windows WHERE partition_date = ? {users})"
DAY_PINS_SQL = f"SELECT pin_id, embedding FROM pins {_DAY_PINS_FILTER}"
DAY_PIN_IDS_SQL = f"SELECT pin_id FROM pins {_DAY_PINS_FILTER} ORDER BY pin_id"
# the embeddings of pins already found (``fill_embeddings_of``): a join on their ids costs half
# of finding them in the window a second time (1M pins: 0.5 s against 0.9-1.0 s)
_PINS_OF_IDS_SQL = "SELECT pin_id, embedding FROM pins SEMI JOIN wanted_pin_ids USING (pin_id)"
# the per-user pass's rows of action_windows: every user's, or (a day that reuses the day before)
# those of the users whose window changed
CHANGED_ONLY = "AND user_id IN (SELECT user_id FROM interest_changed_users c WHERE c.partition_date = action_windows.partition_date)"


def pass_users(only_changed: bool) -> str:
    """The filter on ``action_windows`` rows of the users the per-user pass runs for."""
    return CHANGED_ONLY if only_changed else ""


# users whose window rows of $day differ from $before's (entered, left, or capped away), exactly,
# and users with a pin whose embedding changed (or left the catalog) since $before's interests
_WINDOW_DIGEST = (
    "SELECT user_id, count(*) AS n, sum(hash(pin_id, action, ts)::HUGEINT) AS h1, "
    "sum(hash(ts, action, pin_id, 'window')::HUGEINT) AS h2 FROM action_windows"
)
CHANGED_USERS_SQL = f"""
    INSERT INTO interest_changed_users
    SELECT DISTINCT CAST($day AS DATE), user_id FROM (
        -- a user's window rows as a multiset: the count and two sums of independent 64-bit row
        -- hashes (one aggregation per day, not a set difference of every row: 18 s -> ~2 s at
        -- 100k users); equal on both days means the same rows, up to a 2^-128 collision
        SELECT coalesce(d.user_id, b.user_id) AS user_id FROM ({_WINDOW_DIGEST} WHERE partition_date = $day GROUP BY user_id) d
        FULL OUTER JOIN ({_WINDOW_DIGEST} WHERE partition_date = $before GROUP BY user_id) b USING (user_id)
        WHERE d.user_id IS NULL OR b.user_id IS NULL OR d.n != b.n OR d.h1 != b.h1 OR d.h2 != b.h2
        UNION ALL
        SELECT user_id FROM action_windows WHERE partition_date = $day AND pin_id IN (
            SELECT w.pin_id FROM (SELECT DISTINCT pin_id FROM action_windows WHERE partition_date = $day) w
            LEFT JOIN day_pin_fingerprints p ON p.pin_id = w.pin_id
            LEFT JOIN interest_pin_fingerprints f ON f.partition_date = $before AND f.pin_id = w.pin_id
            WHERE (p.pin_id IS NULL) != (f.pin_id IS NULL) OR p.fingerprint != f.fingerprint
        )
    )
"""
# the embedding hash of every catalog pin of $day's window (``day_fingerprints``): hashed once
# per day, compared with the day before's in CHANGED_USERS_SQL and recorded with the interests
DAY_FINGERPRINTS_SQL = f"SELECT pin_id, hash(embedding) AS fingerprint FROM pins {_DAY_PINS_FILTER.format(users='')}"
PIN_FINGERPRINTS_SQL = """
    INSERT INTO interest_pin_fingerprints SELECT CAST($day AS DATE), pin_id, fingerprint FROM day_pin_fingerprints
"""


def day_fingerprints(conn: duckdb.DuckDBPyConnection, day: date) -> pa.Table:
    """(pin_id, fingerprint) of the catalog pins of ``day``'s window: 12 MB at 100k users, where
    hashing their embeddings reads 700 MB (0.8-0.9 s)."""
    return conn.sql(DAY_FINGERPRINTS_SQL, params=[day]).to_arrow_table()


@contextmanager
def day_pin_fingerprints(conn: duckdb.DuckDBPyConnection, fingerprints: pa.Table) -> Iterator[None]:
    """``fingerprints`` (``day_fingerprints``) as the relation ``day_pin_fingerprints`` on ``conn``."""
    conn.register("day_pin_fingerprints", fingerprints)
    try:
        yield
    finally:
        conn.unregister("day_pin_fingerprints")


# yesterday's interests of the users of $day whose window did not change: the same clusters and
# medoids, every action one day older (Eq. 3: each term times exp(-lambda))
_REUSED_USERS = (
    "user_id IN (SELECT user_id FROM action_windows WHERE partition_date = $day) "
    "AND user_id NOT IN (SELECT user_id FROM interest_changed_users WHERE partition_date = $day)"
)
REUSED_CLUSTERS_SQL = f"""
    INSERT INTO user_clusters (partition_date, user_id, cluster_id, kind, merge_cost, n_pins, pin_ids)
    SELECT CAST($day AS DATE), user_id, cluster_id, kind, merge_cost, n_pins, pin_ids FROM user_clusters
    WHERE partition_date = $before AND {_REUSED_USERS}
"""
REUSED_MEDOIDS_SQL = f"""
    INSERT INTO user_medoids (partition_date, user_id, cluster_id, medoid_pin_id, importance, size, n_actions, kind)
    SELECT CAST($day AS DATE), user_id, cluster_id, medoid_pin_id, importance * exp(-$decay_lambda), size, n_actions,
           kind
    FROM user_medoids WHERE partition_date = $before AND {_REUSED_USERS}
"""
# partitions first .. day, and ts in [first, day + 1): a late event lands in a later partition
# than its ts (``service_events``) and counts in the windows that cover its ts from then on
WINDOW_SQL = """
    SELECT CAST($day AS DATE) AS partition_date, user_id, pin_id, action, ts
    FROM (
        SELECT DISTINCT r.user_id, r.pin_id, r.action, r.ts
        FROM raw_actions r SEMI JOIN pins p ON r.pin_id = p.pin_id
        WHERE r.partition_date BETWEEN $first AND $day AND r.ts >= $first AND r.ts < $day + INTERVAL 1 DAY
    )
    QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, pin_id DESC, action) <= $cap
"""
# rows of a day's raw_actions already held by another partition: an event is kept once
ELSEWHERE_SQL = """
    SELECT c.position, min(r.partition_date) AS partition_date
    FROM candidate_rows c JOIN raw_actions r
      ON r.user_id = c.user_id AND r.pin_id = c.pin_id AND r.action = c.action AND r.ts = c.ts
    WHERE r.partition_date <> $day AND r.partition_date >= $first AND r.ts >= $first AND r.ts < $last
    GROUP BY c.position
"""


def held_elsewhere(conn: duckdb.DuckDBPyConnection, rows: pd.DataFrame, day: date) -> pd.Series:
    """For each accepted row of ``day`` (user_id, pin_id, action, ts), the other raw_actions
    partition that already holds the same event, or NA."""
    out = pd.Series(pd.NA, index=rows.index, dtype="object")
    if rows.empty:
        return out
    candidates = rows[["user_id", "pin_id", "action", "ts"]].assign(position=range(len(rows)))
    first = candidates["ts"].min().normalize()
    conn.register("candidate_rows", candidates)
    try:
        found = conn.execute(
            ELSEWHERE_SQL,
            {"day": day, "first": first.date(), "last": candidates["ts"].max().normalize() + pd.Timedelta(days=1)},
        ).fetchall()
    finally:
        conn.unregister("candidate_rows")
    for position, partition in found:
        out.iloc[position] = str(partition)
    return out


def replace_partition_from_query(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    day: date,
    select_sql: str,
    params: list | dict,
    before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> None:
    """Replace partition ``day`` of ``table`` with the rows of a SELECT (and ``before_commit``'s
    writes) in one transaction."""
    with transaction(conn):
        conn.execute(f"DELETE FROM {table} WHERE partition_date = ?", [day])
        conn.execute(f"INSERT INTO {table} {select_sql}", params)
        if before_commit is not None:
            before_commit(conn)


def user_batches(
    conn: duckdb.DuckDBPyConnection, day: date, max_rows: int, only_changed: bool = False
) -> list[tuple[int, int, int]]:
    """Contiguous user-id ranges of ``action_windows`` for ``day``, each holding at most
    ``max_rows`` distinct (user, pin) rows (a single heavier user is a batch of its own).
    Returns (first user, last user, rows) per batch."""
    counts = conn.execute(
        f"SELECT user_id, count(DISTINCT pin_id) AS n FROM action_windows WHERE partition_date = ? "
        f"{pass_users(only_changed)} GROUP BY user_id ORDER BY user_id",
        [day],
    ).df()
    batches, start, rows = [], 0, 0
    users, sizes = counts["user_id"].to_numpy(), counts["n"].to_numpy()
    for i, n in enumerate(sizes.tolist()):
        if rows and rows + n > max_rows:
            batches.append((int(users[start]), int(users[i - 1]), rows))
            start, rows = i, 0
        rows += n
    if rows:
        batches.append((int(users[start]), int(users[-1]), rows))
    return batches


INTEREST_ROWS = "read_parquet('{glob}')"
CLUSTERS_FROM_ROWS_SQL = """
    INSERT INTO user_clusters
    SELECT CAST(? AS DATE), user_id, cluster_id, any_value(kind), any_value(merge_cost), count(*),
           list(pin_id ORDER BY pin_id)
    FROM {rows} GROUP BY user_id, cluster_id ORDER BY user_id, cluster_id
"""
MEDOIDS_FROM_ROWS_SQL = """
    INSERT INTO user_medoids
    SELECT CAST(? AS DATE), user_id, cluster_id, any_value(medoid_pin_id), any_value(importance),
           any_value(size), any_value(n_actions), any_value(kind)
    FROM {rows} GROUP BY user_id, cluster_id ORDER BY user_id, cluster_id
"""


def replace_interests(
    conn: duckdb.DuckDBPyConnection,
    day: date,
    rows_glob: str,
    before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    reuse_from: date | None = None,
    decay_lambda: float = 0.0,
    fingerprints: pa.Table | None = None,
) -> None:
    """Replace ``day`` of ``user_clusters`` and ``user_medoids`` with the per-user pass's rows
    (Parquet files matching ``rows_glob``), both tables (and ``before_commit``'s writes) in one
    transaction. ``reuse_from`` (the day before): the pass ran for the users in
    ``interest_changed_users`` only, and every other user of the day's window keeps that day's
    interests, importance decayed by one day. ``fingerprints``: the day's ``day_fingerprints``
    the step planned with (hashed here when not given), recorded with the interests."""
    rows = INTEREST_ROWS.format(glob=rows_glob.replace("'", "''"))
    if fingerprints is None:
        fingerprints = day_fingerprints(conn, day)
    with transaction(conn), day_pin_fingerprints(conn, fingerprints):
        for table, sql in (("user_clusters", CLUSTERS_FROM_ROWS_SQL), ("user_medoids", MEDOIDS_FROM_ROWS_SQL)):
            _replace_day_from(conn, table, day, sql.format(rows=rows))
        if reuse_from is not None:
            conn.execute(REUSED_CLUSTERS_SQL, {"day": day, "before": reuse_from})
            conn.execute(REUSED_MEDOIDS_SQL, {"day": day, "before": reuse_from, "decay_lambda": decay_lambda})
        # what the next day needs to know which embeddings changed; older days are never read again
        conn.execute(
            "DELETE FROM interest_pin_fingerprints WHERE partition_date = ? OR partition_date < ?",
            [day, day - timedelta(days=1)],
        )
        conn.execute(PIN_FINGERPRINTS_SQL, {"day": day})
        if before_commit is not None:
            before_commit(conn)


def _replace_day_from(conn: duckdb.DuckDBPyConnection, table: str, day: date, insert_sql: str) -> None:
    conn.execute(f"DELETE FROM {table} WHERE partition_date = ?", [day])
    conn.execute(insert_sql, [day])


def embedding_dim(conn: duckdb.DuckDBPyConnection) -> int:
    """The catalog's embedding dimension d, read from the column type ``FLOAT[d]``."""
    kind = conn.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'pins' AND column_name = 'embedding'"
    ).fetchall()
    if not kind:
        raise RuntimeError("the warehouse has no pin catalog: materialize pins first")
    return int(kind[0][0].split("[")[1].rstrip("]"))


class WarehouseCatalog:
    """The ``pins`` table as a serving snapshot's catalog source (``serving.catalog``): hashes
    and embeddings computed and streamed by DuckDB, in chunks of ``chunk_rows``."""

    def __init__(
        self, connect: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]], chunk_rows: int = 65_536
    ) -> None:
        self.connect, self.chunk_rows = connect, chunk_rows
        self.hash_kind = f"duckdb-{duckdb.__version__}-hash"
        with connect() as conn:
            self.dimension = embedding_dim(conn)

    def fingerprints(self) -> tuple[np.ndarray, np.ndarray]:
        with self.connect() as conn:
            rows = conn.execute("SELECT pin_id, hash(embedding) AS h FROM pins ORDER BY pin_id").fetchnumpy()
        return np.asarray(rows["pin_id"], dtype=np.int64), np.asarray(rows["h"], dtype=np.uint64)

    def rows(self, pin_ids: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        with self.connect() as conn:
            if pin_ids is None:
                relation = conn.sql("SELECT pin_id, hash(embedding) AS h, embedding FROM pins ORDER BY pin_id")
            else:
                conn.register("wanted_pins", pa.table({"pin_id": pa.array(pin_ids, pa.int64())}))
                relation = conn.sql(
                    "SELECT pin_id, hash(embedding) AS h, embedding FROM pins SEMI JOIN wanted_pins USING (pin_id) "
                    "ORDER BY pin_id"
                )
            for batch in relation.to_arrow_reader(self.chunk_rows):
                n = batch.num_rows
                x = batch.column("embedding").values.to_numpy(zero_copy_only=False).reshape(n, self.dimension)
                yield batch.column("pin_id").to_numpy(), batch.column("h").to_numpy().astype(np.uint64), x


def fill_embeddings_of(conn: duckdb.DuckDBPyConnection, ids: np.ndarray, out: np.ndarray, chunk_rows: int) -> None:
    """``fill_embeddings`` of the catalog's pins ``ids`` (sorted, unique), found by their ids."""
    conn.register("wanted_pin_ids", pa.table({"pin_id": pa.array(ids, pa.int64())}))
    try:
        fill_embeddings(conn, _PINS_OF_IDS_SQL, [], ids, out, chunk_rows)
    finally:
        conn.unregister("wanted_pin_ids")


def fill_embeddings(
    conn: duckdb.DuckDBPyConnection, sql: str, params: list, ids: np.ndarray, out: np.ndarray, chunk_rows: int = 65_536
) -> None:
    """Stream the ``pin_id, embedding`` rows of a query, in whatever order DuckDB returns them,
    into the preallocated float32 ``out``: pin ``ids[i]`` (sorted, unique) to row i, chunk by
    chunk (never the whole result as Arrow next to its numpy copy). The query needs no ORDER BY:
    sorting 1 KiB rows cost DuckDB 2-3 s for a million pins where the scan itself takes 0.5 s,
    and each chunk is scattered into place here instead. Fails when a row's pin is not in
    ``ids``, arrives twice, or a pin of ``ids`` gets no row (the catalog changed while read)."""
    if len(ids) != len(out):
        raise ValueError(f"{len(ids)} pin ids for a matrix of {len(out)} rows")
    filled, total = np.zeros(len(ids), dtype=bool), 0
    changed = RuntimeError("the catalog changed while its embeddings were read: re-run")
    for batch in conn.sql(sql, params=params).to_arrow_reader(chunk_rows):
        n = batch.num_rows
        pins = batch.column("pin_id").to_numpy()
        rows = np.minimum(np.searchsorted(ids, pins), len(ids) - 1)
        if n and (total + n > len(ids) or np.any(ids[rows] != pins)):
            raise changed
        filled[rows], total = True, total + n
        x = batch.column("embedding").values.to_numpy(zero_copy_only=False).reshape(n, -1)
        if n and np.all(np.diff(rows) == 1):  # consecutive rows (a scan in id order): one copy, 2x a scatter's speed
            out[rows[0] : rows[0] + n] = x
        else:
            out[rows] = x
    if total != len(ids) or not filled.all():  # every pin once: as many rows as pins, none missed
        raise changed
