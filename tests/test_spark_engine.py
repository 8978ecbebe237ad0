"""The Spark engine (groupBy(user_id).applyInPandas in local mode) equals the local engine."""

import dagster as dg
import pandas as pd
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.config import PinnerSageParams

from .conftest import DAY, WINDOW


@pytest.mark.slow
def test_spark_engine_writes_the_local_engines_partition(graph_copy):
    def clusters():
        with graph_copy.connect(read_only=True) as conn:
            return conn.execute("SELECT * EXCLUDE (merge_cost) FROM user_clusters ORDER BY user_id, cluster_id").df()

    local = clusters()
    params = PinnerSageParams(window_days=WINDOW, clustering_engine="spark", spark_master="local[2]", batch_rows=300)
    result = dg.materialize(all_assets, selection=["user_clusters"], resources={**graph_copy.resources, "params": params},
                            partition_key=DAY.isoformat())
    meta = result.asset_materializations_for_node("user_clusters")[-1].metadata
    assert meta["clustering_engine"].value == "spark (local[2])" and meta["batches"].value >= 2
    pd.testing.assert_frame_equal(clusters(), local)
