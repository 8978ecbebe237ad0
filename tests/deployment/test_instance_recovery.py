"""A run killed mid-step (SIGKILL, as the OOM killer does) must not wedge the instance: with the
shipped dagster.yaml and a running daemon, the dead run is marked failed and its pool slot freed,
and the next run proceeds."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECOVERY_BOUND_SECONDS = 120  # two monitoring polls (10 s), the slot release (5 s) and a run's start, with slack

PROBE = """
import dagster as dg, json
instance = dg.DagsterInstance.get()
print(json.dumps([{"run_id": r.run_id, "status": r.status.value,
                   "events": [e.dagster_event.event_type_value for e in instance.all_logs(r.run_id) if e.dagster_event],
                   "messages": [e.message for e in instance.all_logs(r.run_id) if e.message]}
                  for r in instance.get_runs()]))
"""


def runs(env: dict[str, str]) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []


def materialize(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "pinnersage_dagster.definitions",
            "--select",
            "raw_actions",
            *args,
        ],
        cwd=REPO,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_run_killed_mid_step_frees_the_warehouse_for_the_next_run(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PINNERSAGE_DUCKDB_PATH": str(tmp_path / "warehouse.duckdb"),
        "PINNERSAGE_EVENTS_ROOT": str(tmp_path / "events"),
        "PINNERSAGE_SERVING_ROOT": str(tmp_path / "serving"),
    }
    subprocess.run(
        [str(BIN / "dagster"), "instance", "migrate"], cwd=REPO, env=env, check=True, capture_output=True, timeout=300
    )
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    victim = second = None
    try:
        # a long step holding the duckdb pool: every day's actions since the first partition, in one run
        victim = materialize(env, "--partition-range", f"2026-01-01...{yesterday}", log=tmp_path / "victim.log")
        deadline = time.monotonic() + 300
        while not any("STEP_START" in r["events"] for r in runs(env)):
            assert victim.poll() is None and time.monotonic() < deadline, (tmp_path / "victim.log").read_text()[-3000:]
            time.sleep(1)
        time.sleep(2)
        os.killpg(victim.pid, signal.SIGKILL)  # the run worker and its step process, mid-step
        victim.wait(timeout=30)
        killed = time.monotonic()
        # the next run needs the same pool slot
        second = materialize(env, "--partition", yesterday.isoformat(), log=tmp_path / "second.log")
        second.wait(timeout=RECOVERY_BOUND_SECONDS + 60)
        recovered_after = time.monotonic() - killed
    finally:
        for process in (victim, second, daemon):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL if process is not daemon else signal.SIGTERM)
                process.wait(timeout=60)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert recovered_after < RECOVERY_BOUND_SECONDS, recovered_after
    statuses = {r["run_id"]: r for r in runs(env)}
    dead = [r for r in statuses.values() if "STEP_START" in r["events"] and r["status"] == "FAILURE"]
    assert len(dead) == 1 and any("worker process" in m and "is gone" in m for m in dead[0]["messages"]), statuses
    assert sorted(r["status"] for r in statuses.values()) == ["FAILURE", "SUCCESS"]
    print(f"the next run finished {recovered_after:.0f} s after the kill")
