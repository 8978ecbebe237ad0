"""The HNSW index over the candidate pool, one published artifact per day (paper, section 4.1)."""


import time
from datetime import timedelta

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..config import PinnerSageParams
from ..core.hnsw import build_index, publish_index
from ..partitions import daily_partitions, partition_days
from ..resources import IndexStore
from ..warehouse import embedding_matrix, query_arrow
from .candidates import candidate_pool
from .constants import DUCKDB_POOL, GROUP

# the pool as it stood at the end of day D: pins created by then (or of unknown creation time)
POOL_AT_SQL = """
    SELECT c.pin_id, p.embedding
    FROM candidate_pool c JOIN pins p USING (pin_id)
    WHERE c.created_at IS NULL OR c.created_at < ?
    ORDER BY c.pin_id
"""


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[candidate_pool],
    # one index build per run: builds are heavy, and a failed build fails one day only
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    pool=DUCKDB_POOL,
    kinds={"hnswlib"},
)
def pin_index(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, params: PinnerSageParams, index_store: IndexStore
) -> dg.MaterializeResult:
    """For day D: an HNSW index (inner product on unit vectors) over the candidate pool pins
    that existed by the end of D, published with a manifest (dimension, count, parameters,
    source partition, checksums). The recommender pairs it with ``user_medoids`` of D."""
    for day in partition_days(context):
        with duckdb.get_connection() as conn:
            table = query_arrow(conn, POOL_AT_SQL, [day + timedelta(days=1)])
        started = time.perf_counter()
        index = build_index(
            embedding_matrix(table), M=params.hnsw_m, ef_construction=params.hnsw_ef_construction, ef=params.hnsw_ef
        )
        build_seconds = time.perf_counter() - started
        directory = index_store.partition_dir(day.isoformat())
        manifest = publish_index(
            directory,
            index,
            table.column("pin_id").to_numpy(),
            source_partition=day.isoformat(),
            M=params.hnsw_m,
            ef_construction=params.hnsw_ef_construction,
            ef=params.hnsw_ef,
        )
        size = sum(f.stat().st_size for f in (directory / "builds" / manifest.build_id).iterdir())
        context.log.info(f"{day}: indexed {manifest.count} pins in {build_seconds:.1f}s at {directory}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(directory / "manifest.json")),
            "dagster/row_count": manifest.count,
            "dimension": manifest.dimension,
            "source_partition": manifest.source_partition,
            "M": manifest.M,
            "ef_construction": manifest.ef_construction,
            "ef": manifest.ef,
            "build_seconds": round(build_seconds, 2),
            "size_on_disk_mb": round(size / 2**20, 2),
            "pin_ids_sha256": manifest.pin_ids_sha256,
            "build_id": manifest.build_id,
        }
    )
