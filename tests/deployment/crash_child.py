"""Run one asset of the tiny graph in this process and SIGKILL it at a chosen point.

``python -m tests.deployment.crash_child ROOT ASSET POINT``: the fault is injected from outside the product
by wrapping one function, so the product code runs unchanged up to the kill.
"""

import os
import signal
import sys
from pathlib import Path

import dagster as dg

import pinnersage_dagster.core.artifacts as artifacts
import pinnersage_dagster.warehouse as warehouse
from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.engines.workers import UserPool
from pinnersage_dagster.resources import ClusteringEngine

from ..support import DAY, make_resources


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after_first_batch(root: Path) -> None:
    """user_interests, mid-compute: the first user batch is done, the rest never are.
    The worker processes' pids go to ``workers.pids`` so the test can see them exit."""
    original = UserPool.represent

    def represent(self, *args, **kwargs):
        result = original(self, *args, **kwargs)()
        (root / "workers.pids").write_text(" ".join(map(str, self._pool._processes)))
        die()
        return result

    UserPool.represent = represent


def inside_the_write_transaction(root: Path) -> None:
    """Mid-write: the partition's old rows are deleted and half the new ones inserted (or, for
    the two tables of the per-user pass, the first table replaced), uncommitted."""
    original, original_day = warehouse._insert, warehouse._replace_day_from

    def insert(conn, table, columns, rows):
        original(conn, table, columns, rows[: len(rows) // 2])
        die()

    def replace_day(conn, table, day, insert_sql):
        original_day(conn, table, day, insert_sql)
        die()

    warehouse._insert = insert
    warehouse._replace_day_from = replace_day


def after_the_build_files_are_written(root: Path) -> None:
    """Mid-publish: the new build's files are on disk, the manifest is not swapped yet."""
    original = artifacts.publish

    def publish(partition_dir, write, verify=None):
        def write_then_die(build_dir):
            write(build_dir)
            die()

        return original(partition_dir, write_then_die, verify)

    for module in (
        "pinnersage_dagster.core.hnsw",
        "pinnersage_dagster.core.pool_graph",
        "pinnersage_dagster.serving.snapshot",
    ):
        setattr(sys.modules[module], "publish", publish)


POINTS = {
    "compute": after_first_batch,
    "write": inside_the_write_transaction,
    "publish": after_the_build_files_are_written,
}


def main() -> None:
    root, asset, point = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    import pinnersage_dagster.core.pool_graph
    import pinnersage_dagster.serving.snapshot  # noqa: F401

    POINTS[point](root)
    # several user batches; for candidate_pool, graph parameters of its own, so that the graph is
    # rebuilt and published (an unchanged graph is not written again)
    params = {"hnsw_ef_construction": 150} if asset == "candidate_pool" else {}
    resources = make_resources(root, engine=ClusteringEngine(batch_rows=200), **params)
    partition = None if asset == "candidate_pool" else DAY.isoformat()
    selection = dg.AssetSelection.assets(asset).required_multi_asset_neighbors()
    dg.materialize(all_assets, selection=selection, resources=resources, partition_key=partition)
    sys.exit("the fault was never reached")


if __name__ == "__main__":
    main()
