"""The HTTP API (FastAPI): recommendations, interests, events, health, metrics.

Limits: request bodies over ``max_body_bytes`` (1 MiB) get 413; an events batch holds at most
1,000 events; ``budget`` is 1..retrieval_budget. Malformed input gets 422 with FastAPI's
field-by-field detail; before any snapshot is published every data endpoint answers 503.
Every response is counted by endpoint and status in ``/metrics``, unhandled errors (500)
included; what the server itself answers (slow clients, the concurrency limit:
``serving.server``) is counted there too.
"""

from __future__ import annotations

import os
import time
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from pydantic import BaseModel, BeforeValidator, Field, field_validator

from .event_log import DEDUP_BYTES_PER_EVENT, EventLogError
from .server import SERVER_ANSWERS
from .service import NoSnapshotError, RecommenderService

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_EVENTS = 1_000


def _json_integer(value: Any) -> Any:
    """A JSON Schema integer: 12 or 12.0, never "12" or true (a client bug to report, not to guess at)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


JsonInt64 = Annotated[int, BeforeValidator(_json_integer), Field(ge=INT64_MIN, le=INT64_MAX)]


class Event(BaseModel):
    user_id: JsonInt64
    pin_id: JsonInt64
    action: Literal["repin", "click"]
    ts: datetime = Field(description="ISO 8601; without a zone it is UTC")

    @field_validator("ts", mode="before")
    @classmethod
    def _ts_is_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("ts must be an ISO 8601 date-time string")
        return value


class EventBatch(BaseModel):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class SnapshotInfo(BaseModel):
    partition: str
    version: str
    index_build: str


class Item(BaseModel):
    pin_id: int
    score: float | None = Field(description="cosine to the medoid that produced it; null for cold start")
    cluster_id: int | None
    medoid_pin_id: int | None


class SampledMedoid(BaseModel):
    cluster_id: int
    medoid_pin_id: int
    importance: float
    online_updated: bool
    share: int = Field(description="neighbours fetched for this medoid")


class ExperimentArm(BaseModel):
    name: str
    arm: Literal["decay_average", "sampled", "proportional"]


class Recommendations(BaseModel):
    user_id: int
    source: Literal["pinnersage", "popular"] = Field(description="'popular' for users with no interests (cold start)")
    policy: Literal["sampled", "proportional", "decay_average", "popular"] = Field(
        description="how the budget was spent"
    )
    experiment: ExperimentArm | None = Field(
        description="the experiment and arm that decided the policy; null outside an experiment (or when the "
        "request named its own policy)"
    )
    impression_id: str = Field(description="this answer's id (in the impression log under an experiment)")
    snapshot: SnapshotInfo
    per_medoid: int = Field(description="the largest share: floor(budget / e) for 'sampled'")
    sampled: list[SampledMedoid] = Field(description="the medoids queried, each with its share of the budget")
    items: list[Item]


class InterestOut(BaseModel):
    cluster_id: int
    medoid_pin_id: int
    importance: float
    size: int
    kind: Literal["ward", "singleton", "online"]
    online_updated: bool
    online_actions: int


class Interests(BaseModel):
    user_id: int
    snapshot: SnapshotInfo
    interests: list[InterestOut]


class Rejection(BaseModel):
    index: int
    reason: Literal["unknown_pin_id", "covered_by_batch", "ts_in_future", "duplicate_event", "invalid_action"]


class OfflineOnly(BaseModel):
    index: int
    reason: Literal["older_than_kept_online_events"] = Field(
        description="older than every event kept online for the user (the most recent 20): durable, counted by the "
        "next batch, no effect on today's recommendations"
    )


class EventsResult(BaseModel):
    accepted: int = Field(description="durable (fsynced) events; each reaches the warehouse with the next daily run")
    rejected: list[Rejection]
    offline_only: list[OfflineOnly] = Field(description="accepted events that cannot change the online state")
    snapshot: SnapshotInfo


class Health(BaseModel):
    status: Literal["ok", "no_snapshot"]
    snapshot: SnapshotInfo | None
    refused_snapshots: list[dict[str, str]]
    cache_entries: int
    cache_hits: int
    cache_misses: int
    cache_hit_rate: float
    online_users: int
    pid: int = Field(description="the worker process that answered")
    online_users_evicted: int = Field(description="users whose online state was dropped past the LRU bound")
    experiment: dict[str, Any] | None = Field(
        None, description="the experiment being run (name, salt, arms, start, end) and its impression log's counts"
    )
    event_log: dict[str, Any] | None = Field(
        None,
        description="appended, duplicates, read (replayed or followed), unreadable_lines (torn or garbage, "
        "skipped), rejected_on_replay (by reason), covered_by_batch (read, or held online, before the served "
        "batch's end: the batch has them, or gets them from its next run), dedup_keys held and their bytes",
    )


class Problem(BaseModel):
    detail: Any


class FastJSONResponse(JSONResponse):
    """JSON via orjson: a 400-item answer encodes in ~0.02 ms instead of ~0.36 ms."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class _ServiceCollector:
    def __init__(self, service: RecommenderService) -> None:
        self.service = service

    def collect(self):
        answers = CounterMetricFamily(
            "pinnersage_server_answers",
            "Answers the server gave before the application (slow clients: 408; past the concurrency limit: 503)",
            labels=["status", "reason"],
        )
        for (status, reason), count in sorted(SERVER_ANSWERS.items()):
            answers.add_metric([status, reason], count)
        yield answers
        cache = self.service.cache
        hit_rate = GaugeMetricFamily(
            "pinnersage_medoid_cache_hit_rate", "Share of medoid ANN lookups served from cache"
        )
        hit_rate.add_metric([], cache.hit_rate)
        entries = GaugeMetricFamily("pinnersage_medoid_cache_entries", "Medoids held in the cache")
        entries.add_metric([], len(cache))
        online = GaugeMetricFamily("pinnersage_online_users", "Users with same-day events held online")
        online.add_metric([], self.service.events.users)
        info = InfoMetricFamily("pinnersage_snapshot", "The serving snapshot")
        snapshot = self.service.manager.current
        if snapshot is not None:
            info.add_metric([], {"partition": snapshot.partition, "version": snapshot.version})
        yield from (hit_rate, entries, online, info)


def create_app(
    service: RecommenderService, *, refresh_seconds: float | None = 30.0, max_body_bytes: int = 1 << 20
) -> FastAPI:
    registry = CollectorRegistry()
    latency = Histogram(
        "pinnersage_request_seconds",
        "Request latency by endpoint",
        ["endpoint"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    responses = Counter(
        "pinnersage_responses", "Responses by endpoint and status", ["endpoint", "status"], registry=registry
    )
    registry.register(_ServiceCollector(service))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.manager.refresh()
        if service.manager.current is not None:
            service.snapshot()  # replays the event log of the days the snapshot does not cover
        if refresh_seconds:
            service.manager.start(refresh_seconds)
        yield
        service.manager.stop()
        if service.impressions is not None:
            service.impressions.close()

    app = FastAPI(
        title="PinnerSage recommendations",
        version="1.0",
        description="Multi-interest recommendations (PinnerSage, KDD 2020) served from the newest daily snapshot, "
        "updated online with the day's events.",
        lifespan=lifespan,
    )

    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)
    app.add_middleware(ResponseMetrics, latency=latency, responses=responses)  # outermost: sees every answer

    def answer(payload: Any, status: int = 200) -> JSONResponse:
        return FastJSONResponse(payload, status_code=status)

    def unavailable(exc: Exception) -> JSONResponse:
        return answer({"detail": str(exc)}, 503)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    # handlers are async on purpose: each request is ~0.3 ms of CPU-bound work, cheaper inline on the
    # event loop than with a thread-pool hop; one process serves one core's worth of requests
    errors: dict[int | str, dict[str, Any]] = {
        503: {"model": Problem, "description": "No snapshot published yet"},
        422: {"model": Problem},
    }
    body_errors: dict[int | str, dict[str, Any]] = {
        **errors,
        400: {"model": Problem, "description": "The body is not JSON (or not UTF-8)"},
        411: {"model": Problem, "description": "No Content-Length: bodies are never streamed in unbounded"},
        413: {"model": Problem, "description": "Body over the size limit (1 MiB by default)"},
    }

    @app.get(
        "/v1/users/{user_id}/recommendations", response_model=Recommendations, responses=errors, name="recommendations"
    )
    async def recommendations(
        user_id: int = Path(ge=INT64_MIN, le=INT64_MAX),
        seed: int | None = Query(None, ge=0, le=2**63 - 1, description="fix the medoid sampling (tests, replays)"),
        exclude_seen: bool = Query(True, description="leave out pins the user already acted on"),
        budget: int | None = Query(
            None,
            ge=1,
            le=service.settings.max_budget,
            description="at most this many items; 'sampled' gives floor(budget / e) to each of the e medoids drawn, "
            "and a budget below e one each to the most important drawn",
        ),
        policy: Literal["sampled", "proportional", "decay_average"] | None = Query(
            None,
            description="'sampled' (the paper, the default): up to 3 medoids drawn by importance, floor(budget / e) "
            "neighbours each; 'proportional': every medoid, a share of the budget proportional to its importance; "
            "'decay_average': the paper's control, one decay-weighted average embedding. Under an experiment, naming "
            "a policy takes the request out of it",
        ),
    ):
        """Spend the budget across the user's medoids (by ``policy``), fetch their neighbours, merge."""
        try:
            body = service.recommend_json(user_id, seed=seed, exclude_seen=exclude_seen, budget=budget, policy=policy)
            return Response(body, media_type="application/json")
        except NoSnapshotError as exc:
            return unavailable(exc)

    @app.get("/v1/users/{user_id}/interests", response_model=Interests, responses=errors, name="interests")
    async def interests(user_id: int = Path(ge=INT64_MIN, le=INT64_MAX)):
        """The user's clusters: medoid pin, importance now, size, and whether today's events updated it."""
        try:
            return answer(service.interests(user_id))
        except NoSnapshotError as exc:
            return unavailable(exc)

    # a plain def: FastAPI runs it in a worker thread, so the log's fsync never stalls the event loop
    @app.post(
        "/v1/events",
        response_model=EventsResult,
        responses={
            **body_errors,
            503: {
                "model": Problem,
                "description": "No snapshot yet, or the event log cannot be written: "
                "nothing of the request was accepted",
            },
        },
        name="events",
    )
    def post_events(batch: EventBatch):
        """Same-day actions. Each is accepted or rejected with a reason; accepted ones are on disk
        (fsynced) before the answer, count at once on every worker (unless listed in
        ``offline_only``), and reach the warehouse with the next daily run."""
        try:
            return answer(service.post_events([e.model_dump() for e in batch.events]))
        except (NoSnapshotError, EventLogError) as exc:
            return unavailable(exc)

    @app.get("/health", response_model=Health, name="health")
    def health():
        snapshot = service.manager.current
        return {
            "status": "ok" if snapshot else "no_snapshot",
            "snapshot": {
                "partition": snapshot.partition,
                "version": snapshot.version,
                "index_build": snapshot.index_manifest.build_id,
            }
            if snapshot
            else None,
            "refused_snapshots": [vars(r) for r in service.manager.refusals.values()],
            "cache_entries": len(service.cache),
            "cache_hits": service.cache.hits,
            "cache_misses": service.cache.misses,
            "cache_hit_rate": service.cache.hit_rate,
            "online_users": service.events.users,
            "online_users_evicted": service.events.evicted_users,
            "pid": os.getpid(),
            "experiment": None
            if service.experiment is None
            else {
                **service.experiment.to_json(),
                "impressions": None if service.impressions is None else vars(service.impressions.stats),
            },
            "event_log": None
            if service.event_log is None
            else {
                "root": str(service.event_log.root),
                "appended": service.event_log.stats.appended,
                "duplicates": service.event_log.stats.duplicates,
                "read": service.event_log.stats.read,
                "unreadable_lines": service.event_log.stats.unreadable_lines,
                "rejected_on_replay": dict(service.replay_rejected),
                "covered_by_batch": service.covered_by_batch,
                "dedup_keys": service.event_log.dedup_keys,
                "dedup_bytes_estimate": service.event_log.dedup_keys * DEDUP_BYTES_PER_EVENT,
            },
        }

    @app.get("/metrics", response_class=PlainTextResponse, name="metrics")
    def metrics():
        """Prometheus text format: latency histograms, responses, cache hit rate, snapshot version."""
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return app


class ResponseMetrics:
    """Count every response by endpoint (the route's name) and status, and time it, whatever
    produced it: a handler, a validation error, a 413, or an unhandled exception (500, counted
    here before Starlette's error middleware answers it). A client gone mid-request is 499."""

    def __init__(self, app, latency: Histogram, responses: Counter) -> None:
        self.app, self.latency, self.responses = app, latency, responses

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, disconnected = time.perf_counter(), None, False

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receiving():
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, receiving, sending)
        except Exception:
            status = status or (499 if disconnected else 500)
            raise
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "name", None) or "unmatched"
            self.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.responses.labels(endpoint, str(status or 499)).inc()


class BodyLimit:
    """Refuse request bodies over the limit (413) or of unknown length (411) before reading them.

    A plain ASGI middleware: it costs nothing on GET requests (no per-request task or copy)."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            problem = None
            if length is None:
                problem = (411, "Content-Length is required")
            elif not length.isdigit() or int(length) > self.max_body_bytes:
                problem = (413, f"request body over {self.max_body_bytes} bytes")
            if problem:
                await JSONResponse({"detail": problem[1]}, status_code=problem[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)
