"""What the tests share, in one place: the tiny graph's resources and runs, a hand-made serving
snapshot, a real server process, own-data files, a deployment's environment, content hashes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.checks import all_checks
from pinnersage_dagster.config import PinnerSageParams
from pinnersage_dagster.core.hnsw import build_index, publish_index
from pinnersage_dagster.resources import (
    ClusteringEngine,
    EventLogStore,
    ExchangeStore,
    FileSource,
    IndexStore,
    ServingStore,
    SyntheticSource,
    Warehouse,
)
from pinnersage_dagster.serving.catalog import ArrayCatalog
from pinnersage_dagster.serving.snapshot import publish_snapshot

REPO = Path(__file__).resolve().parents[1]

# --- the tiny graph: synthetic, 80 users, 3,000 pins, a 10-day window, in a temp warehouse ---

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


def make_resources(root: Path, engine: ClusteringEngine | None = None, **params) -> dict:
    return {
        "engine": engine or ClusteringEngine(),
        "duckdb": Warehouse(database=str(root / "warehouse.duckdb")),
        "index_store": IndexStore(root=str(root / "pin_index")),
        "serving_store": ServingStore(root=str(root / "serving")),
        "exchange": ExchangeStore(root=str(root / "exchange")),
        "event_log": EventLogStore(root=str(root / "events")),
        "source": SyntheticSource(n_users=80, n_pins=3_000, seed=5, preset="clean"),
        "params": PinnerSageParams(window_days=WINDOW, **params),
    }


def range_tags(first: date, last: date) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }


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
        [*all_assets, *all_checks],
        selection=selection,
        resources=resources,
        partition_key=day.isoformat(),
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


def content_hash(conn, table: str) -> tuple[int, str]:
    """Row count and an order-independent digest of every value of the table."""
    return conn.execute(
        f"SELECT count(*), md5(coalesce(string_agg(CAST(t AS VARCHAR), chr(10) ORDER BY CAST(t AS VARCHAR)), '')) FROM {table} t"
    ).fetchone()


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {k: v.value for k, v in materializations(result, asset)[-1].metadata.items()}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "the run should have failed"
    return str(failures[0].event_specific_data.error)


# --- a hand-made serving snapshot whose geometry the tests control ---

SERVING_DIM = 16
TOPICS = 4
PER_TOPIC = 60


def catalog(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """240 pins in 4 tight topics (cosine ~0.9 within, ~0 across); ids 1000 + row."""
    rng = np.random.default_rng(seed)
    centres = np.eye(SERVING_DIM)[:TOPICS]
    topic = np.repeat(np.arange(TOPICS), PER_TOPIC)
    x = centres[topic] + 0.08 * rng.standard_normal((len(topic), SERVING_DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return 1000 + np.arange(len(topic), dtype=np.int64), x.astype(np.float32), topic


def publish_day(root: Path, partition: str, importance: tuple[float, float] = (3.0, 1.0)) -> dict:
    """User 1 has two interests (topics 0 and 1); user 2 has one (topic 2); user 3 none.

    User 1 acted on the first 10 pins of topics 0 and 1 (the members); topic 3 is untouched.
    """
    ids, x, topic = catalog()
    index_dir = root / "pin_index" / partition
    index_dir.mkdir(parents=True, exist_ok=True)
    publish_index(
        index_dir,
        build_index(x, M=16, ef_construction=100, ef=100),
        ids,
        source_partition=partition,
        M=16,
        ef_construction=100,
        ef=100,
    )
    t0, t1, t2 = (np.flatnonzero(topic == t)[:10] for t in range(3))
    members = pd.DataFrame(
        {
            "user_id": [1] * 20 + [2] * 10,
            "cluster_id": [0] * 10 + [1] * 10 + [0] * 10,
            "pin_id": np.r_[ids[t0], ids[t1], ids[t2]],
        }
    )
    medoids = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "cluster_id": [0, 1, 0],
            "medoid_pin_id": [ids[t0][0], ids[t1][0], ids[t2][0]],
            "importance": [importance[0], importance[1], 2.0],
            "size": [10, 10, 10],
            "n_actions": [10, 10, 10],
            "kind": ["ward", "ward", "ward"],
        }
    )
    day_end = pd.Timestamp(partition) + pd.Timedelta(days=1)
    return publish_snapshot(
        root / "serving" / partition,
        partition=partition,
        batch_time=day_end,
        medoids=medoids,
        members=members,
        actions=members[["user_id", "pin_id"]].assign(ts=day_end - pd.Timedelta(hours=6)),
        popular=ids[np.flatnonzero(topic == 3)][:50],
        catalog=ArrayCatalog(ids, x),
        index_dir=index_dir,
        alpha=1.3,
        decay_lambda=0.01,
    )


# --- a real `pinnersage serve` process on a free port, and plain HTTP calls to it ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, *args: str, ready: int = 1) -> subprocess.Popen:
    """Serve ``root/serving`` with the event log ``root/events``; returns once ``ready`` distinct
    worker pids have answered /health (or raises with the server's stderr)."""
    env = {
        **os.environ,
        "PINNERSAGE_SERVING_ROOT": str(root / "serving"),
        "PINNERSAGE_EVENTS_ROOT": str(root / "events"),
        "PINNERSAGE_IMPRESSIONS_ROOT": str(root / "impressions"),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "pinnersage_dagster.cli", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    pids: set[int] = set()
    for _ in range(400):
        if server.poll() is not None:
            break
        try:
            health = get_json(port, "/health", timeout=2)
            if health["status"] == "ok":
                pids.add(health["pid"])
                if len(pids) >= ready:
                    return server
        except OSError:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(server.stderr.read().decode()[-3000:])


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def get_json(port: int, path: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def get_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def post_json(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


# --- your-own-data files (pins and per-day actions) and the assets run over them ---

OWN_DAY = date(2026, 3, 3)
OWN_DIM = 8
GOOD_PINS = 40


def pin_frame(n: int = GOOD_PINS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, OWN_DIM))
    x = centres[np.arange(n) % 4] + 0.05 * rng.standard_normal((n, OWN_DIM))
    return pd.DataFrame(
        {
            "pin_id": np.arange(1, n + 1),
            "embedding": [list(map(float, row)) for row in x],
            "quality": 0.9,
            "created_at": pd.Timestamp("2026-01-01", tz="UTC"),
        }
    )


def action_lines(users: int = 6, per_user: int = 8, day: date = OWN_DAY) -> list[str]:
    rng = np.random.default_rng(1)
    lines = []
    for user in range(1, users + 1):
        for k in range(per_user):
            pin = int(rng.integers(1, GOOD_PINS + 1))
            lines.append(f"{user},{pin},{'repin' if k % 2 else 'click'},{day}T{k + 1:02d}:{user:02d}:00Z")
    return lines


class World:
    """Your-own-data files in a temp dir, and the assets run over them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "actions").mkdir()
        self.pins_path = root / "pins.parquet"
        pin_frame().to_parquet(self.pins_path)
        for offset in range(3):
            self.write_actions(OWN_DAY - timedelta(days=offset), action_lines(day=OWN_DAY - timedelta(days=offset)))
        self.resources = make_resources(root)
        self.resources["params"] = self.resources["params"].model_copy(update={"window_days": 3})
        self.use(pins=self.pins_path)

    def use(self, pins: Path | None = None, actions: str | None = None) -> None:
        """Point at other files: another source, so a fresh warehouse and folders (as after `clean`)."""
        for name in ("warehouse.duckdb", "warehouse.duckdb.wal", "pin_index", "serving", "exchange", "events"):
            target = self.root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        self.resources["source"] = FileSource(
            pins_path=str(pins or self.pins_path), actions_path=actions or str(self.root / "actions" / "{date}.csv")
        )

    def write_actions(self, day: date, lines: list[str], header: str = "user_id,pin_id,action,ts") -> Path:
        path = self.root / "actions" / f"{day}.csv"
        path.write_text("\n".join([header, *lines]) + "\n")
        return path

    def run(self, selection: list[str], partition: date | None = OWN_DAY, raise_on_error: bool = True):
        return dg.materialize(
            all_assets,
            selection=selection,
            resources=self.resources,
            raise_on_error=raise_on_error,
            partition_key=partition.isoformat() if partition else None,
        )

    def query(self, sql: str, params: list | None = None):
        with duckdb.connect(self.resources["duckdb"].database, read_only=True) as conn:
            return conn.execute(sql, params or []).fetchall()


# --- a deployment: a temporary DAGSTER_HOME, warehouse and folders, as environment variables ---


def deployment_env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(root / "dagster_home"),
        "PINNERSAGE_DUCKDB_PATH": str(root / "warehouse.duckdb"),
        "PINNERSAGE_INDEX_ROOT": str(root / "pin_index"),
        "PINNERSAGE_SERVING_ROOT": str(root / "serving"),
        "PINNERSAGE_SYNTHETIC_USERS": "80",
        "PINNERSAGE_SYNTHETIC_PINS": "3000",
    }
