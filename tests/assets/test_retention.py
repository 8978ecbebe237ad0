"""Retention removes old days, never the newest, a served snapshot, or an event log that is not
all in the warehouse yet."""

import os
import time
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.core.retention import (
    MARKER_FRESH_SECONDS,
    mark_in_use,
    marker_path,
    prune_artifacts,
    served_partitions,
)
from pinnersage_dagster.service_events import prune_event_logs
from pinnersage_dagster.warehouse import ensure_tables

from ..support import DAY, materializations

D = date(2026, 6, 20)


def make_days(root: Path, n: int) -> list[str]:
    names = [(D - timedelta(days=i)).isoformat() for i in range(n)]
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text("{}")
    (root / "pool_graph").mkdir()
    return names


def test_old_days_go_the_newest_and_protected_stay(tmp_path):
    names = make_days(tmp_path, 10)  # 2026-06-11 .. 2026-06-20
    removed = prune_artifacts(tmp_path, keep_days=7, protect={"2026-06-12"})
    assert removed == ["2026-06-11", "2026-06-13"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - set(removed) | {"pool_graph"})
    assert prune_artifacts(tmp_path, keep_days=1, protect=set()) == [n for n in sorted(names) if n not in removed][:-1]
    assert (tmp_path / "2026-06-20").is_dir() and (tmp_path / "pool_graph").is_dir()  # the newest; not a day


def test_a_served_snapshot_survives_until_its_service_is_gone(tmp_path):
    make_days(tmp_path, 10)
    mark_in_use(tmp_path, "2026-06-11")
    assert served_partitions(tmp_path) == {"2026-06-11"}
    assert "2026-06-11" not in prune_artifacts(tmp_path, keep_days=3, protect=served_partitions(tmp_path))
    stale = time.time() - MARKER_FRESH_SECONDS - 60  # the service died without clearing its marker
    os.utime(marker_path(tmp_path), (stale, stale))
    assert served_partitions(tmp_path) == set()
    assert prune_artifacts(tmp_path, keep_days=3, protect=served_partitions(tmp_path)) == ["2026-06-11"]


def test_an_event_log_goes_only_once_all_of_it_is_in_the_warehouse(tmp_path):
    import duckdb

    logs = {(D - timedelta(days=i)).isoformat() + ".jsonl": b'{"x": 1}\n' * (i + 1) for i in range(10)}
    for name, content in logs.items():
        (tmp_path / name).write_bytes(content)
    old = sorted(logs)[:3]  # 06-11 .. 06-13 are past a 7-day horizon from 06-20
    ingested = {old[0]: len(logs[old[0]]), old[1]: len(logs[old[1]]) - 9}  # old[1] grew after ingestion
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        ensure_tables(conn)
        for name, size in ingested.items():
            conn.execute("INSERT INTO event_log_ingestions VALUES (?, ?, 0, ?, false)", [D, name, size])
        removed = prune_event_logs(conn, tmp_path, keep_days=7, today=D, served=set())
        assert removed == [old[0]]  # old[1]: late events not yet ingested; old[2]: never ingested
        assert (tmp_path / old[1]).exists() and (tmp_path / old[2]).exists()
        # a running service that serves an older day may still append to the log of a later day
        conn.execute("UPDATE event_log_ingestions SET end_byte = ? WHERE file = ?", [len(logs[old[1]]), old[1]])
        assert prune_event_logs(conn, tmp_path, keep_days=7, today=D, served={old[0].removesuffix(".jsonl")}) == []
        assert prune_event_logs(conn, tmp_path, keep_days=7, today=D, served=set()) == [old[1]]
        retired = conn.execute("SELECT file FROM event_log_ingestions WHERE retired ORDER BY file").fetchall()
    assert retired == [(old[0],), (old[1],)]


def test_publishing_applies_retention_and_reports_disk(graph_copy):
    resources = graph_copy.resources
    resources["params"] = resources["params"].__class__(window_days=10, retention_days=1)
    stale = Path(resources["serving_store"].root) / (DAY - timedelta(days=5)).isoformat()
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text("{}")  # a real day: a folder named as one, with a manifest
    served = Path(resources["serving_store"].root) / (DAY - timedelta(days=6)).isoformat()
    served.mkdir(parents=True)
    (served / "manifest.json").write_text("{}")
    mark_in_use(Path(resources["serving_store"].root), served.name)
    result = dg.materialize(
        all_assets, selection=["pin_index", "serving_snapshot"], resources=resources, partition_key=DAY.isoformat()
    )
    meta = {k: v.value for k, v in materializations(result, "serving_snapshot")[0].metadata.items()}
    assert meta["retention_removed"] == [stale.name] and not stale.exists()
    assert served.exists() and meta["served_partitions"] == [served.name]
    assert meta["disk_mib_all_days"] > 0 and meta["days_on_disk"] == 2
    assert (Path(resources["index_store"].root) / DAY.isoformat()).is_dir()
