"""Settings: read once, validated, one home; a launchpad or environment override of the model's
serving parameters reaches the service (through the snapshot it serves)."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.config import PinnerSageParams
from pinnersage_dagster.resources import build_resources
from pinnersage_dagster.serving.service import RecommenderService
from pinnersage_dagster.serving.store import SnapshotManager
from pinnersage_dagster.settings import Settings, SettingsError

from ..support import DAY, WINDOW

REPO = Path(__file__).resolve().parents[2]


def test_a_launchpad_override_of_the_serving_parameters_reaches_the_service(graph_copy):
    resources = {
        **graph_copy.resources,
        "params": PinnerSageParams(
            window_days=WINDOW, sampled_medoids=2, retrieval_policy="proportional", retrieval_budget=300
        ),
    }
    assert dg.materialize(
        all_assets, selection=["serving_snapshot"], resources=resources, partition_key=DAY.isoformat()
    ).success
    service = RecommenderService(SnapshotManager(Path(resources["serving_store"].root)))
    service.manager.refresh()
    with graph_copy.connect(read_only=True) as conn:
        heavy = conn.execute(
            "SELECT user_id FROM user_medoids GROUP BY user_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchall()[0][0]
    answer = service.recommend(int(heavy), seed=1)
    assert answer["policy"] == "proportional" and len(answer["items"]) <= 300  # as the run that published it said
    assert service.recommend(int(heavy), seed=1, policy="sampled")["per_medoid"] == 150  # 300 // 2 sampled medoids


def test_every_setting_comes_from_its_variable_and_a_bad_one_names_it():
    settings = Settings.from_environ(
        {
            "PINNERSAGE_SOURCE": "files",
            "PINNERSAGE_ACTIONS_PATH": "log.csv",
            "PINNERSAGE_PARAMS": '{"alpha": 1.2}',
            "PINNERSAGE_START_DATE": "2026-06-01",
            "PINNERSAGE_INGEST_SERVICE_EVENTS": "false",
        }
    )
    assert settings.source == "files" and settings.params == {"alpha": 1.2} and not settings.ingest_service_events
    resources = build_resources(settings)
    assert resources["params"].alpha == 1.2 and resources["source"].actions_path == "log.csv"
    with pytest.raises(SettingsError, match=r"PINNERSAGE_SOURCE='file'.*'synthetic' or 'files'"):
        Settings.from_environ({"PINNERSAGE_SOURCE": "file"})
    with pytest.raises(SettingsError, match="PINNERSAGE_SYNTHETIC_USERS='many'"):
        Settings.from_environ({"PINNERSAGE_SYNTHETIC_USERS": "many"})
    with pytest.raises(SettingsError, match="PINNERSAGE_PARAMS: alpha"):
        Settings.from_environ({"PINNERSAGE_PARAMS": '{"alpha": -1}'})
    with pytest.raises(SettingsError, match="needs PINNERSAGE_ACTIONS_PATH"):
        Settings.from_environ({"PINNERSAGE_SOURCE": "files"})
    with pytest.warns(UserWarning, match="PINNERSAGE_DUCKDB_PAHT"):
        Settings.from_environ({"PINNERSAGE_DUCKDB_PAHT": "x.duckdb"})
    with pytest.raises(SettingsError, match="PINNERSAGE_DUCKDB_MEMORY_LIMIT='lots'"):
        Settings.from_environ({"PINNERSAGE_DUCKDB_MEMORY_LIMIT": "lots"})


def test_every_warehouse_connection_has_the_memory_limit(tmp_path):
    settings = Settings.from_environ(
        {"PINNERSAGE_DATA_ROOT": str(tmp_path), "PINNERSAGE_DUCKDB_MEMORY_LIMIT": "300MiB"}
    )
    with build_resources(settings)["duckdb"].get_connection() as conn:
        limit = conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert limit.replace(" ", "") in ("300.0MiB", "314.5MB"), limit


def test_importing_the_definitions_creates_nothing_and_the_core_needs_no_dagster(tmp_path):
    probe = (
        "import sys, pinnersage_dagster.core.ward, pinnersage_dagster.core.user_pass, pinnersage_dagster.core.events; "
        "assert 'dagster' not in sys.modules, 'the core imported dagster'; "
        "import pinnersage_dagster.definitions"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PINNERSAGE_DUCKDB_PATH": str(tmp_path / "deep" / "warehouse.duckdb"),
        "PINNERSAGE_INDEX_ROOT": str(tmp_path / "idx"),
        "PINNERSAGE_SERVING_ROOT": str(tmp_path / "srv"),
    }
    subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    assert list(tmp_path.iterdir()) == []  # no folder, no warehouse, no data/


def test_the_configuration_table_is_generated_from_the_settings():
    from pinnersage_dagster.settings import configuration_table, env_name

    table = configuration_table()
    assert table in (REPO / "docs" / "operations.md").read_text(), "regenerate it: settings.configuration_table()"
    assert all(f"| `{env_name(field)}` |" in table for field in Settings.model_fields)
    assert all(row.count("|") == 5 and not row.endswith("|  |") for row in table.splitlines())  # read by: filled


def test_a_data_root_moves_every_folder_and_an_explicit_path_wins():
    settings = Settings.from_environ({"PINNERSAGE_DATA_ROOT": "data/own", "PINNERSAGE_SERVING_ROOT": "/srv/snap"})
    assert settings.duckdb_path == str(Path("data/own/pinnersage.duckdb"))
    assert settings.reports_root == str(Path("data/own/reports")) and settings.events_root == str(
        Path("data/own/events")
    )
    assert settings.serving_root == "/srv/snap"
    assert Settings.from_environ({}).index_root == str(Path("data/pin_index"))


def test_the_env_file_is_read_and_the_environment_wins(tmp_path):
    (tmp_path / ".env").write_text("PINNERSAGE_PARAMS='{\"alpha\": 1.4}'\nPINNERSAGE_DATA_ROOT=from_file\n")
    probe = "from pinnersage_dagster.settings import settings; s = settings(); print(s.params['alpha'], s.data_root)"
    env = {"PATH": "/usr/bin:/bin", "PINNERSAGE_DATA_ROOT": "from_env"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.4", "from_env"]
    (tmp_path / ".env").write_text("PINNERSAGE_SOURCE=file\n")
    done = subprocess.run(
        [sys.executable, "-m", "pinnersage_dagster.cli", "summary"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "PINNERSAGE_SOURCE='file'" in done.stderr and "'synthetic' or 'files'" in done.stderr
