"""A tiny PinnerSage graph (synthetic, 80 users, 3,000 pins, a 10-day window) in a temp warehouse."""

import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.checks import all_checks
from pinnersage_dagster.config import PinnerSageParams
from pinnersage_dagster.resources import EventLogStore, ExchangeStore, IndexStore, ServingStore, SyntheticSource, Warehouse

DAY = date(2026, 6, 10)
WINDOW = 10
PARTITIONED = ["action_windows", "user_clusters", "user_medoids", "pin_index", "serving_snapshot"]


@dataclass
class Graph:
    root: Path
    resources: dict

    @property
    def database(self) -> str:
        return self.resources["duckdb"].database

    def connect(self, read_only: bool = False):
        import duckdb

        return duckdb.connect(self.database, read_only=read_only)

    def copy(self, target: Path) -> "Graph":
        shutil.copytree(self.root, target)
        return Graph(target, make_resources(target))


def make_resources(root: Path, **params) -> dict:
    return {
        "duckdb": Warehouse(database=str(root / "warehouse.duckdb")),
        "index_store": IndexStore(root=str(root / "pin_index")),
        "serving_store": ServingStore(root=str(root / "serving")),
        "exchange": ExchangeStore(root=str(root / "exchange")),
        "event_log": EventLogStore(root=str(root / "events")),
        "source": SyntheticSource(n_users=80, n_pins=3_000, seed=5, preset="clean"),
        "params": PinnerSageParams(window_days=WINDOW, **params),
    }


def range_tags(first: date, last: date) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": first.isoformat(), "dagster/asset_partition_range_end": last.isoformat()}


def materialize_history(resources: dict, last: date, days: int = WINDOW) -> dg.ExecuteInProcessResult:
    """pins, then raw_actions for the window ending ``last`` as one range run."""
    return dg.materialize(
        all_assets,
        selection=["pins", "raw_actions"],
        resources=resources,
        tags=range_tags(last - timedelta(days=days - 1), last),
    )


def materialize_day(resources: dict, day: date, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    """Every asset downstream of raw_actions for one day, with all checks."""
    selection = dg.AssetSelection.assets("candidate_pool", *PARTITIONED)
    return dg.materialize(
        [*all_assets, *all_checks], selection=selection, resources=resources, partition_key=day.isoformat(),
        raise_on_error=raise_on_error,
    )


def materializations(result: dg.ExecuteInProcessResult, asset: str) -> list[dg.AssetMaterialization]:
    """The run's materializations of one asset (a multi-asset's node materializes several)."""
    return [e.materialization for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


@pytest.fixture(scope="session")
def graph(tmp_path_factory) -> Graph:
    root = tmp_path_factory.mktemp("graph")
    resources = make_resources(root)
    assert materialize_history(resources, DAY).success
    result = materialize_day(resources, DAY)
    assert result.success
    assert all(check_results(result).values()), check_results(result)
    return Graph(root, resources)


@pytest.fixture
def graph_copy(graph, tmp_path) -> Graph:
    return graph.copy(tmp_path / "copy")
