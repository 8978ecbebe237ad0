"""The instance's run launcher: Dagster's default one, plus a health check of the run's process.

A run whose processes die without a word (SIGKILL, the OOM killer, a reboot) stays STARTED
forever and keeps the ``duckdb`` pool slot it held, so every later run waits for the warehouse
forever. Dagster's run monitoring (``deploy/dagster.yaml``) asks the run launcher whether a
run's worker is alive, but the default launcher cannot tell. This one can, for run workers on
this host (the default launcher's, and runs made by the CLI or ``make demo``): a run's worker
is the process named by its first engine event that carries a pid, and it is gone when no such
process runs, or the pid now belongs to a process started after the run (reused). Monitoring
then marks the run failed, and frees its pool slots ``free_slots_after_run_end_seconds`` later.
"""

from __future__ import annotations

import os
import time

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class LocalRunLauncher(dg.DefaultRunLauncher):
    """``DefaultRunLauncher`` that run monitoring can ask about a run's worker process."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        pid = run_worker_pid(self._instance, run.run_id)
        if pid is None:  # no worker has said who it is yet: starting (start_timeout_seconds covers it)
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        record = self._instance.get_run_record_by_id(run.run_id)
        started = record.start_time if record and record.start_time else None
        if process_alive(pid, started_before=started):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the run's worker process (pid {pid}) is gone")


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.event_specific_data if record.dagster_event else None
        pid = getattr(data, "metadata", {}).get("pid") if data is not None else None
        if pid is not None:
            try:
                return int(pid.value)
            except (TypeError, ValueError):
                continue
    return None


def process_alive(pid: int, started_before: float | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, where /proc says so, started before ``started_before``
    (epoch seconds, with a second of slack): a later start means the pid was reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: the signal test alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return False
    if started_before is not None:
        started = _boot_time() + int(fields[19]) / _CLOCK_TICKS
        if started > started_before + 1.0:
            return False
    return True


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return time.time() - time.monotonic()
