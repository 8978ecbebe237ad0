"""Each user's interests of the day: Ward clusters and their medoids, in one per-user pass
(paper, Algorithm 2; sections 3.1.1-3.1.3)."""

import contextlib
import shutil
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from .. import guards, pictures
from ..config import PinnerSageParams
from ..partitions import daily_partitions, partition_days
from ..readers import day_bounds
from ..reporting import distribution_of_counts, frame_markdown, histogram_markdown_of_counts, table_schema
from ..resources import ClusteringEngine, ExchangeStore
from ..warehouse import (
    CHANGED_USERS_SQL,
    TABLES,
    day_fingerprints,
    day_pin_fingerprints,
    embedding_matrix,
    ensure_tables,
    pass_users,
    replace_interests,
    transaction,
)
from .actions import action_windows
from .constants import DUCKDB_POOL, GROUP

user_clusters = dg.AssetSpec(
    "user_clusters",
    deps=[action_windows],
    group_name=GROUP,
    kinds={"duckdb", "scipy"},
    description="For day D: the Ward clusters of each user active in [D-89, D], with their member pins. "
    "kind = 'ward' clusters follow Algorithm 1 at alpha; a user with no Ward cluster gets one "
    "'singleton' cluster per distinct pin.",
)
user_medoids = dg.AssetSpec(
    "user_medoids",
    deps=["user_clusters", action_windows],
    group_name=GROUP,
    kinds={"duckdb"},
    description="For day D: each user's interests as {medoid pin, importance} (Algorithm 2). The medoid "
    "minimises the sum of squared distances to the cluster's members (Eq. 2); importance is the sum over "
    "the cluster's actions of exp(-lambda * age in days) with T_now = D+1 00:00 UTC (Eq. 3).",
)


@dg.multi_asset(
    specs=[user_clusters, user_medoids],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
    pool=DUCKDB_POOL,
    can_subset=False,
)
def user_interests(
    context: dg.AssetExecutionContext,
    duckdb: DuckDBResource,
    params: PinnerSageParams,
    exchange: ExchangeStore,
    engine: ClusteringEngine,
) -> Iterator[dg.MaterializeResult]:
    """For day D: ``user_clusters`` and ``user_medoids`` from one pass over each user's window.

    The day's embeddings are read once and shared with the workers; each user is clustered and
    summarised (medoid, importance) in the same pass; both tables are replaced in one transaction.
    """
    versions: dict[str, str] = {}
    with engine.runner() as run_pass:
        for day in partition_days(context):
            _, now = day_bounds(day)
            with duckdb.get_connection() as conn:
                inputs = _checked_inputs(conn, day, params)
                ensure_tables(conn)
                reuse = _reusable_day_before(conn, day, inputs) if engine.reuse_unchanged_users else None
                changed, users, fingerprints = _plan_users(conn, day, reuse)
            inputs["reused_from"] = reuse
            settings = {
                "alpha": params.alpha,
                "decay_lambda": params.decay_lambda,
                "now_us": int(now.value // 1000),
                "only_changed": reuse is not None,
            }
            run_uri = exchange.run_uri(day.isoformat(), context.run_id)
            _remove_stale_runs(exchange, day)
            if exchange.is_local:
                Path(run_uri, "inputs").mkdir(parents=True)
            started = time.perf_counter()
            figures = run_pass(day, duckdb.get_connection, run_uri, settings)
            seconds = time.perf_counter() - started

            def record(conn, day: date = day, inputs: dict = inputs, reuse: dict | None = reuse) -> None:
                if reuse is not None:  # the day before must still be what was checked
                    for asset in INTEREST_COLUMNS:
                        now_there = guards.get(conn, asset, date.fromisoformat(reuse["day"]))
                        guards.same(
                            reuse[asset],
                            now_there.version if now_there else None,
                            what=f"{asset} of {reuse['day']} was rewritten while {day} reused it",
                            rematerialize=f"user_clusters/user_medoids for {day}",
                        )
                for asset, columns in INTEREST_COLUMNS.items():
                    version, rows = guards.table_version(conn, asset, columns, day)
                    guards.record(conn, asset, day, version, inputs, rows)
                    versions[asset] = version

            with duckdb.get_connection() as conn:
                ensure_tables(conn)
                replace_interests(
                    conn,
                    day,
                    f"{run_uri}/rows/*.parquet",
                    before_commit=record,
                    reuse_from=date.fromisoformat(reuse["day"]) if reuse else None,
                    decay_lambda=params.decay_lambda,
                    fingerprints=fingerprints,
                )
            if exchange.is_local:
                shutil.rmtree(run_uri, ignore_errors=True)
                with contextlib.suppress(OSError):  # the day's folder too, once no run's is left in it
                    Path(run_uri).parent.rmdir()
            context.log.info(
                f"{day}: per-user pass in {seconds:.1f}s for {changed} of {users} users "
                f"({figures['clustering_engine']}; "
                + (f"the others keep {reuse['day']}'s interests)" if reuse else "every user clustered)")
            )
    with duckdb.get_connection() as conn:
        clusters_meta, medoids_meta = interest_metadata(conn, day, params)
    clusters_meta.update(
        {
            "alpha": params.alpha,
            "pass_seconds": round(seconds, 2),
            "users": users,
            "users_reclustered": changed,
            "interests_reused_from": reuse["day"] if reuse else "none: every user clustered",
            **figures,
        }
    )
    yield dg.MaterializeResult(
        asset_key="user_clusters",
        metadata=clusters_meta,
        data_version=guards.data_version(context, versions["user_clusters"]),
    )
    yield dg.MaterializeResult(
        asset_key="user_medoids",
        metadata=medoids_meta,
        data_version=guards.data_version(context, versions["user_medoids"]),
    )


def _checked_inputs(conn: duckdb.DuckDBPyConnection, day: date, params: PinnerSageParams) -> dict:
    """The versions this day's interests are built from; fails if the window is missing or was
    built against another catalog than the current one."""
    needed_by = f"user_clusters/user_medoids of {day}"
    window = guards.require(conn, "action_windows", day, needed_by=needed_by)
    catalog = guards.require(conn, "pins", needed_by=needed_by)
    guards.same(
        catalog.inputs["ids"],
        window.inputs.get("pins_ids"),
        what=f"action_windows of {day} was built against another catalog's pins",
        rematerialize=f"action_windows for {day}",
    )
    return {
        "action_windows": window.version,
        "pins": catalog.version,
        "alpha": params.alpha,
        "decay_lambda": params.decay_lambda,
        "max_actions_per_user": params.max_actions_per_user,
    }


INTEREST_COLUMNS = {
    "user_clusters": "user_id, cluster_id, kind, pin_ids",
    "user_medoids": "user_id, cluster_id, medoid_pin_id, importance, size, kind",
}


def _reusable_day_before(conn: duckdb.DuckDBPyConnection, day: date, inputs: dict) -> dict | None:
    """The day before's interests, when they are provably what this day would compute for the
    users whose window did not change and whose pins kept their embeddings: built with the same
    parameters, from the window of that day as it stands now, unchanged since (their content is
    hashed again), with the embeddings they saw recorded (``interest_pin_fingerprints``).
    Otherwise None: every user is clustered (first days, backfills out of order)."""
    before = day - timedelta(days=1)
    window = guards.get(conn, "action_windows", before)
    found = {asset: guards.get(conn, asset, before) for asset in INTEREST_COLUMNS}
    if window is None or any(f is None for f in found.values()):
        return None
    ((fingerprints,),) = conn.execute(
        "SELECT count(*) FROM interest_pin_fingerprints WHERE partition_date = ?", [before]
    ).fetchall()
    if not fingerprints:
        return None
    for lineage in found.values():
        assert lineage is not None
        same = {k: lineage.inputs.get(k) for k in ("alpha", "decay_lambda", "max_actions_per_user")}
        if same != {k: inputs[k] for k in same} or lineage.inputs.get("action_windows") != window.version:
            return None
    for asset, columns in INTEREST_COLUMNS.items():
        if guards.table_version(conn, asset, columns, before)[0] != found[asset].version:  # type: ignore[union-attr]
            return None
    return {"day": before.isoformat(), **{asset: f.version for asset, f in found.items() if f is not None}}


def _plan_users(conn: duckdb.DuckDBPyConnection, day: date, reuse: dict | None) -> tuple[int, int, pa.Table]:
    """Record the users whose window changed since the day before (for the pass to run on);
    returns (users the pass clusters, users of the day's window, the embedding fingerprints of
    the day's pins). The fingerprints are recorded with the interests, in their transaction: a
    run killed before it never leaves fingerprints that disagree with the interests."""
    fingerprints = day_fingerprints(conn, day)
    with transaction(conn), day_pin_fingerprints(conn, fingerprints):
        conn.execute("DELETE FROM interest_changed_users WHERE partition_date = ?", [day])
        if reuse is not None:
            conn.execute(CHANGED_USERS_SQL, {"day": day, "before": date.fromisoformat(reuse["day"])})
    ((users,),) = conn.execute(
        "SELECT count(DISTINCT user_id) FROM action_windows WHERE partition_date = ?", [day]
    ).fetchall()
    if reuse is None:
        return int(users), int(users), fingerprints
    ((changed,),) = conn.execute(
        f"SELECT count(DISTINCT user_id) FROM action_windows WHERE partition_date = ? {pass_users(True)}", [day]
    ).fetchall()
    return int(changed), int(users), fingerprints


def _remove_stale_runs(exchange: ExchangeStore, day: date) -> None:
    """A killed run's exchange folder for the same day is garbage: its results were never loaded."""
    if exchange.is_local:
        shutil.rmtree(exchange.run_uri(day.isoformat(), ""), ignore_errors=True)


CLUSTER_COUNTS_SQL = """
    SELECT n, count(*) AS users, count(*) FILTER (WHERE singleton) AS fallback_users
    FROM (SELECT user_id, count(*) AS n, bool_or(kind = 'singleton') AS singleton
          FROM user_clusters WHERE partition_date = ? GROUP BY user_id)
    GROUP BY n ORDER BY n
"""
CLUSTER_TOTALS_SQL = """
    SELECT count(*), count(*) FILTER (WHERE kind = 'ward'), coalesce(sum(n_pins) FILTER (WHERE kind = 'ward'), 0),
           coalesce(sum(n_pins), 0)
    FROM user_clusters WHERE partition_date = ?
"""
SIZE_COUNTS_SQL = "SELECT n_pins, count(*) FROM user_clusters WHERE partition_date = ? GROUP BY n_pins ORDER BY n_pins"
IMPORTANCE_SQL = """
    SELECT min(importance), quantile_cont(importance, [0.5, 0.9, 0.99]), max(importance), avg(importance),
           count(DISTINCT medoid_pin_id)
    FROM user_medoids WHERE partition_date = ?
"""


def interest_metadata(conn: duckdb.DuckDBPyConnection, day: date, params: PinnerSageParams) -> tuple[dict, dict]:
    """Metadata of both tables, aggregated in SQL: its size does not grow with the number of users."""
    counts = conn.execute(CLUSTER_COUNTS_SQL, [day]).fetchnumpy()
    ((clusters, ward, ward_pins, member_pins),) = conn.execute(CLUSTER_TOTALS_SQL, [day]).fetchall()
    sizes = conn.execute(SIZE_COUNTS_SQL, [day]).fetchnumpy()
    low, (p50, p90, p99), high, mean, distinct_medoids = (
        conn.execute(IMPORTANCE_SQL, [day]).fetchall()[0] if clusters else (0.0, (0.0, 0.0, 0.0), 0.0, 0.0, 0)
    )
    per_user = distribution_of_counts(counts["n"], counts["users"])
    user = _example_user(conn, day, per_user["p90"]) if clusters else None
    users = int(counts["users"].sum())
    clusters_meta = {
        "users": users,
        "dagster/row_count": int(clusters),
        "ward_clusters": int(ward),
        "users_with_singleton_fallback": int(counts["fallback_users"].sum()),
        "pins_in_ward_clusters": int(ward_pins),
        "member_pins": int(member_pins),
        "clusters_per_user": per_user,
        "clusters_per_user_histogram": dg.MetadataValue.md(
            histogram_markdown_of_counts(counts["n"], counts["users"], [1, 2, 3, 4, 6, 11, 21, 51, 101], "clusters")
        ),
        "cluster_size": distribution_of_counts(sizes["n_pins"], sizes["count_star()"]),
    }
    medoids_meta = {
        "partition": day.isoformat(),
        "decay_lambda": params.decay_lambda,
        "users": users,
        "dagster/row_count": int(clusters),
        "distinct_medoid_pins": int(distinct_medoids),
        "medoids_per_user": per_user,
        "importance": {
            "min": float(low),
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "max": float(high),
            "mean": round(float(mean), 3),
        },
    }
    if user is not None:
        preview = conn.execute(
            "SELECT cluster_id, kind, n_pins, merge_cost, pin_ids FROM user_clusters "
            "WHERE partition_date = ? AND user_id = ? ORDER BY cluster_id",
            [day, user],
        ).df()
        interests = conn.execute(
            "SELECT cluster_id, medoid_pin_id, importance, size, n_actions, kind FROM user_medoids "
            "WHERE partition_date = ? AND user_id = ? ORDER BY importance DESC, cluster_id",
            [day, user],
        ).df()
        clusters_meta["example_user"] = dg.MetadataValue.md(f"user **{user}**\n\n" + frame_markdown(preview))
        medoids_meta["example_user_interests"] = dg.MetadataValue.md(f"user **{user}**\n\n" + frame_markdown(interests))
        clusters_meta["example_user_map"] = _user_map(conn, day, user)
    if clusters:
        clusters_meta["clusters_per_user_plot"] = pictures.markdown_image(
            pictures.bars(
                counts["n"], counts["users"], title="clusters per user", xlabel="clusters", ylabel="users", log=True
            ),
            "clusters per user",
        )
        sample = conn.execute(IMPORTANCE_SAMPLE_SQL, [day]).fetchnumpy()["importance"]
        medoids_meta["importance_plot"] = pictures.markdown_image(
            pictures.histogram(
                np.log10(sample),
                title=f"importance of interests ({len(sample)} sampled)",
                xlabel="log10 importance",
                log=True,
            ),
            "importance distribution",
        )
    clusters_meta["dagster/column_schema"] = table_schema(TABLES["user_clusters"])
    medoids_meta["dagster/column_schema"] = table_schema(TABLES["user_medoids"])
    return clusters_meta, medoids_meta


IMPORTANCE_SAMPLE_SQL = """
    SELECT importance FROM (SELECT importance FROM user_medoids WHERE partition_date = ?)
    USING SAMPLE reservoir(20000 ROWS) REPEATABLE (1)
"""
USER_MAP_SQL = """
    WITH members AS (SELECT cluster_id, unnest(pin_ids) AS pin_id FROM user_clusters WHERE partition_date = ? AND user_id = ?)
    SELECT m.cluster_id, m.pin_id, (m.pin_id = d.medoid_pin_id) AS is_medoid, p.embedding
    FROM members m JOIN pins p USING (pin_id)
    JOIN user_medoids d ON d.partition_date = ? AND d.user_id = ? AND d.cluster_id = m.cluster_id
    ORDER BY m.cluster_id, m.pin_id
"""


def _user_map(conn: duckdb.DuckDBPyConnection, day: date, user: int) -> dg.MetadataValue:
    """The example user's pins on a plane, coloured by cluster, medoids as stars."""
    rows = conn.sql(USER_MAP_SQL, params=[day, user, day, user]).to_arrow_table()
    if rows.num_rows == 0:
        return dg.MetadataValue.md("(the user's pins have left the catalog)")
    png = pictures.clusters_2d(
        embedding_matrix(rows),
        rows.column("cluster_id").to_numpy(),
        np.flatnonzero(rows.column("is_medoid").to_numpy()),
        title=f"user {user}: pins by cluster, medoids starred",
    )
    return pictures.markdown_image(png, f"user {user}'s clusters")


def _example_user(conn: duckdb.DuckDBPyConnection, day: date, clusters: float) -> int | None:
    """The lowest user id among users whose cluster count is nearest the 90th percentile."""
    row = conn.execute(
        "SELECT user_id FROM user_clusters WHERE partition_date = ? GROUP BY user_id "
        "ORDER BY abs(count(*) - ?), user_id LIMIT 1",
        [day, clusters],
    ).fetchone()
    return None if row is None else int(row[0])
