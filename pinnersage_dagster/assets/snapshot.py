"""The serving snapshot of each day: what the recommendation service loads."""

from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from .. import guards
from ..config import PinnerSageParams
from ..core.artifacts import ArtifactIntegrityError, read_manifest as read_artifact_manifest
from ..core.retention import days, disk_bytes, prune_artifacts, served_partitions
from ..partitions import daily_partitions, partition_days
from ..readers import day_bounds
from ..resources import IndexStore, ServingStore
from ..serving.snapshot import publish_snapshot
from ..warehouse import WarehouseCatalog, query_arrow, transaction
from .actions import action_windows
from .candidates import candidate_pool
from .constants import DUCKDB_POOL, GROUP
from .index import pin_index
from .interests import user_clusters, user_medoids

MEMBERS_SQL = """
    SELECT user_id, cluster_id, pin_id
    FROM (SELECT user_id, cluster_id, unnest(pin_ids) AS pin_id FROM user_clusters WHERE partition_date = ?)
    ORDER BY user_id, cluster_id, pin_id
"""
# the window's actions, read once: the seen pins and the decay sums come from them
ACTIONS_SQL = "SELECT user_id, pin_id, ts FROM action_windows WHERE partition_date = ? ORDER BY user_id, pin_id, ts"
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
    atomically with checksums. The recommendation service serves the newest one that loads.

    Published only from parts that agree: D's window, interests and index were all materialized,
    from the current catalog and candidate pool, and the index on disk is the one recorded; the
    versions go into the snapshot's manifest, which the service checks again."""
    for day in partition_days(context):
        _, end = day_bounds(day)
        with duckdb.get_connection() as conn:
            lineage = checked_snapshot_inputs(conn, day, index_store)
            guards.publish_into(conn, serving_store.root, duckdb.database)
            # through Arrow: 10M rows reach pandas in about half of .df()'s time
            medoids = query_arrow(
                conn,
                "SELECT * EXCLUDE (partition_date) FROM user_medoids WHERE partition_date = ? ORDER BY user_id, cluster_id",
                [day],
            ).to_pandas()
            members = query_arrow(conn, MEMBERS_SQL, [day]).to_pandas()
            actions = query_arrow(conn, ACTIONS_SQL, [day]).to_pandas()
            popular = conn.execute(POPULAR_SQL, [day, end, params.retrieval_budget]).df()["pin_id"].to_numpy()
        manifest = publish_snapshot(
            serving_store.partition_dir(day.isoformat()),
            partition=day.isoformat(),
            batch_time=end,
            medoids=medoids,
            members=members,
            actions=actions,
            popular=popular,
            catalog=WarehouseCatalog(duckdb.get_connection),
            index_dir=index_store.partition_dir(day.isoformat()),
            alpha=params.alpha,
            decay_lambda=params.decay_lambda,
            lineage=lineage,
            serving={
                "sampled_medoids": params.sampled_medoids,
                "retrieval_policy": params.retrieval_policy,
                "retrieval_budget": params.retrieval_budget,
                "online_recent_actions": params.online_recent_actions,
            },
        )
        with duckdb.get_connection() as conn, transaction(conn):
            guards.record(conn, "serving_snapshot", day, manifest["build_id"], lineage, manifest["clusters"])
        written, linked = _disk_use(serving_store.partition_dir(day.isoformat()) / "builds" / manifest["build_id"])
        root = Path(serving_store.root)
        served = served_partitions(root)
        removed = prune_artifacts(root, keep_days=params.retention_days, protect={day.isoformat(), *served})
        context.log.info(
            f"{day}: snapshot {manifest['build_id']} for {manifest['users']} users, "
            f"{written / 2**20:.0f} MiB written, {linked / 2**20:.0f} MiB shared with other builds"
            + (f"; retention removed {removed}" if removed else "")
        )
    return dg.MaterializeResult(
        data_version=guards.data_version(context, manifest["build_id"]),
        metadata={
            "path": dg.MetadataValue.path(str(serving_store.partition_dir(day.isoformat()) / "manifest.json")),
            "built_from": dg.MetadataValue.json(lineage),
            "build_id": manifest["build_id"],
            "users": manifest["users"],
            "dagster/row_count": manifest["clusters"],
            "index_build_id": manifest["index"]["build_id"],
            "popular_pins": len(popular),
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
        },
    )


def checked_snapshot_inputs(conn, day, index_store: IndexStore) -> dict:
    """The versions a snapshot of ``day`` pairs, after checking that they agree; fails naming the
    missing or stale partition and what to materialize."""
    needed_by = f"serving_snapshot of {day}"
    window = guards.require(conn, "action_windows", day, needed_by=needed_by)
    interests = {
        asset: guards.require(conn, asset, day, needed_by=needed_by, materialize="user_clusters/user_medoids")
        for asset in ("user_clusters", "user_medoids")
    }
    index = guards.require(conn, "pin_index", day, needed_by=needed_by)
    catalog = guards.require(conn, "pins", needed_by=needed_by)
    pool = guards.require(conn, "candidate_pool", needed_by=needed_by)
    for asset, found in interests.items():
        guards.same(
            window.version,
            found.inputs.get("action_windows"),
            what=f"{asset} of {day} was built from another action_windows of {day}",
            rematerialize=f"user_clusters/user_medoids for {day}",
        )
        guards.same(
            catalog.version,
            found.inputs.get("pins"),
            what=f"{asset} of {day} was built from another version of the catalog (pins)",
            rematerialize=f"user_clusters/user_medoids for {day}",
        )
    guards.same(
        catalog.version,
        index.inputs.get("pins"),
        what=f"pin_index of {day} was built from another version of the catalog (pins)",
        rematerialize=f"candidate_pool, then pin_index for {day}",
    )
    guards.same(
        pool.version,
        index.inputs.get("candidate_pool"),
        what=f"pin_index of {day} was built from another candidate_pool",
        rematerialize=f"pin_index for {day}",
    )
    try:
        published = read_artifact_manifest(index_store.partition_dir(day.isoformat()))["build_id"]
    except (ArtifactIntegrityError, KeyError) as exc:
        raise guards.StaleInputError(f"{needed_by}: pin_index of {day} is not on disk ({exc}): materialize it") from exc
    guards.same(
        index.version,
        published,
        what=f"the pin_index of {day} on disk is not the one recorded",
        rematerialize=f"pin_index for {day}",
    )
    return {
        "pins": catalog.version,
        "candidate_pool": pool.version,
        "pin_index": index.version,
        "action_windows": window.version,
        "user_clusters": interests["user_clusters"].version,
        "user_medoids": interests["user_medoids"].version,
        "dimension": catalog.inputs.get("dimension"),
    }


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
