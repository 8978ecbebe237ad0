"""Running the graph from the command line: a persistent Dagster instance, the history load and
the daily job for some days, as the schedule would."""

from __future__ import annotations

import os
import sys
import time
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

# the full run log goes to the instance (see it in the UI); the terminal shows warnings only
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def latest_partition() -> date:
    """The last complete UTC day: what the daily schedule materializes."""
    return datetime.now(UTC).date() - timedelta(days=1)


def first_partition() -> date:
    from ..partitions import daily_partitions

    return daily_partitions.start.date()


def dagster_instance():
    """The persistent Dagster instance: $DAGSTER_HOME, else the project's .dagster_home (make setup)."""
    import dagster as dg

    if not os.getenv("DAGSTER_HOME"):
        home = Path.cwd() / ".dagster_home"
        if not (home / "dagster.yaml").exists():
            sys.exit("DAGSTER_HOME is not set and ./.dagster_home does not exist: run `make setup` first")
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def run_demo(day: date, window_days: int, days: int) -> list:
    """The history of actions in one range run, then the daily job for ``days`` days up to
    ``day``; returns the last day's check evaluations."""
    import dagster as dg

    from ..assets import all_assets
    from ..definitions import defs

    warnings.filterwarnings("ignore")
    instance = dagster_instance()  # persistent, so the UI shows these runs
    first_job_day = day - timedelta(days=days - 1)
    # pin_embeddings of a day reads the window before it; nothing exists before the first partition
    first = max(first_job_day - timedelta(days=window_days), first_partition())
    started = time.perf_counter()
    print(f"[1/{days + 1}] actions of {first} .. {day} in one range run", flush=True)
    history = dg.materialize(
        all_assets,
        selection=dg.AssetSelection.assets("raw_actions"),
        resources=defs.resources,
        instance=instance,
        run_config=QUIET,
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": day.isoformat(),
        },
    )
    if not history.success:
        sys.exit("loading the history failed; see the run in the Dagster UI (make dev)")
    # a few days, so the UI's partition bars, check history and metadata plots have a story to tell
    checks: list = []
    for number, job_day in enumerate((first_job_day + timedelta(days=i) for i in range(days)), 2):
        print(f"[{number}/{days + 1}] pinnersage_daily_job for partition {job_day} (all assets and checks)", flush=True)
        result = defs.resolve_job_def("pinnersage_daily_job").execute_in_process(
            partition_key=job_day.isoformat(), instance=instance, run_config=QUIET, raise_on_error=False
        )
        checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        if not result.success:
            sys.exit(f"the daily job for {job_day} failed; see the run in the Dagster UI (make dev)")
    failed = [c.check_name for c in checks if not c.passed]
    print(
        f"done in {time.perf_counter() - started:.0f}s; checks of {day}: {len(checks) - len(failed)}/{len(checks)} passed"
        + (f", FAILED: {failed}" if failed else "")
    )
    return checks
