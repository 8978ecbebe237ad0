"""Accepted means kept: every acknowledged event reaches the warehouse exactly once, whatever day
it arrives, and no byte of the log, no slow client, can take the service down."""

import errno
import json
import socket
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import pinnersage_dagster.assets.actions as actions_module
from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.core.events import OnlineEvent, identity
from pinnersage_dagster.serving.api import create_app
from pinnersage_dagster.serving.event_log import DEDUP_BYTES_PER_EVENT, EventLog
from pinnersage_dagster.serving.online import BYTES_PER_ONLINE_USER, OnlineEvents
from pinnersage_dagster.serving.service import RecommenderService
from pinnersage_dagster.serving.store import SnapshotManager

from ..support import (
    DAY,
    catalog,
    free_port,
    get_json,
    get_text,
    materializations,
    publish_day,
    range_tags,
    start_server,
    stop_server,
)

USER = 999_001  # not a synthetic user: every row of this user comes from the event log
SERVED = "2026-05-01"  # the hand-made snapshot's day
NOW = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")


def known_pins(graph, n: int = 3) -> list[int]:
    with graph.connect(read_only=True) as conn:
        return [int(p) for (p,) in conn.execute("SELECT pin_id FROM pins ORDER BY pin_id LIMIT ?", [n]).fetchall()]


def materialize(resources: dict, selection: list[str], day, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(all_assets, selection=selection, resources=resources, partition_key=day.isoformat(), **kwargs)


def user_rows(graph, table: str = "raw_actions") -> list[tuple]:
    with graph.connect(read_only=True) as conn:
        return conn.execute(
            f"SELECT partition_date, pin_id, ts FROM {table} WHERE user_id = ? ORDER BY ALL", [USER]
        ).fetchall()


# 1. late events
def test_an_event_accepted_after_its_days_run_reaches_the_next_run_exactly_once(graph_copy):
    resources, pins = graph_copy.resources, known_pins(graph_copy)
    log = EventLog(resources["event_log"].root)
    on_time = OnlineEvent(ts=pd.Timestamp(DAY) + pd.Timedelta(hours=8), user_id=USER, pin_id=pins[0], action="repin")
    log.append([on_time])
    assert materialize(resources, ["raw_actions"], DAY).success
    # the service keeps accepting D's events until snapshot D is served: this one comes after D's run
    late = OnlineEvent(
        ts=pd.Timestamp(DAY) + pd.Timedelta(hours=23, minutes=30), user_id=USER, pin_id=pins[1], action="click"
    )
    assert log.append([late])[0] == [True]
    next_day, day_after = DAY + timedelta(days=1), DAY + timedelta(days=2)
    result = materialize(resources, ["raw_actions", "action_windows"], next_day)
    meta = {k: v.value for k, v in materializations(result, "raw_actions")[0].metadata.items()}
    assert meta["late_service_events"] == 1 and meta["event_log_lines_claimed"] == 1
    expected = [(DAY, pins[0], on_time.ts.to_pydatetime()), (next_day, pins[1], late.ts.to_pydatetime())]
    assert user_rows(graph_copy) == expected  # in the partition of the run that took it in, with its own ts
    assert materialize(resources, ["raw_actions", "action_windows"], day_after).success
    for day in (next_day, day_after):  # in every later window that covers its ts
        with graph_copy.connect(read_only=True) as conn:
            window = conn.execute(
                "SELECT pin_id FROM action_windows WHERE partition_date = ? AND user_id = ? ORDER BY ALL", [day, USER]
            ).fetchall()
        assert window == [(pins[0],), (pins[1],)]
    # re-running every day (a backfill) replaces them and keeps each event once
    rerun = dg.materialize(all_assets, selection=["raw_actions"], resources=resources, tags=range_tags(DAY, day_after))
    assert rerun.success and user_rows(graph_copy) == expected


# 2. what was ingested is what was read
def test_an_event_appended_between_the_read_and_the_record_is_not_lost(graph_copy, monkeypatch):
    resources, pins = graph_copy.resources, known_pins(graph_copy)
    log = EventLog(resources["event_log"].root)
    first = OnlineEvent(ts=pd.Timestamp(DAY) + pd.Timedelta(hours=1), user_id=USER, pin_id=pins[0], action="repin")
    racing = OnlineEvent(ts=pd.Timestamp(DAY) + pd.Timedelta(hours=2), user_id=USER, pin_id=pins[1], action="repin")
    log.append([first])
    original, appended = actions_module.validate_actions, []

    def validate_then_append(*args, **kwargs):  # the service appends after the run read the log
        if not appended:
            appended.append(EventLog(resources["event_log"].root).append([racing]))
        return original(*args, **kwargs)

    monkeypatch.setattr(actions_module, "validate_actions", validate_then_append)
    assert materialize(resources, ["raw_actions"], DAY).success
    monkeypatch.undo()
    path = log.path(DAY)
    # the day is past retention, but the log is not all in the warehouse: it stays
    assert path.exists() and [r[1] for r in user_rows(graph_copy)] == [pins[0]]
    with graph_copy.connect(read_only=True) as conn:
        claims = conn.execute(
            "SELECT start_byte, end_byte FROM event_log_ingestions WHERE file = ?", [path.name]
        ).fetchall()
    assert claims == [(0, len(path.read_bytes().splitlines()[0]) + 1)]  # exactly the bytes read: the first line
    result = materialize(resources, ["raw_actions"], DAY + timedelta(days=1))
    assert [r[1] for r in user_rows(graph_copy)] == [pins[0], pins[1]]
    removed = materializations(result, "raw_actions")[0].metadata["event_logs_removed_by_retention"].value
    assert removed == [path.name] and not path.exists()  # now all of it is in the warehouse


# 3. no byte of the log is fatal
BAD_LINES = [
    b'{"user_id": 2, "pin_id": 18446744073709551616, "action": "click", "ts": "%s"}',  # valid JSON, past int64
    b'{"user_id": -9223372036854775809, "pin_id": 1005, "action": "click", "ts": "%s"}',
    b'{"user_id": 2, "pin_id": 1005, "action": "click", "ts": "%s", "x": ' + b"[" * 100_000 + b"]",
    b'{"user_id": 2, "pin_id": 1005, "action": "like", "ts": "%s"}',
    b'{"user_id": 2, "pin_id": 1005, "action": "click", "ts": "99999-01-01"}',
    b'{"user_id": 2, "pin_id": 1005, "action": "click", "ts": ""}',
    b"\xff\xfe\x00",
]


def bad_log(root: Path, day: pd.Timestamp, good: list[dict]) -> Path:
    path = EventLog(root).path(day.date())
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = day.isoformat().encode()
    lines = [json.dumps(e).encode() for e in good] + [line.replace(b"%s", ts) for line in BAD_LINES]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_log_line_past_int64_never_stops_the_service(tmp_path, workers):
    publish_day(tmp_path, SERVED)
    ids, _, topic = catalog()
    good = {"user_id": 2, "pin_id": int(ids[np.flatnonzero(topic == 3)][5]), "action": "repin", "ts": NOW.isoformat()}
    path = bad_log(tmp_path / "events", NOW, [good])
    port = free_port()
    server = start_server(tmp_path, port, "--workers", str(workers), ready=workers)  # used to fail at startup
    try:
        for _ in range(20):  # every worker replayed the log and answers
            assert get_json(port, "/v1/users/2/recommendations")["source"] == "pinnersage"
            health = get_json(port, "/health")
            assert health["event_log"]["read"] == 1 and health["event_log"]["unreadable_lines"] == len(BAD_LINES)
        with open(path, "ab") as f:  # appended while running: followed on the next request
            f.write(BAD_LINES[0].replace(b"%s", NOW.isoformat().encode()) + b"\n")
        for _ in range(10):
            assert get_json(port, "/v1/users/2/interests")["interests"]
        assert server.poll() is None
    finally:
        stop_server(server)


def test_ingestion_quarantines_every_bad_line_with_its_file_and_line(graph_copy):
    resources, pins = graph_copy.resources, known_pins(graph_copy)
    day = pd.Timestamp(DAY) + pd.Timedelta(hours=5)
    good = {"user_id": USER, "pin_id": pins[0], "action": "click", "ts": day.isoformat()}
    path = bad_log(Path(resources["event_log"].root), day, [good])
    assert materialize(resources, ["raw_actions"], DAY).success  # used to fail with a bare OverflowError
    with graph_copy.connect(read_only=True) as conn:
        quarantined = conn.execute(
            "SELECT source, row_number, reason FROM raw_actions_quarantine WHERE partition_date = ? AND source = ? "
            "ORDER BY row_number",
            [DAY, str(path)],
        ).fetchall()
    assert quarantined == [(str(path), n, "unreadable_event_line") for n in range(2, 2 + len(BAD_LINES))]
    assert [r[1] for r in user_rows(graph_copy)] == [pins[0]]


# 4. dedup on the event's full identity
@pytest.fixture
def logged_service(tmp_path) -> RecommenderService:
    publish_day(tmp_path, SERVED)
    return RecommenderService(SnapshotManager(tmp_path / "serving"), event_log=EventLog(tmp_path / "events"))


def test_distinct_events_whose_python_hashes_collide_are_both_kept(logged_service):
    pin = int(catalog()[0][7])
    pairs = [(-1, -2), (5, 5 + 2**61 - 1)]  # hash(-1) == hash(-2); ints 2**61 - 1 apart hash alike
    assert all(hash(a) == hash(b) for a, b in pairs)
    with TestClient(create_app(logged_service, refresh_seconds=None)) as client:
        for a, b in pairs:
            for user in (a, b):
                body = {"events": [{"user_id": user, "pin_id": pin, "action": "click", "ts": NOW.isoformat()}]}
                assert client.post("/v1/events", json=body).json()["accepted"] == 1, user
            again = {"events": [{"user_id": b, "pin_id": pin, "action": "click", "ts": NOW.isoformat()}]}
            assert client.post("/v1/events", json=again).json()["rejected"] == [
                {"index": 0, "reason": "duplicate_event"}
            ]
    assert len(EventLog(logged_service.event_log.root).follow(since=NOW.date())) == 4


# 5. bounded memory
def test_dedup_keys_are_held_only_for_days_still_accepted(logged_service, tmp_path):
    log = EventLog(tmp_path / "other")
    days = [NOW - pd.Timedelta(days=2), NOW - pd.Timedelta(days=1), NOW]
    for d in days:
        log.append(
            [OnlineEvent(ts=d + pd.Timedelta(seconds=i), user_id=i, pin_id=1, action="click") for i in range(500)]
        )
    assert log.dedup_keys == 1500
    log.retire_before(days[1].date())
    assert log.dedup_keys == 1000
    assert len(log.follow(since=days[2].date())) == 0 and log.dedup_keys == 500
    # the service: a newer snapshot covering today frees today's keys and the online state it covers
    pins = catalog()[0]
    with TestClient(create_app(logged_service, refresh_seconds=None)) as client:
        body = {
            "events": [
                {"user_id": 2, "pin_id": int(pins[i]), "action": "click", "ts": NOW.isoformat()} for i in range(30)
            ]
        }
        assert client.post("/v1/events", json=body).json()["accepted"] == 30
        assert client.get("/health").json()["event_log"]["dedup_keys"] == 30
        publish_day(tmp_path, NOW.date().isoformat())  # covers today's events
        assert logged_service.manager.refresh()
        health = client.get("/health").json()
    assert health["event_log"]["dedup_keys"] == 0 and health["online_users"] == 0
    assert health["event_log"]["covered_by_batch"] == 20  # the user's 20 kept events, now in the batch


def test_the_stated_memory_bounds_hold():
    events = [
        OnlineEvent(ts=NOW + pd.Timedelta(microseconds=i), user_id=10**12 + i, pin_id=10**12 + 7 * i, action="repin")
        for i in range(20_000)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keys = {identity(e) for e in events}
    per_key = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
    online = OnlineEvents(keep=20, max_users=1_000)
    before = tracemalloc.get_traced_memory()[0]
    for user in range(1_000):
        for i in range(20):
            online.add(
                OnlineEvent(ts=NOW + pd.Timedelta(seconds=i), user_id=10**12 + user, pin_id=10**12 + i, action="click")
            )
    per_user = (tracemalloc.get_traced_memory()[0] - before) / 1_000
    tracemalloc.stop()
    assert per_key <= DEDUP_BYTES_PER_EVENT, per_key
    assert per_user <= BYTES_PER_ONLINE_USER, per_user
    bounded = OnlineEvents(keep=2, max_users=3)
    for user in range(5):
        bounded.add(OnlineEvent(ts=NOW, user_id=user, pin_id=1, action="click"))
    assert bounded.users == 3 and bounded.evicted_users == 2


# 6. honest answers
def test_an_event_older_than_the_kept_online_events_is_accepted_and_says_it_is_offline_only(logged_service):
    pins = catalog()[0]
    recent = [
        {
            "user_id": 2,
            "pin_id": int(pins[100 + i]),
            "action": "click",
            "ts": (NOW - pd.Timedelta(minutes=30) + pd.Timedelta(seconds=i)).isoformat(),
        }
        for i in range(20)
    ]
    older = {"user_id": 2, "pin_id": int(pins[200]), "action": "repin", "ts": (NOW - pd.Timedelta(hours=2)).isoformat()}
    with TestClient(create_app(logged_service, refresh_seconds=None)) as client:
        first = client.post("/v1/events", json={"events": recent}).json()
        assert first["accepted"] == 20 and first["offline_only"] == []
        before = client.get("/v1/users/2/interests").json()
        answer = client.post("/v1/events", json={"events": [older]}).json()
        assert answer["accepted"] == 1 and answer["rejected"] == []
        assert answer["offline_only"] == [{"index": 0, "reason": "older_than_kept_online_events"}]
        after = client.get("/v1/users/2/interests").json()
        # no online effect, as the answer says (importance decays to the wall clock of each call)
        assert _without_importance(after) == _without_importance(before)
        for a, b in zip(after["interests"], before["interests"]):
            assert a["importance"] == pytest.approx(b["importance"], rel=1e-4)
    lines = EventLog(logged_service.event_log.root).follow(since=NOW.date() - timedelta(days=1))
    assert any(e.pin_id == int(pins[200]) for e in lines)  # and durable: the batch will have it


def _without_importance(answer: dict) -> dict:
    return {**answer, "interests": [{k: v for k, v in i.items() if k != "importance"} for i in answer["interests"]]}


# 7. slow clients, and every response counted
def _open(port: int, payload: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if payload:
        s.sendall(payload)
    return s


def _answer(s: socket.socket) -> bytes:
    """What the server says before it closes the connection (b'' if it says nothing)."""
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


@pytest.mark.slow
def test_slow_clients_are_cut_off_and_cannot_hold_the_server(tmp_path):
    publish_day(tmp_path, SERVED)
    port = free_port()
    server = start_server(
        tmp_path,
        port,
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--keep-alive-timeout",
        "1",
        "--limit-concurrency",
        "40",
    )
    try:
        started = time.monotonic()
        partial_headers = _open(port, b"GET /health HTTP/1.1\r\nHost: x\r\n")
        short_body = _open(
            port,
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"events": [',
        )
        silent = _open(port, b"")
        assert _answer(partial_headers).startswith(b"HTTP/1.1 408")
        assert _answer(short_body).startswith(b"HTTP/1.1 408")
        assert _answer(silent) == b""  # closed after the keep-alive timeout
        assert time.monotonic() - started < 8
        # a flood of slow connections: past the limit they are refused at once, the rest cut off
        flood = [_open(port, b"GET /health HTTP/1.1\r\n") for _ in range(120)]
        time.sleep(0.3)
        try:
            with pytest.raises(OSError):  # over the limit: 503 (urllib raises HTTPError) or closed
                get_json(port, "/health", timeout=5)
        finally:
            answers = [_answer(s) for s in flood]
        refused = sum(a.startswith(b"HTTP/1.1 503") for a in answers)
        cut = sum(a.startswith(b"HTTP/1.1 408") for a in answers)
        assert refused >= 60 and refused + cut == len(flood), (refused, cut)
        assert get_json(port, "/health")["status"] == "ok"  # and it serves again
        metrics = get_text(port, "/metrics")
        assert 'pinnersage_server_answers_total{reason="header_timeout",status="408"}' in metrics
        assert 'pinnersage_server_answers_total{reason="over_connection_limit",status="503"}' in metrics
        assert server.poll() is None
    finally:
        stop_server(server)


def test_unhandled_errors_are_counted_as_500(logged_service, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(logged_service, "recommend_json", broken)
    with TestClient(create_app(logged_service, refresh_seconds=None), raise_server_exceptions=False) as client:
        assert client.get("/v1/users/1/recommendations").status_code == 500
        assert client.get("/v1/users/x/recommendations").status_code == 422
        metrics = client.get("/metrics").text
    assert 'pinnersage_responses_total{endpoint="recommendations",status="500"} 1.0' in metrics
    assert 'pinnersage_responses_total{endpoint="recommendations",status="422"} 1.0' in metrics


def test_a_disk_full_event_post_is_a_counted_503(logged_service, monkeypatch):
    import os

    with TestClient(create_app(logged_service, refresh_seconds=None)) as client:
        monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        body = {"events": [{"user_id": 2, "pin_id": int(catalog()[0][3]), "action": "repin", "ts": NOW.isoformat()}]}
        assert client.post("/v1/events", json=body).status_code == 503
        monkeypatch.undo()
        assert 'pinnersage_responses_total{endpoint="events",status="503"} 1.0' in client.get("/metrics").text


def test_a_warehouse_from_before_claims_is_migrated_without_losing_or_repeating_events(graph_copy):
    resources, pins = graph_copy.resources, known_pins(graph_copy)
    log = EventLog(resources["event_log"].root)
    events = [
        OnlineEvent(ts=pd.Timestamp(DAY) + pd.Timedelta(hours=h), user_id=USER, pin_id=pins[h], action="click")
        for h in range(2)
    ]
    log.append(events)
    path = log.path(DAY)
    ingested = path.stat().st_size
    with graph_copy.connect() as conn:  # what the previous release left: a size per (day, file), no copy
        conn.execute("DROP TABLE IF EXISTS event_log_ingestions")
        conn.execute("DROP TABLE IF EXISTS service_events")
        conn.execute(
            "CREATE TABLE event_log_ingestions (partition_date DATE NOT NULL, file VARCHAR NOT NULL, "
            "bytes BIGINT NOT NULL)"
        )
        conn.execute("INSERT INTO event_log_ingestions VALUES (?, ?, ?)", [DAY, path.name, ingested])
        conn.execute(
            "INSERT INTO raw_actions VALUES (?, ?, ?, 'click', ?)", [DAY, USER, pins[0], events[0].ts.to_pydatetime()]
        )
        conn.execute(
            "INSERT INTO raw_actions VALUES (?, ?, ?, 'click', ?)", [DAY, USER, pins[1], events[1].ts.to_pydatetime()]
        )
    later = OnlineEvent(ts=pd.Timestamp(DAY) + pd.Timedelta(hours=20), user_id=USER, pin_id=pins[2], action="repin")
    log.append([later])  # after the old run: a late event
    total = path.stat().st_size
    assert materialize(resources, ["raw_actions"], DAY + timedelta(days=1)).success
    assert [(r[0], r[1]) for r in user_rows(graph_copy)] == [
        (DAY, pins[0]),
        (DAY, pins[1]),
        (DAY + timedelta(days=1), pins[2]),
    ]
    assert materialize(resources, ["raw_actions"], DAY).success  # a re-run of the old day keeps its events
    assert [(r[0], r[1]) for r in user_rows(graph_copy)] == [
        (DAY, pins[0]),
        (DAY, pins[1]),
        (DAY + timedelta(days=1), pins[2]),
    ]
    with graph_copy.connect(read_only=True) as conn:
        claims = conn.execute(
            "SELECT partition_date, start_byte, end_byte FROM event_log_ingestions ORDER BY ALL"
        ).fetchall()
    assert claims == [(DAY, 0, ingested), (DAY + timedelta(days=1), ingested, total)]
    assert not path.exists()  # all of it in the warehouse, past retention
