"""Each cluster's medoid pin and importance score (paper, sections 3.1.2-3.1.3)."""


from datetime import timedelta

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from ..config import PinnerSageParams
from ..core.clustering import summarize_clusters
from ..partitions import daily_partitions, partition_days
from ..readers import day_bounds
from ..reporting import distribution, frame_markdown, representative_user
from ..warehouse import embedding_matrix, ensure_tables, query_arrow, replace_partitions, user_batches
from .actions import action_windows
from .clusters import user_clusters
from .constants import DUCKDB_POOL, GROUP

MEMBERS_SQL = """
    SELECT c.user_id, c.cluster_id, c.kind, m.pin_id, p.embedding
    FROM user_clusters c, unnest(c.pin_ids) AS m(pin_id)
    JOIN pins p ON p.pin_id = m.pin_id
    WHERE c.partition_date = ? AND c.user_id BETWEEN ? AND ?
    ORDER BY c.user_id, c.cluster_id, m.pin_id
"""
ACTIONS_SQL = "SELECT user_id, pin_id, ts FROM action_windows WHERE partition_date = ? AND user_id BETWEEN ? AND ?"


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[user_clusters, action_windows],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
)
def user_medoids(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, params: PinnerSageParams
) -> dg.MaterializeResult:
    """For day D: each user's interests as {medoid pin, importance} (Algorithm 2).

    The medoid minimises the sum of squared distances to the cluster's members (Eq. 2);
    importance is sum over the cluster's actions of exp(-lambda * age in days) with
    T_now = D+1 00:00 UTC, the end of the partition (Eq. 3).
    """
    for day in partition_days(context):
        _, now = day_bounds(day)
        with duckdb.get_connection() as conn:
            batches = user_batches(conn, day, params.batch_rows)
        parts = []
        for first, last, _ in batches:  # a bounded slice of users at a time
            with duckdb.get_connection() as conn:
                members_table = query_arrow(conn, MEMBERS_SQL, [day, first, last])
                actions = conn.execute(ACTIONS_SQL, [day, first, last]).df()
            members = members_table.drop(["embedding"]).to_pandas()
            parts.append(
                summarize_clusters(members, embedding_matrix(members_table), actions, now=now, decay_lambda=params.decay_lambda)
            )
        medoids = pd.concat(parts, ignore_index=True) if parts else summarize_clusters(
            pd.DataFrame(columns=["user_id", "cluster_id", "pin_id", "kind"]), np.empty((0, 1)), pd.DataFrame(
                columns=["user_id", "pin_id", "ts"]), now=now, decay_lambda=params.decay_lambda)
        with duckdb.get_connection() as conn:
            ensure_tables(conn)
            replace_partitions(conn, "user_medoids", medoids.assign(partition_date=day), day, day)
        context.log.info(f"{day}: {len(medoids)} medoids for {medoids['user_id'].nunique()} users ({len(batches)} batches)")
    return dg.MaterializeResult(metadata=medoid_metadata(medoids, params.decay_lambda, now - timedelta(days=1)))


def medoid_metadata(medoids: pd.DataFrame, decay_lambda: float, day: pd.Timestamp) -> dict[str, object]:
    per_user = medoids.groupby("user_id").size()
    user = representative_user(per_user)
    interests = (
        medoids[medoids["user_id"] == user]
        .sort_values("importance", ascending=False)[["cluster_id", "medoid_pin_id", "importance", "size", "n_actions", "kind"]]
    )
    return {
        "partition": str(day.date()),
        "decay_lambda": decay_lambda,
        "users": int(per_user.size),
        "dagster/row_count": len(medoids),
        "distinct_medoid_pins": int(medoids["medoid_pin_id"].nunique()),
        "medoids_per_user": distribution(per_user.to_numpy()),
        "importance": distribution(medoids["importance"].to_numpy()),
        "example_user_interests": dg.MetadataValue.md(f"user **{user}**\n\n" + frame_markdown(interests))
        if user is not None
        else "",
    }
