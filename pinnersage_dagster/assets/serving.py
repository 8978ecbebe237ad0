"""The serving snapshot of each day: what the recommendation service loads."""

from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..config import PinnerSageParams
from ..partitions import daily_partitions, partition_days
from ..readers import day_bounds
from ..resources import IndexStore, ServingStore
from ..core.retention import days, disk_bytes, prune_artifacts, served_partitions
from ..serving.snapshot import publish_snapshot
from ..warehouse import WarehouseCatalog
from .actions import action_windows
from .candidates import candidate_pool
from .interests import user_clusters, user_medoids
from .constants import DUCKDB_POOL, GROUP
from .index import pin_index

MEMBERS_SQL = """
    SELECT user_id, cluster_id, pin_id
    FROM (SELECT user_id, cluster_id, unnest(pin_ids) AS pin_id FROM user_clusters WHERE partition_date = ?)
    ORDER BY user_id, cluster_id, pin_id
"""
SEEN_SQL = "SELECT DISTINCT user_id, pin_id FROM action_windows WHERE partition_date = ? ORDER BY user_id, pin_id"
# cold start: the window's most acted-on pins that are in the pool as of that day
POPULAR_SQL = """
    SELECT w.pin_id FROM action_windows w JOIN candidate_pool c USING (pin_id)
    WHERE w.partition_date = ? AND (c.created_at IS NULL OR c.created_at < ?)
    GROUP BY w.pin_id ORDER BY count(*) DESC, w.pin_id LIMIT ?
"""


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[user_medoids, user_clusters, action_windows, pin_index, candidate_pool],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    pool=DUCKDB_POOL,
    kinds={"parquet"},
)
def serving_snapshot(
    context: dg.AssetExecutionContext,
    duckdb: DuckDBResource,
    params: PinnerSageParams,
    index_store: IndexStore,
    serving_store: ServingStore,
) -> dg.MaterializeResult:
    """For day D: user_medoids of D paired with pin_index of D, plus what the online path needs
    (cluster members and centroids, seen pins, popular pins, catalog embeddings), published
    atomically with checksums. The recommendation service serves the newest one that loads."""
    for day in partition_days(context):
        _, end = day_bounds(day)
        with duckdb.get_connection() as conn:
            medoids = conn.execute(
                "SELECT * EXCLUDE (partition_date) FROM user_medoids WHERE partition_date = ? ORDER BY user_id, cluster_id",
                [day]).df()
            members = conn.execute(MEMBERS_SQL, [day]).df()
            seen = conn.execute(SEEN_SQL, [day]).df()
            popular = conn.execute(POPULAR_SQL, [day, end, params.retrieval_budget]).df()["pin_id"].to_numpy()
        manifest = publish_snapshot(
            serving_store.partition_dir(day.isoformat()),
            partition=day.isoformat(),
            batch_time=end,
            medoids=medoids,
            members=members,
            seen=seen,
            popular=popular,
            catalog=WarehouseCatalog(duckdb.get_connection),
            index_dir=index_store.partition_dir(day.isoformat()),
            alpha=params.alpha,
            decay_lambda=params.decay_lambda,
        )
        written, linked = _disk_use(serving_store.partition_dir(day.isoformat()) / "builds" / manifest["build_id"])
        root = Path(serving_store.root)
        served = served_partitions(root)
        removed = prune_artifacts(root, keep_days=params.retention_days, protect={day.isoformat(), *served})
        context.log.info(f"{day}: snapshot {manifest['build_id']} for {manifest['users']} users, "
                         f"{written / 2**20:.0f} MiB written, {linked / 2**20:.0f} MiB shared with other builds"
                         + (f"; retention removed {removed}" if removed else ""))
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(serving_store.partition_dir(day.isoformat()) / "manifest.json")),
            "build_id": manifest["build_id"],
            "users": manifest["users"],
            "dagster/row_count": manifest["clusters"],
            "index_build_id": manifest["index"]["build_id"],
            "popular_pins": int(len(popular)),
            "catalog_pins": manifest["catalog"]["pins"],
            "catalog_base_reused": manifest["catalog"]["base_reused"],
            "catalog_delta_pins": manifest["catalog"]["delta_pins"],
            "catalog_base_origin": manifest["catalog"]["base_origin"],
            "bytes_written_mib": round(written / 2**20, 1),
            "bytes_linked_mib": round(linked / 2**20, 1),
            "retention_days": params.retention_days,
            "retention_removed": removed,
            "served_partitions": sorted(served),
            "days_on_disk": len(days(root)),
            "disk_mib_all_days": round(disk_bytes(root) / 2**20, 1),
        }
    )


def _disk_use(build: Path) -> tuple[int, int]:
    """Bytes of a build's own files, and of files it shares (hard links) with other builds."""
    own = shared = 0
    for path in build.iterdir():
        stat = path.stat()
        if stat.st_nlink > 1:
            shared += stat.st_size
        else:
            own += stat.st_size
    return own, shared
