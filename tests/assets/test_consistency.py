"""Consistent by construction: partial backfills, re-runs and stray files never publish what the
inputs do not support, on a real DuckDB file (and, for the backfill, a real Dagster instance)."""

import json
import shutil
from datetime import UTC, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.checks import all_checks
from pinnersage_dagster.core.artifacts import ArtifactIntegrityError, sha256
from pinnersage_dagster.core.hnsw import build_index
from pinnersage_dagster.core.retention import prune_artifacts
from pinnersage_dagster.provenance import STAMP
from pinnersage_dagster.resources import FileSource
from pinnersage_dagster.serving.snapshot import load_snapshot
from pinnersage_dagster.serving.store import SnapshotManager
from pinnersage_dagster.warehouse import write_pins

from ..support import DAY, materializations, publish_day


def run(resources: dict, selection: list[str], day=DAY, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*all_assets, *all_checks],
        selection=dg.AssetSelection.assets(*selection),
        resources=resources,
        partition_key=day.isoformat() if day else None,
        raise_on_error=False,
        **kwargs,
    )


def failure(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "the run should have failed"
    return str(failures[0].event_specific_data.error.message)


def served_partition(resources: dict) -> str | None:
    manager = SnapshotManager(Path(resources["serving_store"].root))
    manager.refresh()
    return manager.current.partition if manager.current else None


def pins_file(graph, path: Path, *, change=None) -> Path:
    """The graph's catalog written as a pins file, after ``change(frame)``."""
    with graph.connect(read_only=True) as conn:
        frame = conn.execute("SELECT pin_id, embedding, quality, created_at FROM pins ORDER BY pin_id").df()
    frame["embedding"] = frame["embedding"].map(lambda e: np.asarray(e, dtype=np.float64))
    frame = change(frame) if change else frame
    frame["embedding"] = frame["embedding"].map(list)
    frame.to_parquet(path)
    return path


def accepting(resources: dict) -> None:
    """An operator who means it: the same parameters, accepting implausible inputs."""
    resources["params"] = type(resources["params"])(
        **{**resources["params"].model_dump(), "accept_implausible_inputs": True}
    )


def busy_day(day, users: int) -> list[str]:
    """12 actions of each of ``users`` users on ``day``, at valid times."""
    return [
        f"{u},{1 + (u * 12 + k) % 40},click,{day}T{k:02d}:{u % 60:02d}:{u // 60:02d}Z"
        for u in range(1, users + 1)
        for k in range(12)
    ]


def use_pins(resources: dict, path: Path, **fields) -> None:
    """A new version of the pins file of the source the graph was built from. The graph was built
    from the synthetic source, so its source record moves to this file first (what the warehouse
    and folders would record had they been built from it); the catalog guards are under test."""
    resources["source"] = FileSource(pins_path=str(path), actions_path="unused/{date}.csv", **fields)
    with duckdb.connect(resources["duckdb"].database) as conn:
        conn.execute("DELETE FROM warehouse_source")
    for store in ("index_store", "serving_store"):
        (Path(resources[store].root) / STAMP).unlink(missing_ok=True)


# 1. a missing upstream partition
def test_a_day_whose_window_and_interests_were_never_materialized_is_not_published(graph_copy):
    resources, later = graph_copy.resources, DAY + timedelta(days=3)
    result = run(resources, ["pin_index", "serving_snapshot"], later)
    message = failure(result)
    assert f"serving_snapshot of {later} needs action_windows of {later}, which was never materialized" in message
    assert not (Path(resources["serving_store"].root) / later.isoformat()).exists()
    assert served_partition(resources) == DAY.isoformat()  # the service keeps serving the real day
    # the window of a day whose own raw_actions is missing fails too, naming the day to load
    message = failure(run(resources, ["action_windows"], later))
    missing = [(DAY + timedelta(days=d)).isoformat() for d in (1, 2, 3)]
    assert f"were never materialized ({', '.join(missing)})" in message
    assert f"materialize raw_actions for {missing[0]}...{missing[-1]} first" in message


# 2. a re-materialized catalog is never mixed with yesterday's clusters
def test_a_catalog_with_new_embeddings_is_not_paired_with_the_old_clusters(graph_copy, tmp_path):
    resources = graph_copy.resources
    rng = np.random.default_rng(0)

    def reembed(frame):  # the same ids, new embeddings
        frame["embedding"] = [e + 0.3 * rng.standard_normal(len(e)) for e in frame["embedding"]]
        return frame

    use_pins(resources, pins_file(graph_copy, tmp_path / "pins.parquet", change=reembed))
    assert run(resources, ["pins"], None).success
    message = failure(run(resources, ["serving_snapshot"]))
    assert "user_clusters of 2026-06-10 was built from another version of the catalog (pins)" in message
    assert "re-materialize user_clusters/user_medoids for 2026-06-10 first" in message
    published = json.loads((Path(resources["serving_store"].root) / DAY.isoformat() / "manifest.json").read_text())
    # the whole chain again: candidate_pool, the day's interests and index, then the snapshot
    assert run(
        resources,
        ["candidate_pool", "action_windows", "user_clusters", "user_medoids", "pin_index", "serving_snapshot"],
    ).success
    republished = json.loads((Path(resources["serving_store"].root) / DAY.isoformat() / "manifest.json").read_text())
    assert republished["lineage"]["pins"] != published["lineage"]["pins"]
    assert len({republished["lineage"][k] for k in ("pins",)}) == 1


def test_a_catalog_the_warehouse_already_holds_is_not_written_again(graph_copy, tmp_path, monkeypatch):
    """The daily job takes the catalog from the source every day; the same content is not
    rewritten (1 GiB at 1M pins), but a table changed behind the record, or a source that
    changed, is."""
    from pinnersage_dagster.assets import candidates

    resources, writes = graph_copy.resources, []
    monkeypatch.setattr(candidates, "write_pins", lambda *a: writes.append(1) or write_pins(*a))

    def catalog_run() -> dict:
        result = run(resources, ["pins"], None)
        assert result.success
        return result.asset_materializations_for_node("pins")[0].metadata

    def stored() -> tuple:
        with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
            return conn.execute(
                "SELECT count(*), sum(quality), sum(list_sum(embedding::FLOAT[])) FROM pins"
            ).fetchall()[0]

    content = stored()
    first = catalog_run()  # the synthetic source the graph was built from, unchanged
    assert not first["catalog_rewritten"].value and not writes and stored() == content
    with duckdb.connect(resources["duckdb"].database) as conn:  # an edit behind the record
        conn.execute("UPDATE pins SET quality = 0.5 WHERE pin_id = (SELECT min(pin_id) FROM pins)")
    second = catalog_run()
    assert second["catalog_rewritten"].value and len(writes) == 1 and stored() == content
    assert second["catalog_version"].value == first["catalog_version"].value  # the source's content again

    def reembed(frame):  # one pin's embedding changes in the source
        frame.at[0, "embedding"] = frame.at[0, "embedding"][::-1]
        return frame

    use_pins(resources, pins_file(graph_copy, tmp_path / "pins.parquet", change=reembed))
    third = catalog_run()
    assert third["catalog_rewritten"].value and len(writes) == 2
    assert third["catalog_version"].value != first["catalog_version"].value
    assert not catalog_run()["catalog_rewritten"].value and len(writes) == 2  # kept the day after


# 3. a stale pool and index are never served
def test_a_pool_and_index_older_than_the_catalog_are_refused(graph_copy, tmp_path):
    resources = graph_copy.resources

    def swap_twenty(frame):  # 20 pins leave, 20 new ones arrive
        new = frame.head(20).copy()
        new["pin_id"] = new["pin_id"] + 10_000_000
        return pd.concat([frame.iloc[20:], new], ignore_index=True)

    use_pins(resources, pins_file(graph_copy, tmp_path / "pins.parquet", change=swap_twenty))
    assert run(resources, ["pins"], None).success
    result = run(resources, ["action_windows", "user_clusters", "user_medoids", "pin_index", "serving_snapshot"])
    message = failure(result)
    assert "candidate_pool was built from another version of the catalog (pins)" in message
    assert "re-materialize candidate_pool first" in message
    assert not any(
        m.asset_key == dg.AssetKey("serving_snapshot")
        for m in (e.materialization for e in result.get_asset_materialization_events())
    )
    # the index check fails on the index of the old pool as well
    with graph_copy.connect(read_only=True) as conn:
        from pinnersage_dagster.checks import evaluate_pin_index_matches_candidate_pool

        ok, meta = evaluate_pin_index_matches_candidate_pool(
            conn, DAY, Path(resources["index_store"].root) / DAY.isoformat()
        )
    assert not ok and "candidate_pool was built from another version of the catalog" in meta["built_from"]


def test_a_snapshot_whose_parts_disagree_on_the_dimension_is_refused(tmp_path):
    publish_day(tmp_path, "2026-05-01")
    partition = tmp_path / "serving" / "2026-05-01"
    manifest = json.loads((partition / "manifest.json").read_text())
    build = partition / "builds" / manifest["build_id"]
    ids = np.load(build / "index_pin_ids.npy")
    small = build_index(
        np.random.default_rng(1).standard_normal((len(ids), 8)).astype(np.float32), M=8, ef_construction=50, ef=50
    )
    (build / "index.bin").unlink()  # a hard link: never write through it
    small.save_index(str(build / "index.bin"))
    manifest["index"]["dimension"] = 8
    manifest["index"]["files"]["index.bin"] = manifest["files"]["index.bin"] = sha256(build / "index.bin")
    (partition / "manifest.json").write_text(json.dumps(manifest))  # a forged, well-signed snapshot
    with pytest.raises(ArtifactIntegrityError, match="disagree on the embedding dimension"):
        load_snapshot(partition)


# 4. only real days count
def test_a_stray_copy_of_a_snapshot_is_never_served(graph_copy):
    root = Path(graph_copy.resources["serving_store"].root)
    shutil.copytree(root / DAY.isoformat(), root / "backup")  # an operator's copy
    shutil.copytree(root / DAY.isoformat(), root / "2099-01-01")  # a day not yet come
    manager = SnapshotManager(root)
    assert manager.refresh() and manager.current.partition == DAY.isoformat()
    assert not manager.refresh() and not manager.refresh()  # not reloaded on every poll


def test_a_folder_named_like_a_future_day_never_makes_retention_remove_real_days(tmp_path):
    for back in range(5):
        day = tmp_path / (DAY - timedelta(days=back)).isoformat()
        day.mkdir()
        (day / "manifest.json").write_text("{}")
    (tmp_path / "2027-06-01").mkdir()  # empty, and after today
    (tmp_path / "backup").mkdir()
    assert prune_artifacts(tmp_path, keep_days=7, protect=set()) == []
    assert prune_artifacts(tmp_path, keep_days=2, protect=set()) == [
        (DAY - timedelta(days=b)).isoformat() for b in (4, 3, 2)
    ]
    assert (tmp_path / "2027-06-01").is_dir() and (tmp_path / "backup").is_dir()


# 5. implausible inputs are refused before anything is replaced
def test_a_truncated_pins_file_does_not_replace_the_catalog(graph_copy, tmp_path):
    resources = graph_copy.resources
    with graph_copy.connect(read_only=True) as conn:
        before = conn.execute("SELECT count(*) FROM pins").fetchall()[0][0]
    use_pins(resources, pins_file(graph_copy, tmp_path / "ten.parquet", change=lambda f: f.head(10)))
    message = failure(run(resources, ["pins"], None))
    assert f"the new catalog has 10 pins, 100% fewer than the current {before}" in message
    assert "Nothing was replaced" in message and "accept_implausible_inputs" in message
    with graph_copy.connect(read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM pins").fetchall()[0][0] == before
    accepting(resources)
    result = run(resources, ["pins"], None)
    assert result.success
    assert "100% fewer" in materializations(result, "pins")[0].metadata["accepted_implausible"].value


def test_an_all_invalid_pins_file_is_refused_and_an_empty_catalog_fails_clearly(graph_copy, tmp_path):
    resources = graph_copy.resources

    def wrong_dimension(frame):
        frame["embedding"] = [e[:5] for e in frame["embedding"]]
        return frame.head(50)

    path = pins_file(graph_copy, tmp_path / "bad.parquet", change=wrong_dimension)
    use_pins(resources, path, embedding_dim=256)
    message = failure(run(resources, ["pins"], None))
    assert "the new catalog would be empty: 0 valid pins of 50 rows read (wrong_dimension 50)" in message
    accepting(resources)
    assert run(resources, ["pins"], None).success
    assert "the catalog (pins) is empty" in failure(run(resources, ["candidate_pool"], None))


@pytest.fixture
def day_files(tmp_path):
    """Per-day action files of three days with the graph's synthetic pins."""
    from ..support import World

    return World(tmp_path)


def test_a_day_file_holding_another_days_rows_is_refused(day_files):
    world, previous = day_files, DAY_FILES_DAY - timedelta(days=1)
    assert world.run(["pins"], partition=None).success
    assert world.run(["raw_actions"], partition=previous).success
    shutil.copy(world.root / "actions" / f"{previous}.csv", world.root / "actions" / f"{DAY_FILES_DAY}.csv")
    message = failure(world.run(["raw_actions"], raise_on_error=False))
    assert f"of its 48 rows have a ts outside {DAY_FILES_DAY}: it holds another day's actions" in message
    assert world.query("SELECT count(*) FROM raw_actions WHERE partition_date = ?", [DAY_FILES_DAY]) == [(0,)]


def test_a_day_far_below_the_days_before_it_is_refused(day_files):
    world = day_files
    assert world.run(["pins"], partition=None).success
    for back in (2, 1):  # two ordinary days of 1,200 actions
        day = DAY_FILES_DAY - timedelta(days=back)
        world.write_actions(day, busy_day(day, users=100))
        assert world.run(["raw_actions"], partition=day).success
    world.write_actions(DAY_FILES_DAY, busy_day(DAY_FILES_DAY, users=10))  # most of the day is missing
    message = failure(world.run(["raw_actions"], raise_on_error=False))
    assert f"{DAY_FILES_DAY} has too few actions 120 < 20% of the median 1200 of the 2 days before" in message
    assert "users 10 < 20% of the median 100" in message
    assert world.query("SELECT count(*) FROM raw_actions WHERE partition_date = ?", [DAY_FILES_DAY]) == [(0,)]
    accepting(world.resources)
    assert world.run(["raw_actions"]).success


DAY_FILES_DAY = pd.Timestamp("2026-03-03").date()


# 6. row-level faults stay row-level
def test_a_valid_pin_after_an_invalid_row_with_its_id_is_kept(day_files):
    from ..support import GOOD_PINS, pin_frame

    world = day_files
    frame = pin_frame()
    bad = frame.iloc[[0]].assign(embedding=[[1.0] * 3])  # pin 1, wrong dimension, before the good pin 1
    path = world.root / "pins_dup.parquet"
    pd.concat([bad, frame], ignore_index=True).to_parquet(path)
    world.use(pins=path)
    assert world.run(["pins"], partition=None).success
    assert world.query("SELECT reason, pin_id FROM pins_quarantine") == [("wrong_dimension", "1")]
    assert world.query("SELECT count(*) FROM pins") == [(GOOD_PINS,)]


def test_a_malformed_csv_line_is_quarantined_with_its_line_and_the_rest_is_read(day_files):
    from ..support import action_lines

    world = day_files
    assert world.run(["pins"], partition=None).success
    lines = action_lines()
    lines.insert(1, lines[1] + ",an extra field")  # near the top, where the CSV sniffer looks
    world.write_actions(DAY_FILES_DAY, lines)
    for back in (2, 1):
        assert world.run(["raw_actions"], partition=DAY_FILES_DAY - timedelta(days=back)).success
    result = world.run(["raw_actions"])
    assert result.success
    rows = world.query(
        "SELECT reason, row_number, detail FROM raw_actions_quarantine WHERE partition_date = ?", [DAY_FILES_DAY]
    )
    assert [(r[0], r[1]) for r in rows] == [("malformed_csv_line", 2)]
    assert "TOO MANY COLUMNS" in rows[0][2] and "line 3" in rows[0][2] and "an extra field" in rows[0][2]
    assert world.query("SELECT count(*) FROM raw_actions WHERE partition_date = ?", [DAY_FILES_DAY]) == [(48,)]
    # the rows after it keep their own row numbers
    world.write_actions(DAY_FILES_DAY, [*lines, "7,99999,click,2026-03-03T10:00:00Z"])
    assert world.run(["raw_actions"]).success
    unknown = world.query("SELECT row_number FROM raw_actions_quarantine WHERE reason = 'unknown_pin_id'")
    assert unknown == [(len(lines) + 1,)]


def test_one_broken_line_deep_in_a_one_file_log_fails_no_day(day_files):
    from ..support import action_lines

    world = day_files
    assert world.run(["pins"], partition=None).success
    lines = [line for back in (2, 1, 0) for line in action_lines(day=DAY_FILES_DAY - timedelta(days=back))]
    lines.insert(100, '7,"3,click,2026-03-02T10:00:00Z,x,y')
    log = world.root / "log.csv"
    log.write_text("\n".join(["user_id,pin_id,action,ts", *lines]) + "\n")
    world.use(actions=str(log))
    for back in (2, 1, 0):
        result = world.run(["raw_actions"], partition=DAY_FILES_DAY - timedelta(days=back))
        assert result.success
        assert materializations(result, "raw_actions")[0].metadata["dagster/row_count"].value == 48


def test_pin_quarantine_rows_keep_their_raw_values_and_their_one_file(day_files):
    from ..support import pin_frame

    world = day_files
    first, second = pin_frame(20), pin_frame(40).iloc[20:]
    second = second.assign(quality=[0.5] * 19 + [7.0])  # the last row's quality is out of range
    first.to_parquet(world.root / "pins_a.parquet")
    second.to_parquet(world.root / "pins_b.parquet")
    world.use(pins=world.root / "pins_*.parquet")
    world.resources["source"] = world.resources["source"].model_copy(
        update={"pins_path": str(world.root / "pins_*.parquet")}
    )
    assert world.run(["pins"], partition=None).success
    ((source, row, reason, pin, quality, created),) = world.query(
        "SELECT source, row_number, reason, pin_id, quality, created_at FROM pins_quarantine"
    )
    assert source == str(world.root / "pins_b.parquet") and row == 20 and reason == "invalid_quality"
    assert pin == "40" and quality == "7.0" and created.startswith("2026-01-01")


def test_an_action_before_its_pins_creation_is_quarantined(day_files):
    from ..support import action_lines, pin_frame

    world = day_files
    frame = pin_frame(41)
    frame.loc[frame["pin_id"] == 41, "created_at"] = pd.Timestamp("2026-03-03 12:00", tz="UTC")
    frame.to_parquet(world.pins_path)
    assert world.run(["pins"], partition=None).success
    world.write_actions(
        DAY_FILES_DAY, [*action_lines(), "7,41,click,2026-03-03T10:00:00Z", "7,41,repin,2026-03-03T13:00:00Z"]
    )
    for back in (2, 1):
        assert world.run(["raw_actions"], partition=DAY_FILES_DAY - timedelta(days=back)).success
    result = world.run(["raw_actions"])
    assert (
        materializations(result, "raw_actions")[0].metadata["quarantine_reasons"].value.get("pin_created_after_action")
        == 1
    )
    assert world.query("SELECT ts FROM raw_actions_quarantine WHERE reason = 'pin_created_after_action'") == [
        ("2026-03-03T10:00:00Z",)
    ]


# 7. one source per warehouse and per folder
def test_a_warehouse_of_another_source_is_refused_before_anything_is_written(graph_copy, day_files):
    from ..support import GOOD_PINS

    world = day_files  # your own files, in a fresh warehouse
    assert world.run(["pins"], partition=None).success
    world.resources["source"] = graph_copy.resources["source"]  # the synthetic world, same warehouse
    for selection, partition in ((["pins"], None), (["raw_actions"], DAY_FILES_DAY)):
        message = failure(world.run(selection, partition=partition, raise_on_error=False))
        assert f"{world.resources['duckdb'].database} was built from files (" in message
        assert "not from this source, synthetic (seed 5, 80 users, 3000 pins, clean)" in message
        assert "`pinnersage clean`" in message and "PINNERSAGE_DATA_ROOT" in message
    assert world.query("SELECT count(*) FROM pins") == [(GOOD_PINS,)]
    assert world.query("SELECT count(*) FROM raw_actions") == [(0,)]


def test_a_folder_holding_another_sources_artifacts_is_not_published_into(graph_copy, tmp_path):
    resources = graph_copy.resources
    other = FileSource(pins_path="theirs.parquet", actions_path="theirs.csv").identity()
    serving = Path(resources["serving_store"].root)
    before = sorted(p.name for p in serving.iterdir())
    (serving / STAMP).write_text(json.dumps(other.to_json()))
    message = failure(run(resources, ["serving_snapshot"]))
    assert f"{serving} was built from files (theirs.csv" in message
    assert sorted(p.name for p in serving.iterdir()) == before
    # the service's event log of another source is never ingested as this one's
    events = Path(resources["event_log"].root)
    events.mkdir(exist_ok=True)
    (events / STAMP).write_text(json.dumps(other.to_json()))
    assert f"{events} was built from files (theirs.csv" in failure(run(resources, ["raw_actions"]))


BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


@pytest.mark.slow
def test_a_backfill_launched_as_the_ui_does_with_a_day_missing_publishes_nothing_wrong(tmp_path):
    """The UI's backfill (GraphQL launchPartitionBackfill on a real webserver, runs made by a real
    daemon) of the day-level assets over three days, with raw_actions of the middle day missing."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request
    from datetime import datetime

    from pinnersage_dagster.resources import build_resources

    from ..support import deployment_env, free_port

    repo = Path(__file__).resolve().parents[2]
    env = {
        **deployment_env(tmp_path),
        "PINNERSAGE_SYNTHETIC_SEED": "5",
        "PINNERSAGE_SYNTHETIC_PRESET": "clean",
        "PINNERSAGE_EVENTS_ROOT": str(tmp_path / "events"),
        "PINNERSAGE_EXCHANGE_ROOT": str(tmp_path / "exchange"),
    }
    (tmp_path / "dagster_home").mkdir()
    shutil.copy(repo / "deploy" / "dagster.yaml", tmp_path / "dagster_home" / "dagster.yaml")
    missing = datetime.now(UTC).date() - timedelta(days=3)
    days = [missing - timedelta(days=1), missing, missing + timedelta(days=1)]
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        resources = build_resources()
        assert dg.materialize(all_assets, selection=["pins", "candidate_pool"], resources=resources).success
        for day in [missing - timedelta(days=3), missing - timedelta(days=2), days[0], days[2]]:  # not the middle day
            assert dg.materialize(
                all_assets, selection=["raw_actions"], resources=resources, partition_key=day.isoformat()
            ).success
    finally:
        os.environ.clear()
        os.environ.update(saved)
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "dagster"), "instance", "migrate"], cwd=repo, env=env, check=True, capture_output=True
    )
    port = free_port()
    processes = [
        subprocess.Popen(
            [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "webserver.log", "w"),
            start_new_session=True,
        ),
        subprocess.Popen(
            [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
    ]
    try:
        # one range per asset, as the UI's asset backfill dialog sends it (partitionNames with an
        # assetSelection fails in some webserver processes of Dagster 1.13.27 on a non-subsettable
        # multi-asset: "Targeted subset must match ...", or a 500)
        span = {"range": {"start": days[0].isoformat(), "end": days[-1].isoformat()}}
        params = {
            "partitionsByAssets": [
                {"assetKey": {"path": [a]}, "partitions": span}
                for a in ("action_windows", "user_clusters", "user_medoids", "pin_index", "serving_snapshot")
            ]
        }
        body = json.dumps({"query": BACKFILL, "variables": {"params": params}}).encode()
        deadline = time.monotonic() + 180
        while True:  # the webserver takes a while to load the code location
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=body, headers={"content-type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    launched = json.loads(response.read())["data"]["launchPartitionBackfill"]
                break
            except OSError as exc:
                assert time.monotonic() < deadline, (exc, (tmp_path / "webserver.log").read_text()[-3000:])
                time.sleep(1)
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        probe = (
            "import dagster as dg, json; i = dg.DagsterInstance.get(); b = i.get_backfill(%r); "
            "runs = i.get_runs(dg.RunsFilter(tags={'dagster/backfill': %r})); "
            "print(json.dumps([b.status.value, [r.status.value for r in runs]]))"
        ) % ((launched["backfillId"],) * 2)
        deadline = time.monotonic() + 600
        while True:
            out = subprocess.run(
                [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False
            )
            status, statuses = json.loads(out.stdout)
            if status != "REQUESTED" and all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in statuses):
                break
            assert time.monotonic() < deadline, (status, statuses)
            time.sleep(3)
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    assert "FAILURE" in statuses  # the days whose window misses raw_actions of the middle day
    serving = tmp_path / "serving"
    published = sorted(p.name for p in serving.iterdir() if (p / "manifest.json").exists()) if serving.is_dir() else []
    assert missing.isoformat() not in published and days[2].isoformat() not in published
    import duckdb

    with duckdb.connect(env["PINNERSAGE_DUCKDB_PATH"], read_only=True) as conn:
        pins_version = conn.execute("SELECT version FROM lineage WHERE asset = 'pins'").fetchall()[0][0]
        for day in (missing, days[2]):
            assert conn.execute(
                "SELECT count(*) FROM lineage WHERE partition_date = ? AND asset IN "
                "('action_windows', 'user_medoids', 'serving_snapshot')",
                [day],
            ).fetchall() == [(0,)]
    print(f"backfill {status}: runs {statuses}; published {published}")
    for name in published:  # whatever was published is whole and from the current catalog
        snapshot = load_snapshot(serving / name)
        manifest = json.loads((serving / name / "manifest.json").read_text())
        assert manifest["lineage"]["pins"] == pins_version and len(snapshot.medoids) > 0
