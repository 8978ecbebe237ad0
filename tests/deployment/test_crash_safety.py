"""SIGKILL in the middle of a run: readers never see a half-written partition or artifact, the
recommender keeps serving, and re-running gives exactly the uninterrupted result."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.core.hnsw import live_pin_ids, read_index_manifest
from pinnersage_dagster.core.pool_graph import load_pool_graph
from pinnersage_dagster.serving.service import RecommenderService
from pinnersage_dagster.serving.store import SnapshotManager

from ..support import DAY, content_hash

TABLES = [
    "raw_actions",
    "raw_actions_quarantine",
    "action_windows",
    "user_clusters",
    "user_medoids",
    "pins",
    "candidate_pool",
    "candidate_pool_exclusions",
]

REPO = Path(__file__).resolve().parents[2]


def kill_mid_run(root: Path, asset: str, point: str) -> None:
    log = root / f"killed-{asset}-{point}.log"
    with log.open("w") as out:  # a file, not a pipe: nothing the child leaves behind can block us
        child = subprocess.run(
            [sys.executable, "-m", "tests.deployment.crash_child", str(root), asset, point],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    assert child.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def wait_until_gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (an orphan's state is read from /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def hashes(graph) -> dict:
    with graph.connect(read_only=True) as conn:
        return {t: content_hash(conn, t) for t in [*TABLES, "user_medoids"]}


def builds(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "builds").iterdir())


def rerun(graph, asset: str) -> None:
    partition = None if asset == "candidate_pool" else DAY.isoformat()
    selection = dg.AssetSelection.assets(asset).required_multi_asset_neighbors()
    assert dg.materialize(all_assets, selection=selection, resources=graph.resources, partition_key=partition).success


@pytest.mark.slow
@pytest.mark.parametrize("point", ["compute", "write"])
def test_user_interests_killed_mid_run_then_rerun(graph_copy, point):
    before = hashes(graph_copy)
    kill_mid_run(graph_copy.root, "user_clusters", point)
    if point == "compute":  # the run's clustering workers do not outlive it
        workers = [int(pid) for pid in (graph_copy.root / "workers.pids").read_text().split()]
        assert workers and wait_until_gone(workers, seconds=20)
    assert hashes(graph_copy) == before  # the killed transaction left nothing behind
    rerun(graph_copy, "user_clusters")
    assert hashes(graph_copy) == before  # and the re-run equals the uninterrupted run
    assert not (graph_copy.root / "exchange" / DAY.isoformat()).exists()  # nor its Parquet parts, nor their folder


@pytest.mark.slow
def test_pin_index_killed_mid_publish_then_rerun(graph_copy):
    directory = Path(graph_copy.resources["index_store"].root) / DAY.isoformat()
    published = read_index_manifest(directory)
    pins = sorted(live_pin_ids(directory))
    kill_mid_run(graph_copy.root, "pin_index", "publish")
    assert len(builds(directory)) == 2  # the orphaned build is on disk ...
    assert read_index_manifest(directory) == published and sorted(live_pin_ids(directory)) == pins  # ... and invisible
    rerun(graph_copy, "pin_index")
    again = read_index_manifest(directory)
    assert again.build_id != published.build_id and again.pin_ids_sha256 == published.pin_ids_sha256
    assert builds(directory) == [again.build_id]  # the next publish cleared the orphan


@pytest.mark.slow
def test_candidate_pool_killed_while_publishing_its_graph_then_rerun(graph_copy):
    directory = Path(graph_copy.resources["index_store"].root) / "pool_graph"
    before, graph = hashes(graph_copy), load_pool_graph(directory)
    kill_mid_run(graph_copy.root, "candidate_pool", "publish")
    assert hashes(graph_copy) == before
    assert np.array_equal(load_pool_graph(directory).pin_ids, graph.pin_ids)
    rerun(graph_copy, "candidate_pool")
    assert hashes(graph_copy) == before


@pytest.mark.slow
def test_the_recommender_keeps_serving_through_a_killed_snapshot_build(graph_copy):
    manager = SnapshotManager(Path(graph_copy.resources["serving_store"].root))
    manager.refresh()
    service = RecommenderService(manager)
    user = int(manager.current.medoids["user_id"].iloc[0])
    served = manager.current.version
    now = manager.current.batch_time
    answer = service.recommend(user, seed=1, now=now)
    kill_mid_run(graph_copy.root, "serving_snapshot", "publish")
    manager.refresh()
    assert manager.current.version == served and not manager.refusals
    again = service.recommend(user, seed=1, now=now)
    assert again.pop("impression_id") != answer.pop("impression_id")  # each answer's own id
    assert repr(again) == repr(answer)  # same snapshot, same answer
    rerun(graph_copy, "serving_snapshot")
    manager.refresh()
    assert manager.current.version != served  # the completed build is picked up
