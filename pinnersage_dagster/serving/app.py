"""The service as a process: build it from its settings, and run it behind uvicorn (one process,
or ``workers`` processes behind one port that share the event log)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from .api import create_app
from .event_log import EventLog
from .server import uvicorn_options
from .service import RecommenderService
from .settings import ServiceSettings
from .store import SnapshotManager

# how ``serve`` hands its settings to the worker processes uvicorn spawns (they import
# ``worker_app`` by name, so the environment is the only way in)
HANDOVER = "PINNERSAGE_SERVICE_SETTINGS"


def build_service(settings: ServiceSettings) -> RecommenderService:
    events = EventLog(settings.events_root) if settings.events_root else None
    return RecommenderService(SnapshotManager(Path(settings.serving_root)), settings, events)


def serve(
    settings: ServiceSettings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "warning",
    access_log: bool = False,
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
