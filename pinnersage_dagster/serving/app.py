"""The service as a process: build it from its settings, and run it behind uvicorn (one process,
or ``workers`` processes behind one port that share the event log)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from ..core.artifacts import read_manifest
from ..core.experiment import load_experiment
from .api import create_app
from .event_log import EventLog
from .impressions import ImpressionLog
from .server import uvicorn_options
from .service import RecommenderService
from .settings import ServiceSettings, ServingParams
from .store import SnapshotManager

# how ``serve`` hands its settings to the worker processes uvicorn spawns (they import
# ``worker_app`` by name, so the environment is the only way in)
HANDOVER = "PINNERSAGE_SERVICE_SETTINGS"


def build_service(settings: ServiceSettings) -> RecommenderService:
    events = EventLog(settings.events_root) if settings.events_root else None
    experiment = load_experiment(settings.experiment_path) if settings.experiment_path else None
    impressions = ImpressionLog(settings.impressions_root) if experiment else None
    return RecommenderService(SnapshotManager(Path(settings.serving_root)), settings, events, experiment, impressions)


def describe(settings: ServiceSettings, *, host: str, port: int, workers: int) -> str:
    """What ``serve`` is about to do, as one line: URL, snapshot, workers, policy."""
    published = SnapshotManager(Path(settings.serving_root)).published()
    if published:
        partition, build_id = published[0]
        manifest = read_manifest(Path(settings.serving_root) / partition)
        snapshot = f"snapshot {partition} (build {build_id})"
        policy = settings.policy or ServingParams.from_manifest(manifest.get("serving")).retrieval_policy
        origin = "--policy" if settings.policy else "the snapshot's"
    else:
        snapshot = f"no snapshot yet in {settings.serving_root} (503 until serving_snapshot publishes one)"
        policy, origin = settings.policy or "sampled", "--policy" if settings.policy else "default"
    events = f"events: {settings.events_root}" if settings.events_root else "events: this process only"
    line = (
        f"serving http://{host}:{port} · {snapshot} · {workers} worker{'s' if workers > 1 else ''} · "
        f"policy {policy} ({origin}) · {events}"
    )
    if settings.experiment_path:
        experiment = load_experiment(settings.experiment_path)
        arms = ", ".join(f"{arm} {weight}" for arm, weight in experiment.arms)
        line += f"\nexperiment {experiment.name}: {arms} · impressions: {settings.impressions_root}"
    return line


def serve(
    settings: ServiceSettings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Serve until stopped. Each worker loads and swaps snapshots on its own and follows the
    shared event log, so an event posted to any worker is seen by the next request on every worker."""
    options = {**uvicorn_options(settings.limits), "log_level": log_level, "access_log": access_log}
    if workers == 1:
        app = create_app(build_service(settings), refresh_seconds=settings.refresh_seconds)
        uvicorn.run(app, host=host, port=port, **options)
        return
    os.environ[HANDOVER] = settings.model_dump_json()
    uvicorn.run(
        "pinnersage_dagster.serving.app:worker_app", factory=True, host=host, port=port, workers=workers, **options
    )


def worker_app() -> FastAPI:
    """The app of one worker of ``serve(..., workers=N)``."""
    settings = ServiceSettings(**json.loads(os.environ[HANDOVER]))
    return create_app(build_service(settings), refresh_seconds=settings.refresh_seconds)
