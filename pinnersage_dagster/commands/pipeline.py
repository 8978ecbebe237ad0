"""Running the graph from the command line: a persistent Dagster instance, the history load and
the daily job for some days, as the schedule would, one numbered step per run with its time."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from . import RunFailed, UserError


def latest_partition() -> date:
    """The last complete UTC day: what the daily schedule materializes."""
    return datetime.now(UTC).date() - timedelta(days=1)


def first_partition() -> date:
    from ..partitions import daily_partitions

    return daily_partitions.start.date()


def newest_source_day() -> date:
    """The newest day the deployment's source holds actions of (the synthetic world: yesterday)."""
    import pandas as pd

    from ..definitions import defs

    source = (defs.resources or {})["source"]
    newest = source.newest_day(pd.Timestamp.now(tz="UTC").tz_localize(None))
    if newest is None:
        raise UserError(f"the source holds no actions up to today ({source.identity().label})")
    return newest


def dagster_instance():
    """The persistent Dagster instance: $DAGSTER_HOME, else the project's .dagster_home (make setup)."""
    import dagster as dg

    if not os.getenv("DAGSTER_HOME"):
        home = Path.cwd() / ".dagster_home"
        if not (home / "dagster.yaml").exists():
            raise UserError("DAGSTER_HOME is not set and ./.dagster_home does not exist: run `make setup` first")
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


@dataclass
class Runner:
    """Runs numbered steps on the persistent instance (so the UI shows them), each printing its
    line, the messages its assets log, and its time; a failed step raises ``RunFailed``."""

    steps: int
    params: dict[str, Any] = field(default_factory=dict)  # overrides of the params resource
    done: int = 0

    def __post_init__(self) -> None:
        warnings.filterwarnings("ignore")
        self.instance = dagster_instance()

    def run_config(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        from ..loggers import PROGRESS
        from ..settings import settings

        config: dict[str, Any] = {**PROGRESS, **(extra or {})}
        if self.params:  # on top of the deployment's own overrides (PINNERSAGE_PARAMS)
            config["resources"] = {"params": {"config": {**settings().params, **self.params}}}
        return config

    def assets(
        self,
        label: str,
        assets: Sequence[str],
        *,
        partition_key: str | None = None,
        tags: dict[str, str] | None = None,
        ops: dict[str, Any] | None = None,
    ):
        """Materialize ``assets`` (names) in one run of the project's asset job."""
        import dagster as dg

        from ..definitions import defs

        job = defs.resolve_implicit_global_asset_job_def()
        return self._step(
            label,
            lambda: job.execute_in_process(
                asset_selection=[dg.AssetKey(a) for a in assets],
                partition_key=partition_key,
                tags=tags,
                run_config=self.run_config({"ops": ops} if ops else None),
                instance=self.instance,
                raise_on_error=False,
            ),
        )

    def job(self, label: str, name: str, partition_key: str):
        """One run of a job of the definitions (the daily job, as the schedule runs it)."""
        from ..definitions import defs

        job = defs.resolve_job_def(name)
        return self._step(
            label,
            lambda: job.execute_in_process(
                partition_key=partition_key, instance=self.instance, run_config=self.run_config(), raise_on_error=False
            ),
        )

    def _step(self, label: str, execute):
        self.done += 1
        print(f"[{self.done}/{self.steps}] {label}", flush=True)
        started = time.perf_counter()
        result = execute()
        if not result.success:
            raise failure_of(result, label)
        print(f"      done in {time.perf_counter() - started:.0f}s", flush=True)
        return result


def failure_of(result, label: str) -> RunFailed:
    """The first failed step of a run: its key, its error's message and the full trace."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            cause = error
            while cause is not None and cause.cause is not None and cause.cls_name in _WRAPPERS:
                cause = cause.cause
            return RunFailed(
                step=event.step_key or label,
                message=_one_line((cause or error).message),
                run_id=result.run_id,
                trace=error.to_string(),
            )
    return RunFailed(step=label, message="the run failed", run_id=result.run_id, trace="")


# Dagster's wrappers around the error a step raised: the user wants the error itself
_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError", "DagsterResourceFunctionError"}


def _one_line(message: str) -> str:
    """The error's first line without its class's dotted name ('pkg.module.Error: ')."""
    text = " ".join(message.strip().split("\n")[0].split())
    head, colon, rest = text.partition(": ")
    if colon and " " not in head and head.split(".")[-1][:1].isupper():
        text = rest
    return text


def run_demo(day: date, window_days: int | None, days: int) -> list:
    """The history of actions in one range run, then the daily job for ``days`` days up to
    ``day``; returns the last day's check evaluations. ``window_days``: the deployment's
    parameter unless given."""
    from ..config import PinnerSageParams
    from ..settings import settings

    given_window = window_days is not None
    window_days = window_days or PinnerSageParams(**settings().params).window_days
    first_job_day = day - timedelta(days=days - 1)
    if first_job_day < first_partition():
        raise UserError(
            f"--days {days} up to {day} starts at {first_job_day}, before the first partition "
            f"{first_partition()} (PINNERSAGE_START_DATE)"
        )
    # pin_embeddings of a day reads the window before it; nothing exists before the first partition
    first = max(first_job_day - timedelta(days=window_days), first_partition())
    runner = Runner(steps=days + 1, params={"window_days": window_days} if given_window else {})
    started = time.perf_counter()
    runner.assets(
        f"raw_actions of {first} .. {day} in one range run",
        ["raw_actions"],
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": day.isoformat(),
        },
    )
    # a few days, so the UI's partition bars, check history and metadata plots have a story to tell
    checks: list = []
    for offset in range(days):
        job_day = first_job_day + timedelta(days=offset)
        result = runner.job(
            f"pinnersage_daily_job for partition {job_day} (all assets and checks)",
            "pinnersage_daily_job",
            job_day.isoformat(),
        )
        checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    failed = [c.check_name for c in checks if not c.passed]
    print(
        f"done in {time.perf_counter() - started:.0f}s; checks of {day}: {len(checks) - len(failed)}/{len(checks)} passed"
        + (f", FAILED: {failed}" if failed else "")
    )
    return checks
