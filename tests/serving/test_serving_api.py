"""Every endpoint, with good and bad input: 4xx with a message for bad requests, never a 500."""

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pinnersage_dagster.serving.api import create_app
from pinnersage_dagster.serving.service import RecommenderService
from pinnersage_dagster.serving.store import SnapshotManager

from ..support import catalog, publish_day

DAY = "2026-05-01"


@pytest.fixture
def client(tmp_path):
    publish_day(tmp_path, DAY)
    service = RecommenderService(SnapshotManager(tmp_path / "serving"))
    with TestClient(create_app(service, refresh_seconds=None), raise_server_exceptions=False) as client:
        yield client


def test_recommendations_and_interests(client):
    response = client.get("/v1/users/1/recommendations", params={"seed": 7})
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "pinnersage" and body["per_medoid"] == 200 and 0 < len(body["items"]) <= 400
    assert set(body["items"][0]) == {"pin_id", "score", "cluster_id", "medoid_pin_id"}
    assert client.get("/v1/users/1/recommendations", params={"seed": 7}).json()["items"] == body["items"]
    assert len(client.get("/v1/users/1/recommendations", params={"budget": 10}).json()["items"]) <= 10

    interests = client.get("/v1/users/1/interests").json()["interests"]
    assert [i["cluster_id"] for i in interests] == [0, 1] and interests[0]["importance"] > interests[1]["importance"]
    assert client.get("/v1/users/3/recommendations").json()["source"] == "popular"
    assert client.get("/v1/users/3/interests").json()["interests"] == []


def test_posting_an_event_changes_interests_and_recommendations(client):
    ids, _, topic = catalog()
    pin = int(ids[np.flatnonzero(topic == 3)][5])
    now = pd.Timestamp.now(tz="UTC")
    # a snapshot of 2026-05-01 covers events until 2026-05-02; "now" is after it
    response = client.post(
        "/v1/events", json={"events": [{"user_id": 2, "pin_id": pin, "action": "repin", "ts": now.isoformat()}]}
    )
    assert response.status_code == 200 and response.json()["accepted"] == 1
    interests = client.get("/v1/users/2/interests").json()["interests"]
    assert any(i["kind"] == "online" and i["medoid_pin_id"] == pin and i["online_updated"] for i in interests)
    sampled = client.get("/v1/users/2/recommendations").json()["sampled"]
    assert pin in {s["medoid_pin_id"] for s in sampled}


@pytest.mark.parametrize(
    "method, url, kwargs",
    [
        ("get", "/v1/users/abc/recommendations", {}),
        ("get", "/v1/users/99999999999999999999999/recommendations", {}),
        ("get", "/v1/users/1/recommendations", {"params": {"budget": 0}}),
        ("get", "/v1/users/1/recommendations", {"params": {"budget": 401}}),
        ("get", "/v1/users/1/recommendations", {"params": {"seed": -1}}),
        ("get", "/v1/users/1/recommendations", {"params": {"exclude_seen": "maybe"}}),
        ("post", "/v1/events", {"content": b"not json", "headers": {"content-type": "application/json"}}),
        ("post", "/v1/events", {"json": {}}),
        ("post", "/v1/events", {"json": {"events": []}}),
        (
            "post",
            "/v1/events",
            {"json": {"events": [{"user_id": 1, "pin_id": 1000, "action": "like", "ts": "2026-05-02"}]}},
        ),
        (
            "post",
            "/v1/events",
            {"json": {"events": [{"user_id": 1, "pin_id": 1000, "action": "click", "ts": "yesterday"}]}},
        ),
        (
            "post",
            "/v1/events",
            {"json": {"events": [{"user_id": None, "pin_id": 1000, "action": "click", "ts": "2026-05-02"}]}},
        ),
        ("post", "/v1/events", {"json": {"events": [{"user_id": 1, "action": "click", "ts": "2026-05-02"}]}}),
        (
            "post",
            "/v1/events",
            {"json": {"events": [{"user_id": 1, "pin_id": 1000, "action": "click", "ts": "2026-05-02"}] * 1001}},
        ),
        ("post", "/v1/events", {"json": [1, 2, 3]}),
        ("post", "/v1/events", {"json": {"events": [{"user_id": 1, "pin_id": 1000, "action": "click", "ts": 0}]}}),
    ],
)
def test_bad_requests_get_422_with_a_message(client, method, url, kwargs):
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail and all("msg" in d and isinstance(d["loc"], list) for d in detail)


def test_oversized_bodies_are_refused_before_parsing(client):
    events = [{"user_id": 1, "pin_id": 1000, "action": "click", "ts": "2026-05-02T00:00:00"}] * 20_000
    response = client.post(
        "/v1/events", content=json.dumps({"events": events}), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "bytes" in response.json()["detail"]


def test_a_body_of_unknown_length_is_refused_unread(client):
    def stream():
        yield b'{"events": ['
        yield b"0" * 4096

    response = client.post("/v1/events", content=stream(), headers={"content-type": "application/json"})
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]


@pytest.mark.parametrize("value", ["12", True, 1.5, None])
def test_ids_must_be_json_integers(client, value):
    event = {"user_id": value, "pin_id": 1000, "action": "click", "ts": "2026-05-02T00:00:00"}
    response = client.post("/v1/events", json={"events": [event]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "user_id"


def test_health_metrics_and_openapi(client):
    client.get("/v1/users/1/recommendations")
    client.get("/v1/users/1/recommendations")
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["snapshot"]["partition"] == DAY and health["cache_hit_rate"] > 0
    metrics = client.get("/metrics").text
    assert 'pinnersage_request_seconds_bucket{endpoint="recommendations"' in metrics
    assert "pinnersage_medoid_cache_hit_rate" in metrics and f'partition="{DAY}"' in metrics
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/v1/users/{user_id}/recommendations",
        "/v1/users/{user_id}/interests",
        "/v1/events",
        "/health",
        "/metrics",
    }
    schemas = spec["components"]["schemas"]
    assert {"Recommendations", "Interests", "EventBatch", "EventsResult", "Health", "Problem"} <= set(schemas)
    assert (
        "200" in spec["paths"]["/v1/events"]["post"]["responses"]
        and "413" in spec["paths"]["/v1/events"]["post"]["responses"]
    )


def test_no_snapshot_yet_is_a_503_not_a_500(tmp_path):
    service = RecommenderService(SnapshotManager(tmp_path / "nothing"))
    with TestClient(create_app(service, refresh_seconds=None), raise_server_exceptions=False) as client:
        assert client.get("/v1/users/1/recommendations").status_code == 503
        assert client.get("/v1/users/1/interests").status_code == 503
        ok = {"events": [{"user_id": 1, "pin_id": 1000, "action": "click", "ts": "2026-05-02"}]}
        assert client.post("/v1/events", json=ok).status_code == 503
        assert client.get("/health").json()["status"] == "no_snapshot"


def test_the_retrieval_policy_is_chosen_per_request(client):
    proportional = client.get("/v1/users/1/recommendations", params={"policy": "proportional"}).json()
    assert proportional["policy"] == "proportional" and [m["share"] for m in proportional["sampled"]] == [200, 200]
    assert client.get("/v1/users/1/recommendations").json()["policy"] == "sampled"  # the paper's, by default
    assert client.get("/v1/users/1/recommendations", params={"policy": "greedy"}).status_code == 422
