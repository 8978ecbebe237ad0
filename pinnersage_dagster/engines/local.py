"""The per-user pass on this machine: worker processes share the day's embeddings.

Per day: the embeddings of the pins the window acts on are streamed from DuckDB once into
shared memory (``core.workers.SharedMatrix``); then users are read in batches of at most
``batch_rows`` distinct (user, pin) rows, as (user_id, pin_id, ts) only, and each batch goes
to the workers as ids and row numbers while the next one is read. Memory is the day's
embedding matrix plus a batch, whatever the number of users.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.user_pass import ROW_SCHEMA
from ..warehouse import DAY_PIN_IDS_SQL, embedding_dim, fill_embeddings_of, pass_users, user_batches
from .workers import SharedMatrix, UserPool

BATCH_SQL = """
    SELECT user_id, pin_id, epoch_us(ts) AS ts_us FROM action_windows
    WHERE partition_date = ? AND user_id BETWEEN ? AND ? {users}
    ORDER BY user_id, pin_id, ts
"""
STREAM_ROWS = 65_536


@dataclass
class PassStats:
    """What one day's pass read and did, for the asset's metadata."""

    batches: int = 0
    largest_batch_rows: int = 0
    day_pins: int = 0
    actions_on_pins_left_catalog: int = 0


def day_embeddings(
    connect: Callable[[], duckdb.DuckDBPyConnection], day: date, only_changed: bool = False
) -> tuple[np.ndarray, SharedMatrix]:
    """The sorted ids and a shared matrix of the embeddings of every pin in ``day``'s window (of
    the users the pass runs for), streamed from the catalog in bounded chunks (never a second
    copy of the matrix)."""
    users = pass_users(only_changed)
    with connect() as conn:
        dim = embedding_dim(conn)
        ids = np.asarray(conn.execute(DAY_PIN_IDS_SQL.format(users=users), [day]).fetchnumpy()["pin_id"], np.int64)
        matrix = SharedMatrix(len(ids), dim)
        try:
            fill_embeddings_of(conn, ids, matrix.array, STREAM_ROWS)
        except BaseException:
            matrix.__exit__(None, None, None)
            raise
    return ids, matrix


def run_local_pass(
    connect: Callable[[], duckdb.DuckDBPyConnection],
    day: date,
    out_dir: Path,
    pool: UserPool,
    *,
    batch_rows: int,
    alpha: float,
    decay_lambda: float,
    now_us: int,
    only_changed: bool = False,
) -> PassStats:
    """Write the pass's rows for ``day`` as Parquet parts into ``out_dir`` (``only_changed``: for
    the users of ``interest_changed_users`` alone)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = PassStats()
    with connect() as conn:
        batches = user_batches(conn, day, batch_rows, only_changed)
    ids, matrix = day_embeddings(connect, day, only_changed)
    batch_sql = BATCH_SQL.format(users=pass_users(only_changed))
    stats.day_pins, stats.batches = len(ids), len(batches)
    row_of_pin = pd.Index(ids)  # a hash of the day's pins: 5x faster lookups than a binary search
    stats.largest_batch_rows = max((b[2] for b in batches), default=0)
    # one connection for every batch: opening the warehouse costs a read of its catalog each time
    with matrix, connect() as conn:
        pending: Callable[[], pa.Table] | None = None
        for number, (first, last, _) in enumerate(batches):
            rows = conn.execute(batch_sql, [day, first, last]).fetchnumpy()
            user_ids, pin_ids, ts_us = (np.asarray(rows[c], dtype=np.int64) for c in ("user_id", "pin_id", "ts_us"))
            pin_rows = row_of_pin.get_indexer(pin_ids)
            known = pin_rows >= 0
            if not known.all():  # the catalog lost pins since the window was built
                stats.actions_on_pins_left_catalog += int((~known).sum())
                user_ids, pin_ids, ts_us, pin_rows = user_ids[known], pin_ids[known], ts_us[known], pin_rows[known]
            started = pool.represent(
                user_ids, pin_ids, ts_us, pin_rows, matrix, alpha=alpha, decay_lambda=decay_lambda, now_us=now_us
            )
            if pending is not None:  # the previous batch finished while this one was read
                _write_part(pending(), out_dir / f"part-{number - 1:06d}.parquet")
            pending = started
        # a day with no users still leaves one (empty) part, so the folder always has the schema
        last = pending() if pending is not None else ROW_SCHEMA.empty_table()
        _write_part(last, out_dir / f"part-{max(len(batches) - 1, 0):06d}.parquet")
    return stats


def _write_part(rows: pa.Table, path: Path) -> None:
    # dictionaries only for ``kind`` (two values): on ids and floats they cost the writer half
    # its time (48 -> 28 ms a 200k-row part) for a file of the same size, read once and removed
    pq.write_table(rows, path, use_dictionary=["kind"])
