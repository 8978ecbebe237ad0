"""Nothing accepted is lost: the durable event log, its replay after a crash, the cross-worker
rules, and what a torn, garbled, future or unwritable log does."""

import errno
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pinnersage_dagster.serving.api import create_app
from pinnersage_dagster.serving.event_log import EventLog, iter_day
from pinnersage_dagster.serving.online import OnlineEvent
from pinnersage_dagster.serving.service import RecommenderService
from pinnersage_dagster.serving.store import SnapshotManager

from ..support import catalog, publish_day

DAY = "2026-05-01"
TODAY = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
FIXED = pd.Timestamp("2026-11-20 10:00")  # the same in every process


def events(n: int, user: int = 1, start: pd.Timestamp = TODAY - pd.Timedelta(hours=1)) -> list[OnlineEvent]:
    return [
        OnlineEvent(ts=start + pd.Timedelta(seconds=i), user_id=user, pin_id=1000 + i, action="click") for i in range(n)
    ]


def test_append_is_durable_deduplicated_and_followed_by_other_writers(tmp_path):
    first, second = EventLog(tmp_path), EventLog(tmp_path)
    batch = events(3)
    assert first.append(batch)[0] == [True, True, True]
    assert first.append(batch[:1])[0] == [False]  # the same content again
    # another worker: sees them on its next follow, and refuses to write them twice
    assert second.follow(since=batch[0].ts.date()) == batch
    assert second.append(batch[1:2])[0] == [False]
    lines = first.path(batch[0].ts.date()).read_bytes().splitlines()
    assert [json.loads(line)["pin_id"] for line in lines] == [1000, 1001, 1002]


def _post_same_events(root: str, barrier, out) -> None:
    barrier.wait()
    kept, _ = EventLog(root).append(events(200, start=FIXED))
    out.put(sum(kept))


def test_the_same_events_posted_to_two_workers_at_once_are_kept_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_post_same_events, args=(str(tmp_path), barrier, out)) for _ in range(2)]
    for w in workers:
        w.start()
    kept = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert sum(kept) == 200  # between them, each event acknowledged as new exactly once
    assert sum(1 for _, _, e in iter_day(EventLog(tmp_path).path(FIXED.date())) if e is not None) == 200


def logged_then_damaged(root: Path, damage: bytes) -> tuple[EventLog, list[OnlineEvent], Path]:
    """A log holding two good events, then ``damage`` appended by hand (or by a crash)."""
    log = EventLog(root)
    good = events(2)
    log.append(good)
    path = log.path(good[0].ts.date())
    with open(path, "ab") as f:
        f.write(damage)
    return log, good, path


def test_a_torn_last_record_is_sealed_skipped_and_counted(tmp_path):
    log, first, path = logged_then_damaged(tmp_path, b'{"user_id": 9, "pin_id": 10')  # a crash mid-write
    reader = EventLog(tmp_path)
    assert reader.follow(since=first[0].ts.date()) == first  # the partial line waits (it may be a write in progress)
    later = events(1, user=2)
    assert log.append(later)[0] == [True]  # sealed with a newline first: the torn bytes stay one line
    assert reader.follow(since=first[0].ts.date()) == later and reader.stats.unreadable_lines == 1
    assert [e for _, _, e in iter_day(path)] == [*first, None, *later]


def test_a_log_filled_with_garbage_by_hand_is_read_around(tmp_path):
    _, good, _ = logged_then_damaged(
        tmp_path, b'not json\n\x00\xff\xfe\n{"user_id": "7", "pin_id": 1, "action": "click", "ts": "x"}\n'
    )
    reader = EventLog(tmp_path)
    assert reader.follow(since=good[0].ts.date()) == good and reader.stats.unreadable_lines == 3


@pytest.fixture
def service(tmp_path) -> RecommenderService:
    publish_day(tmp_path, DAY)
    return RecommenderService(SnapshotManager(tmp_path / "serving"), event_log=EventLog(tmp_path / "events"))


def pin_of_topic(topic_id: int, k: int = 5) -> int:
    ids, _, topic = catalog()
    return int(ids[np.flatnonzero(topic == topic_id)][k])


def test_a_disk_full_write_is_a_503_and_nothing_is_kept(service, monkeypatch):
    with TestClient(create_app(service, refresh_seconds=None)) as client:

        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        body = {"events": [{"user_id": 2, "pin_id": pin_of_topic(3), "action": "repin", "ts": TODAY.isoformat()}]}
        response = client.post("/v1/events", json=body)
        assert response.status_code == 503 and "No space left" in response.json()["detail"]
        monkeypatch.undo()
        assert not any(i["online_updated"] for i in client.get("/v1/users/2/interests").json()["interests"])
        assert client.post("/v1/events", json=body).json()["accepted"] == 1  # the retry is not a duplicate


def test_an_event_log_of_a_future_day_is_not_replayed_early(service, tmp_path):
    future = EventLog(tmp_path / "events")
    ahead = TODAY + pd.Timedelta(days=3)
    future.root.mkdir(parents=True)
    future.path(ahead.date()).write_text(
        json.dumps({"user_id": 2, "pin_id": pin_of_topic(3), "action": "click", "ts": ahead.isoformat()}) + "\n"
    )
    service.manager.refresh()
    interests = service.interests(2)["interests"]
    assert not any(i["online_updated"] for i in interests)  # a day not yet come is not read


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(root: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "PINNERSAGE_SERVING_ROOT": str(root / "serving"),
        "PINNERSAGE_EVENTS_ROOT": str(root / "events"),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "pinnersage_dagster.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    return server
        except OSError:
            time.sleep(0.25)
    server.kill()
    raise RuntimeError(server.stderr.read().decode()[-2000:])


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_events_survive_a_sigkill_right_after_the_answer(tmp_path):
    publish_day(tmp_path, DAY)
    port = _free_port()
    server = _start(tmp_path, port)
    posted = [
        {
            "user_id": 2,
            "pin_id": pin_of_topic(3, k),
            "action": "repin",
            "ts": (TODAY - pd.Timedelta(minutes=k)).isoformat(),
        }
        for k in range(3)
    ] + [{"user_id": 1, "pin_id": pin_of_topic(2, 1), "action": "click", "ts": TODAY.isoformat()}]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=json.dumps({"events": posted}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        answer = json.loads(r.read())
    server.send_signal(signal.SIGKILL)  # right after the 2xx: no shutdown, no flush
    server.wait(timeout=30)
    assert answer["accepted"] == 4
    # what the answer promised is on disk; the restarted server replays it
    port = _free_port()
    server = _start(tmp_path, port)
    try:
        after = {u: _get(port, f"/v1/users/{u}/interests")["interests"] for u in (1, 2)}
        recs = _get(port, "/v1/users/2/recommendations?seed=3")
        health = _get(port, "/health")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert any(i["kind"] == "online" and i["online_actions"] == 3 for i in after[2])
    assert any(i["online_updated"] for i in after[1])
    assert pin_of_topic(3, 0) in {s["medoid_pin_id"] for s in recs["sampled"]} or len(recs["sampled"]) == 2
    assert health["event_log"]["read"] == 4 and health["event_log"]["unreadable_lines"] == 0
    # the same answers as a server that never crashed, fed the same events
    reference = RecommenderService(SnapshotManager(tmp_path / "serving"))
    reference.manager.refresh()
    reference.post_events(posted)
    # importance decays with the clock, so the two answers, a moment apart, agree to rounding
    for user in (1, 2):
        expected = reference.interests(user)["interests"]
        assert [{**i, "importance": pytest.approx(i["importance"], rel=1e-5)} for i in expected] == after[user]
    assert recs["items"] == reference.recommend(2, seed=3)["items"]


def test_raw_actions_ingests_the_service_event_log_of_its_day(tmp_path):
    import dagster as dg
    import duckdb

    from pinnersage_dagster.assets import all_assets
    from pinnersage_dagster.resources import EventLogStore, FileSource

    from ..support import make_resources, materializations

    day = date(2026, 3, 2)
    log = tmp_path / "log.csv"
    log.write_text("user_id,pin_id,action,ts\n1,10,click,2026-03-02T08:00:00Z\n2,11,repin,2026-03-02T09:00:00Z\n")
    served = EventLog(tmp_path / "events")
    served.append(
        [
            OnlineEvent(ts=pd.Timestamp("2026-03-02 08:00"), user_id=1, pin_id=10, action="click"),  # the source has it
            OnlineEvent(
                ts=pd.Timestamp("2026-03-02 20:00"), user_id=3, pin_id=12, action="click"
            ),  # only the service saw it
        ]
    )
    with open(served.path(day), "ab") as f:
        f.write(b'{"user_id": 4, "pin_')  # torn by a crash
    size = served.path(day).stat().st_size + 1  # ingestion seals the torn record with a newline
    resources = make_resources(tmp_path)
    resources["source"] = FileSource(actions_path=str(log))
    resources["event_log"] = EventLogStore(root=str(tmp_path / "events"))
    result = dg.materialize(all_assets, selection=["raw_actions"], resources=resources, partition_key=day.isoformat())
    meta = {k: v.value for k, v in materializations(result, "raw_actions")[0].metadata.items()}
    assert meta["rows_read_from_source"] == 2 and meta["rows_read_from_service_events"] == 3
    assert meta["rows_read"] == 5 == meta["dagster/row_count"] + meta["rows_quarantined"]
    assert meta["service_events_already_in_source"] == 1
    assert meta["quarantine_reasons"] == {"duplicate_event": 1, "unreadable_event_line": 1}
    with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
        assert conn.execute("SELECT user_id, pin_id FROM raw_actions ORDER BY ts").fetchall() == [
            (1, 10),
            (2, 11),
            (3, 12),
        ]
        ingested = conn.execute("SELECT file, start_byte, end_byte FROM event_log_ingestions").fetchall()
    assert ingested == [(served.path(day).name, 0, size)]
    # all of it is in the warehouse and it is past retention_days: now, and only now, it may go
    assert meta["event_logs_removed_by_retention"] == [served.path(day).name] and not served.path(day).exists()
    # off: the event log is not read
    resources["event_log"] = EventLogStore(root=str(tmp_path / "events"), ingest=False)
    result = dg.materialize(all_assets, selection=["raw_actions"], resources=resources, partition_key=day.isoformat())
    assert materializations(result, "raw_actions")[0].metadata["rows_read"].value == 2


@pytest.mark.slow
def test_two_workers_behind_one_port_share_every_accepted_event(tmp_path):
    publish_day(tmp_path, DAY)
    port = _free_port()
    env = {
        **os.environ,
        "PINNERSAGE_SERVING_ROOT": str(tmp_path / "serving"),
        "PINNERSAGE_EVENTS_ROOT": str(tmp_path / "events"),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "pinnersage_dagster.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        pids = set()
        # until both workers have answered: by time, not by tries, since the second worker may
        # still be loading the snapshot while the first answers hundreds of requests
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:
            try:
                pids.add(_get(port, "/health")["pid"])
            except OSError:
                pass
            time.sleep(0.02)
        assert len(pids) == 2, "two workers never answered"
        pin = pin_of_topic(3)
        body = json.dumps(
            {"events": [{"user_id": 2, "pin_id": pin, "action": "repin", "ts": TODAY.isoformat()}]}
        ).encode()
        for attempt in range(2):  # the same event twice: one worker or the other, it is kept once
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/events", data=body, headers={"content-type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as r:
                assert json.loads(r.read())["accepted"] == (1 if attempt == 0 else 0)
        answered_by = set()
        for _ in range(60):  # every request, whichever worker takes it, sees the event at once
            assert any(i["medoid_pin_id"] == pin for i in _get(port, "/v1/users/2/interests")["interests"])
            answered_by.add(_get(port, "/health")["pid"])
        assert answered_by == pids  # both workers took requests meanwhile
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_following_costs_one_stat_per_day_present_however_old_the_snapshot(tmp_path, monkeypatch):
    """A service serving a snapshot a year old (a stalled pipeline) still answers in constant time:
    the folder is listed when it changes, and only days that have a log are looked at."""
    from datetime import UTC, datetime, timedelta

    import pinnersage_dagster.serving.event_log as module

    today = datetime.now(UTC).date()
    log = EventLog(tmp_path)
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    log.append([OnlineEvent(ts=now, user_id=1, pin_id=2, action="click")])
    calls = []
    real_stat = module.os.stat
    monkeypatch.setattr(module.os, "stat", lambda path, *a, **k: calls.append(path) or real_stat(path, *a, **k))
    assert log.follow(since=today - timedelta(days=365)) == []  # its own append: already known
    assert len(calls) <= 2  # the folder, and today's file
    # a day file another worker creates later is followed at once (the folder's mtime changed)
    other = EventLog(tmp_path)
    yesterday = now - pd.Timedelta(days=1)
    other.append([OnlineEvent(ts=yesterday, user_id=3, pin_id=4, action="repin")])
    followed = log.follow(since=today - timedelta(days=365))
    assert [(e.user_id, e.pin_id) for e in followed] == [(3, 4)]
