"""The command line as a person meets it: every command says what it works on, a mistake is one
line and exit code 2, a failed run names its step and its run, and `clean`/`make evaluate` touch
only what the settings name."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pinnersage_dagster.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
GRAPH_SOURCE = {  # the tiny graph's synthetic world (support.make_resources)
    "PINNERSAGE_SYNTHETIC_USERS": "80",
    "PINNERSAGE_SYNTHETIC_PINS": "3000",
    "PINNERSAGE_SYNTHETIC_SEED": "5",
    "PINNERSAGE_SYNTHETIC_PRESET": "clean",
}


def pinnersage(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PINNERSAGE_", "DAGSTER_HOME"))}
    return subprocess.run(
        [sys.executable, "-m", "pinnersage_dagster.cli", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    assert done.returncode == code, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_every_command_and_flag_is_described_with_its_default():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    for name, sub in commands.choices.items():
        assert sub.description, f"`pinnersage {name}` has no description"
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
                if action.default not in (None, False):
                    assert f"default: {action.default}" in text or "default" in action.help, (name, action.dest)
    assert "--warehouse" in commands.choices["calibrate"].description  # the three modes, explained
    assert "--log-level" in commands.choices["serve"].format_help()


def test_version_and_numeric_flags(tmp_path):
    version = pinnersage("--version", cwd=tmp_path)
    assert version.returncode == 0 and re.fullmatch(r"pinnersage \d+\.\d+\.\d+\S*\n", version.stdout)
    for days in ("0", "-2", "two"):
        assert "argument --days" in one_line(pinnersage("demo", "--days", days, cwd=tmp_path))
    assert "argument --date" in one_line(pinnersage("summary", "--date", "2026-13-01", cwd=tmp_path))


def test_summary_without_a_warehouse_or_of_a_day_never_materialized_is_one_line(graph_copy, tmp_path):
    missing = one_line(pinnersage("summary", cwd=tmp_path))
    assert "there is no warehouse at data/pinnersage.duckdb: run `pinnersage demo` first" in missing
    env = {**GRAPH_SOURCE, "PINNERSAGE_DATA_ROOT": str(graph_copy.root), "PINNERSAGE_DUCKDB_PATH": graph_copy.database}
    ok = pinnersage("summary", cwd=tmp_path, **env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("pinnersage summary · source: synthetic (seed 5, 80 users, 3000 pins, clean)")
    assert "day 2026-06-10" in ok.stdout.splitlines()[0]
    never = one_line(pinnersage("summary", "--date", "2026-06-12", cwd=tmp_path, **env))
    assert "2026-06-12" in never and "pinnersage demo --date 2026-06-12" in never


def test_another_source_is_refused_naming_what_is_there_and_the_ways_forward(graph_copy, tmp_path):
    env = {"PINNERSAGE_DATA_ROOT": str(graph_copy.root), "PINNERSAGE_DUCKDB_PATH": graph_copy.database}
    for command in (["summary"], ["demo", "--days", "1", "--date", "2026-06-10"], ["calibrate", "--warehouse"]):
        refused = one_line(pinnersage(*command, cwd=tmp_path, **env))  # the default world, not the graph's
        assert "was built from synthetic (seed 5, 80 users, 3000 pins, clean)" in refused
        assert "not from this source, synthetic (seed 7, 2000 users, 20000 pins, realistic)" in refused
        assert "`pinnersage clean`" in refused and "PINNERSAGE_DATA_ROOT" in refused
    # the serving folder alone (a warehouse elsewhere) is refused by the commands that read it
    served = {**env, "PINNERSAGE_DUCKDB_PATH": str(tmp_path / "other.duckdb")}
    refused = one_line(pinnersage("recommend", "7", cwd=tmp_path, **served))
    assert f"{graph_copy.root / 'serving'} was built from synthetic (seed 5" in refused


def test_a_failed_run_names_its_step_and_run_and_the_trace_is_asked_for(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "2026-03-01.csv").write_text("user_id,pin_id,ts\n7,3,2026-03-01T10:00:00Z\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
    env = {
        "PINNERSAGE_SOURCE": "files",
        "PINNERSAGE_ACTIONS_PATH": "logs/{date}.csv",
        "PINNERSAGE_START_DATE": "2026-03-01",
        "DAGSTER_HOME": str(home),
    }
    failed = pinnersage("demo", "--days", "1", cwd=tmp_path, **env)
    assert failed.returncode == 1
    assert failed.stdout.splitlines()[0] == (
        "pinnersage demo · source: files (logs/{date}.csv; embeddings learned) · "
        "warehouse: data/pinnersage.duckdb · day 2026-03-01"
    )
    first, run_line = failed.stderr.splitlines()
    assert first.startswith("pinnersage demo: step raw_actions failed: logs/2026-03-01.csv")
    assert "['action']" in first
    assert re.match(r"  run [0-9a-f-]{36}: open it in the Dagster UI", run_line) and "--verbose" in run_line
    verbose = pinnersage("demo", "--days", "1", "--verbose", cwd=tmp_path, **env)
    assert "Stack Trace" not in failed.stderr
    assert verbose.returncode == 1 and "Stack Trace" in verbose.stderr
    assert verbose.stderr.rstrip().splitlines()[-2].startswith("pinnersage demo: step raw_actions failed")


def test_clean_removes_what_the_settings_name_and_nothing_else(tmp_path):
    own = tmp_path / "own"
    for name in ("pin_index", "serving", "exchange", "events", "reports"):
        (own / name).mkdir(parents=True)
        (own / name / "x").write_text("x")
    (own / "pinnersage.duckdb").write_text("")
    (own / "mine.csv").write_text("user_id\n")
    (tmp_path / "data").mkdir()  # the default root: not named, so kept
    done = pinnersage("clean", cwd=tmp_path, PINNERSAGE_DATA_ROOT="own")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in own.iterdir()) == ["mine.csv"] and (tmp_path / "data").is_dir()
    assert "removed own/serving" in done.stdout
    # a setting that would remove the folder you stand in, or your own log, is refused
    assert "refusing to remove" in one_line(pinnersage("clean", cwd=tmp_path, PINNERSAGE_EVENTS_ROOT="."))
    inside = one_line(
        pinnersage(
            "clean",
            cwd=tmp_path,
            PINNERSAGE_SOURCE="files",
            PINNERSAGE_ACTIONS_PATH="own/reports/log.csv",
            PINNERSAGE_DATA_ROOT="own",
        )
    )
    assert "your input data is inside it" in inside


@pytest.mark.parametrize("output", [None, "docs/evaluation"])
def test_make_evaluate_writes_the_committed_report_only_when_asked(output):
    args = ["make", "-n", "-s", "evaluate"] + ([f"OUTPUT={output}"] if output else [])
    planned = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in planned.splitlines() if "pinnersage evaluate" in line]
    assert ("--output docs/evaluation" in line) == (output is not None)
