"""The Spark engine (Parquet in, groupBy(user_id).applyInPandas, Parquet out; local mode)
writes exactly the local engine's tables."""

import dagster as dg
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.config import PinnerSageParams

from .conftest import DAY, WINDOW, materializations
from .test_assets import content_hash

TABLES = ("user_clusters", "user_medoids")


def run(graph, **params) -> dict:
    resources = {**graph.resources, "params": PinnerSageParams(window_days=WINDOW, **params)}
    result = dg.materialize(all_assets, selection=list(TABLES), resources=resources, partition_key=DAY.isoformat())
    meta = {k: v.value for k, v in materializations(result, "user_clusters")[-1].metadata.items()}
    with graph.connect(read_only=True) as conn:
        return {"hashes": {t: content_hash(conn, t) for t in TABLES}, "meta": meta}


@pytest.mark.slow
def test_spark_engine_writes_the_local_engines_tables(graph_copy):
    local = run(graph_copy, clustering_workers=2)
    spark = run(graph_copy, clustering_engine="spark", spark_master="local[2]")
    assert spark["meta"]["clustering_engine"] == "spark (local[2])"
    assert spark["meta"]["exported_actions"] > 0 and spark["meta"]["day_pins"] == local["meta"]["day_pins"]
    assert spark["hashes"] == local["hashes"]
    exchange = graph_copy.root / "exchange" / DAY.isoformat()
    assert not exchange.exists() or not any(exchange.iterdir())  # the run's Parquet exchange is removed
