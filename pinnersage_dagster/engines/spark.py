"""The per-user pass on a Spark cluster: the pipeline exports the day's inputs as Parquet to
shared storage, Spark joins and processes them on its executors and writes Parquet results.

DuckDB writes the exports itself (``COPY ... TO``), so neither the window's rows nor the
embeddings pass through Python here, and the Spark driver only plans the job.
"""

from __future__ import annotations

from datetime import date

import duckdb

from ..warehouse import pass_users
from .spark_job import run_user_pass_spark

WINDOW_EXPORT = (
    "SELECT user_id, pin_id, epoch_us(ts) AS ts_us FROM action_windows WHERE partition_date = DATE '{day}' {users}"
)
PINS_EXPORT = (
    "SELECT pin_id, embedding FROM pins WHERE pin_id IN "
    "(SELECT DISTINCT pin_id FROM action_windows WHERE partition_date = DATE '{day}' {users})"
)


def export_day_inputs(
    conn: duckdb.DuckDBPyConnection, day: date, inputs_uri: str, only_changed: bool = False
) -> dict[str, int]:
    """Write ``day``'s window actions and the embeddings of their pins under ``inputs_uri`` (of the
    users the pass runs for); returns the rows written and ``left_catalog``, the actions on pins
    no longer in the catalog (not passed on)."""
    counts: dict[str, int] = {}
    users = pass_users(only_changed)
    for name, query in (("window", WINDOW_EXPORT), ("pins", PINS_EXPORT)):
        target = f"{inputs_uri}/{name}".replace("'", "''")
        ((counts[name],),) = conn.execute(
            f"COPY ({query.format(day=day.isoformat(), users=users)}) TO '{target}' "
            "(FORMAT parquet, PER_THREAD_OUTPUT true)"
        ).fetchall()
    # the join on the executors keeps only actions whose pin is in the catalog: count the rest
    ((counts["left_catalog"],),) = conn.execute(
        "SELECT count(*) FROM action_windows WHERE partition_date = ? AND pin_id NOT IN (SELECT pin_id FROM pins) "
        + users,
        [day],
    ).fetchall()
    return counts


def run_spark_pass(
    spark,
    connect,
    day: date,
    run_uri: str,
    *,
    alpha: float,
    decay_lambda: float,
    now_us: int,
    only_changed: bool = False,
) -> tuple[str, dict[str, int]]:
    """Export, run on Spark; returns the folder of result Parquet files and the export counts."""
    with connect() as conn:
        counts = export_day_inputs(conn, day, f"{run_uri}/inputs", only_changed)
    output = f"{run_uri}/rows"
    run_user_pass_spark(spark, f"{run_uri}/inputs", output, alpha=alpha, decay_lambda=decay_lambda, now_us=now_us)
    return output, counts
