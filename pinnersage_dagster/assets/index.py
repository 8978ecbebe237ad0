"""The HNSW index over the candidate pool, one published artifact per day (paper, section 4.1)."""

import time
from datetime import timedelta
from pathlib import Path

import dagster as dg
import numpy as np
from dagster_duckdb import DuckDBResource

from .. import guards
from ..config import PinnerSageParams
from ..core.artifacts import ArtifactIntegrityError, read_manifest as read_artifact_manifest
from ..core.hnsw import build_index, publish_index, publish_linked_index
from ..core.pool_graph import live_labels, published_labels
from ..core.retention import days, prune_artifacts
from ..partitions import daily_partitions, partition_days
from ..resources import IndexStore
from ..warehouse import POOL_AT_SQL, POOL_IDS_AT_SQL, embedding_matrix, query_arrow, transaction
from .candidates import candidate_pool
from .constants import DUCKDB_POOL, GROUP

# below this share of live labels, a day's index is built compact instead of from the pool
# graph: queries walk through tombstones, so a graph that is mostly tombstones is slow
MIN_LIVE_SHARE = 0.5


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[candidate_pool],
    # one index per run: a failed publish fails one day only
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    pool=DUCKDB_POOL,
    kinds={"hnswlib"},
)
def pin_index(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, params: PinnerSageParams, index_store: IndexStore
) -> dg.MaterializeResult:
    """For day D: an HNSW index (inner product on unit vectors) over the candidate pool pins
    that existed by the end of D, published with a manifest (dimension, count, parameters,
    source partition, checksums). The recommender pairs it with ``user_medoids`` of D.

    It is the pool graph that ``candidate_pool`` publishes, hard-linked, not copied: the pins
    outside the day's pool (duplicates, pins created after D) are listed in ``deleted.npy`` and
    marked deleted when the index is opened. A day whose pool is under half the graph gets a
    compact index built from its own pins instead.
    """
    versions = []
    for day in partition_days(context):
        started = time.perf_counter()
        with duckdb.get_connection() as conn:
            inputs = checked_index_inputs(conn, index_store, needed_by=f"pin_index of {day}")
            guards.publish_into(conn, index_store.root, duckdb.database)
        try:
            graph = published_labels(index_store.pool_graph_dir())
        except ArtifactIntegrityError as exc:
            raise dg.Failure(f"no usable pool graph, materialize candidate_pool first: {exc}") from exc
        with duckdb.get_connection() as conn:
            pool_ids = conn.execute(POOL_IDS_AT_SQL, [day + timedelta(days=1)]).fetchnumpy()["pin_id"]
        if graph.build.name != inputs["graph_build"]:
            raise guards.StaleInputError(
                f"the pool graph was republished while pin_index of {day} ran: re-run pin_index"
            )
        labels = live_labels(graph.pin_ids, graph.live, np.asarray(pool_ids, dtype=np.int64))
        if (labels < 0).any():
            raise dg.Failure(
                f"{int((labels < 0).sum())} candidate_pool pins are missing from the pool graph in "
                f"{index_store.pool_graph_dir()}: re-materialize candidate_pool"
            )
        in_pool = np.zeros(len(graph.pin_ids), dtype=bool)
        in_pool[labels] = True
        directory = index_store.partition_dir(day.isoformat())
        deletions = 0
        if in_pool.sum() >= MIN_LIVE_SHARE * len(graph.pin_ids):
            mode, deletions = "linked pool graph", int((graph.live & ~in_pool).sum())
            manifest = publish_linked_index(
                directory,
                graph.build,
                graph.files,
                graph.pin_ids,
                graph.live,
                in_pool,
                dimension=graph.params.dimension,
                source_partition=day.isoformat(),
                M=graph.params.M,
                ef_construction=graph.params.ef_construction,
                ef=params.hnsw_ef,
            )
        else:
            del graph
            with duckdb.get_connection() as conn:
                table = query_arrow(conn, POOL_AT_SQL, [day + timedelta(days=1)])
            index = build_index(
                embedding_matrix(table), M=params.hnsw_m, ef_construction=params.hnsw_ef_construction, ef=params.hnsw_ef
            )
            mode = "compact build"
            manifest = publish_index(
                directory,
                index,
                table.column("pin_id").to_numpy(),
                source_partition=day.isoformat(),
                M=params.hnsw_m,
                ef_construction=params.hnsw_ef_construction,
                ef=params.hnsw_ef,
            )
            del table, index
        with duckdb.get_connection() as conn, transaction(conn):
            guards.record(conn, "pin_index", day, manifest.build_id, inputs, manifest.count)
        versions.append(manifest.build_id)
        seconds = time.perf_counter() - started
        build_files = list((directory / "builds" / manifest.build_id).iterdir())
        size = sum(f.stat().st_size for f in build_files)
        written = sum(f.stat().st_size for f in build_files if f.stat().st_nlink == 1)
        removed = prune_artifacts(Path(index_store.root), keep_days=params.retention_days, protect={day.isoformat()})
        context.log.info(
            f"{day}: indexed {manifest.count} pins ({mode}) in {seconds:.1f}s at {directory}"
            + (f"; retention removed {removed}" if removed else "")
        )
    return dg.MaterializeResult(
        data_version=guards.data_version(context, versions[-1]),
        metadata={
            "path": dg.MetadataValue.path(str(directory / "manifest.json")),
            "candidate_pool_version": inputs["candidate_pool"],
            "catalog_version": inputs["pins"],
            "dagster/row_count": manifest.count,
            "index_mode": mode,
            "elements": manifest.elements,
            "tombstones": manifest.elements - manifest.count,
            "dimension": manifest.dimension,
            "source_partition": manifest.source_partition,
            "M": manifest.M,
            "ef_construction": manifest.ef_construction,
            "ef": manifest.ef,
            "seconds": round(seconds, 2),
            "size_on_disk_mb": round(size / 2**20, 2),
            "bytes_written_mib": round(written / 2**20, 1),
            "deleted_at_load": deletions,
            "retention_days": params.retention_days,
            "retention_removed": removed,
            "days_on_disk": len(days(Path(index_store.root))),
            "pin_ids_sha256": manifest.pin_ids_sha256,
            "build_id": manifest.build_id,
        },
    )


def checked_index_inputs(conn, index_store: IndexStore, *, needed_by: str) -> dict:
    """What a day's index is built from: the current catalog's candidate pool and its published
    graph. Fails if the pool predates the catalog, or the graph on disk is not the pool's."""
    catalog = guards.require(conn, "pins", needed_by=needed_by)
    pool = guards.require(conn, "candidate_pool", needed_by=needed_by)
    guards.same(
        catalog.version,
        pool.inputs.get("pins"),
        what="candidate_pool was built from another version of the catalog (pins)",
        rematerialize="candidate_pool",
    )
    try:
        graph_build = read_artifact_manifest(index_store.pool_graph_dir())["build_id"]
    except (ArtifactIntegrityError, KeyError) as exc:
        raise guards.StaleInputError(
            f"{needed_by}: no published pool graph ({exc}): materialize candidate_pool first"
        ) from exc
    guards.same(
        pool.inputs.get("graph_build"),
        graph_build,
        what=f"the pool graph in {index_store.pool_graph_dir()} is not the one candidate_pool published",
        rematerialize="candidate_pool",
    )
    return {
        "candidate_pool": pool.version,
        "pins": catalog.version,
        "graph_build": graph_build,
        "dimension": pool.inputs.get("dimension"),
    }
