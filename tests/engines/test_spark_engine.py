"""The Spark engine (Parquet in, groupBy(user_id).applyInPandas, Parquet out; local mode)
writes exactly the local engine's tables."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.config import PinnerSageParams
from pinnersage_dagster.engines.spark import export_day_inputs
from pinnersage_dagster.resources import ClusteringEngine
from pinnersage_dagster.warehouse import replace_interests

from ..support import DAY, content_hash, materializations

TABLES = ("user_clusters", "user_medoids")
REPO = Path(__file__).resolve().parents[2]


def run(graph, **engine) -> dict:
    resources = {**graph.resources, "engine": ClusteringEngine(**engine)}
    result = dg.materialize(all_assets, selection=list(TABLES), resources=resources, partition_key=DAY.isoformat())
    meta = {k: v.value for k, v in materializations(result, "user_clusters")[-1].metadata.items()}
    with graph.connect(read_only=True) as conn:
        return {"hashes": {t: content_hash(conn, t) for t in TABLES}, "meta": meta}


@pytest.mark.slow
def test_spark_writes_the_local_engines_tables(graph_copy, tmp_path):
    local = run(graph_copy, workers=2)
    spark = run(graph_copy, kind="spark", spark_master="local[2]")
    assert spark["meta"]["clustering_engine"] == "spark (local[2])"
    assert spark["meta"]["exported_actions"] > 0 and spark["meta"]["day_pins"] == local["meta"]["day_pins"]
    assert spark["hashes"] == local["hashes"]
    exchange = graph_copy.root / "exchange" / DAY.isoformat()
    assert not exchange.exists() or not any(exchange.iterdir())  # the run's Parquet exchange is removed

    # the spark-submit command of docs/performance.md: a cluster runs the pass on inputs the pipeline exported
    inputs, output = tmp_path / "inputs", tmp_path / "rows"
    inputs.mkdir()
    with graph_copy.connect() as conn:
        export_day_inputs(conn, DAY, str(inputs))
    submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    subprocess.run(
        [
            str(submit),
            "--master",
            "local[2]",
            str(REPO / "pinnersage_dagster" / "engines" / "spark_submit.py"),
            "--inputs",
            str(inputs),
            "--output",
            str(output),
            "--alpha",
            str(PinnerSageParams().alpha),
            "--decay-lambda",
            "0.01",
            "--now",
            f"{DAY + timedelta(days=1)}T00:00:00",
        ],
        check=True,
        env=env,
        timeout=600,
        capture_output=True,
    )
    with graph_copy.connect() as conn:
        replace_interests(conn, DAY, str(output / "*.parquet"))
        assert {t: content_hash(conn, t) for t in TABLES} == local["hashes"]
