"""Daily partitions end to end at scale: wall time and peak memory per asset.

Runs the real assets on the synthetic world with ``--users`` users and ``--pins`` pins in a
fresh warehouse under benchmarks/.cache/. Each asset runs as its own Dagster run in its own
process, as the run launcher does in production, and its peak RSS is that process's, read
with wait4 (worker processes it spawns are counted by their own peak).

1. History: the catalog, then 91 days of actions (one range run).
2. Cold day D: every daily asset, from an empty pool graph (the first day of a deployment or
   after a parameter change: the pool's HNSW graph is built from scratch).
3. Uploads: ``--new-pins`` pins arrive in the catalog on D+1, half near-copies of existing
   pins (to be collapsed), half new content.
4. Steady-state day D+1: every daily asset again, as the daily schedule runs it.

Run: ``make bench-e2e``; writes benchmarks/results/end_to_end.md and end_to_end.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from datetime import date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import results_io  # noqa: E402

DAY = date(2026, 6, 30)
STAGES = ["candidate_pool", "action_windows", "user_clusters", "user_medoids", "pin_index", "serving_snapshot"]


def resources(root: Path, users: int, pins: int) -> dict:
    from dagster_duckdb import DuckDBResource

    from pinnersage_dagster.config import PinnerSageParams
    from pinnersage_dagster.resources import ExchangeStore, IndexStore, ServingStore, SyntheticSource

    return {
        "duckdb": DuckDBResource(database=str(root / "warehouse.duckdb")),
        "index_store": IndexStore(root=str(root / "pin_index")),
        "serving_store": ServingStore(root=str(root / "serving")),
        "exchange": ExchangeStore(root=str(root / "exchange")),
        "source": SyntheticSource(n_users=users, n_pins=pins, dirty_share=0.001),
        "params": PinnerSageParams(),
    }


def run_stage(args: argparse.Namespace) -> None:
    """Child process: one Dagster run of one asset, then its metadata on stdout."""
    import dagster as dg

    from pinnersage_dagster.assets import all_assets

    kwargs: dict = {"selection": [args.stage]}
    if args.range_start:
        kwargs["tags"] = {"dagster/asset_partition_range_start": args.range_start,
                          "dagster/asset_partition_range_end": args.partition}
    elif args.partition:
        kwargs["partition_key"] = args.partition
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = dg.materialize(all_assets, resources=resources(Path(args.root), args.users, args.pins),
                            run_config=quiet, raise_on_error=False, **kwargs)
    if not result.success:
        raise SystemExit(f"{args.stage} failed")
    events = result.asset_materializations_for_node(args.stage)
    metadata = {k: v.value for k, v in events[-1].metadata.items() if isinstance(v.value, (int, float, str))}
    print("METADATA " + json.dumps(metadata, default=str))


def add_uploads(root: Path, n: int, day: date, seed: int = 3) -> dict:
    """``n`` pins created on ``day``: half near-copies of random catalog pins, half new content."""
    import duckdb

    rng = np.random.default_rng(seed)
    with duckdb.connect(str(root / "warehouse.duckdb")) as conn:
        total, next_id = conn.execute("SELECT count(*), max(pin_id) + 1 FROM pins").fetchall()[0]
        rows = np.sort(rng.choice(total, size=n, replace=False))
        conn.register("picked", pd.DataFrame({"row_number": rows}))
        source = conn.execute(
            "SELECT p.pin_id, p.embedding, t.category, t.topic, coalesce(nullif(t.duplicate_of, -1), p.pin_id) AS grp "
            "FROM (SELECT *, row_number() OVER (ORDER BY pin_id) - 1 AS row_number FROM pins) p "
            "JOIN picked USING (row_number) JOIN synthetic_pin_truth t USING (pin_id) ORDER BY p.pin_id"
        ).fetchnumpy()
        x = np.vstack(source["embedding"]).astype(np.float32)
        copy = np.arange(n) < n // 2
        noise = np.where(copy[:, None], 0.01, 0.1).astype(np.float32)  # cosine ~0.99 vs ~0.5 to the source
        x = x + noise * rng.standard_normal(x.shape).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        created = datetime.combine(day, datetime.min.time()) + timedelta(hours=12)
        conn.register("uploads", pd.DataFrame({
            "pin_id": ids, "embedding": list(x), "quality": np.full(n, 0.8), "created_at": [created] * n,
            "category": source["category"], "topic": source["topic"],
            "duplicate_of": np.where(copy, source["grp"], -1), "low_quality": np.zeros(n, bool),
        }))
        conn.execute("INSERT INTO pins SELECT pin_id, embedding, quality, created_at FROM uploads")
        conn.execute("INSERT INTO synthetic_pin_truth SELECT pin_id, category, topic, duplicate_of, low_quality FROM uploads")
    return {"new_pins": n, "near_copies": int(copy.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--pins", type=int, default=1_000_000)
    parser.add_argument("--new-pins", type=int, default=2_000, help="catalog uploads between the two days")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--partition", help=argparse.SUPPRESS)
    parser.add_argument("--range-start", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return run_stage(args)

    root = ROOT / "benchmarks" / ".cache" / f"e2e-{args.users}-{args.pins}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    timings: list[dict] = []

    def run(phase: str, stage: str, partition: str | None = None, range_start: str | None = None) -> None:
        command = [sys.executable, __file__, "--stage", stage, "--root", str(root),
                   "--users", str(args.users), "--pins", str(args.pins)]
        command += ["--partition", partition] if partition else []
        command += ["--range-start", range_start] if range_start else []
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"{phase} {stage} failed with exit code {child.returncode}")
        metadata = next((json.loads(line[9:]) for line in output.splitlines() if line.startswith("METADATA ")), {})
        row = {"phase": phase, "stage": stage, "seconds": round(seconds, 1),
               "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "metadata": metadata}
        timings.append(row)
        print(f"{phase} {stage}: {seconds:.1f}s, peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)

    steady_day = DAY + timedelta(days=1)
    run("history", "pins")
    run("history", "raw_actions", steady_day.isoformat(), range_start=(DAY - timedelta(days=89)).isoformat())
    for stage in STAGES:
        run("cold day", stage, None if stage == "candidate_pool" else DAY.isoformat())
    uploads = add_uploads(root, args.new_pins, steady_day)
    for stage in STAGES:
        run("steady-state day", stage, None if stage == "candidate_pool" else steady_day.isoformat())
    report(args, timings, uploads)


def report(args: argparse.Namespace, timings: list[dict], uploads: dict) -> None:
    command = (f"make bench-e2e  # = .venv/bin/python benchmarks/end_to_end.py --users {args.users} "
               f"--pins {args.pins} --new-pins {args.new_pins}")
    days = {}
    for phase in ("cold day", "steady-state day"):
        rows = [t for t in timings if t["phase"] == phase]
        days[phase] = {"seconds": round(sum(t["seconds"] for t in rows), 1), "peak_rss_gib": max(t["peak_rss_gib"] for t in rows)}
    pool = {t["phase"]: t["metadata"] for t in timings if t["stage"] == "candidate_pool"}
    data = {"command": command, "machine": results_io.machine(), "users": args.users, "pins": args.pins,
            "uploads": uploads, "stages": timings, "days": days}
    lines = [
        "# Daily partitions end to end",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {results_io.machine()}. Synthetic world: {args.users:,} users, {args.pins:,} pins (d=256), "
        "90-day windows. Each asset runs as its own Dagster run in its own process; peak RSS is that "
        "process's own (wait4).",
        "",
        "| phase | stage | seconds | peak RSS (GiB) |",
        "|---|---|---|---|",
        *[f"| {t['phase']} | {t['stage']} | {t['seconds']:.1f} | {t['peak_rss_gib']:.2f} |" for t in timings],
        "",
        *[f"**{phase}: {d['seconds'] / 60:.1f} min, peak RSS {d['peak_rss_gib']:.2f} GiB.**" for phase, d in days.items()],
        "",
        "The cold day builds the candidate pool's HNSW graph from scratch (first day of a deployment, or after "
        f"a change of HNSW or duplicate parameters). Before the steady-state day, {uploads['new_pins']:,} pins "
        f"arrive in the catalog ({uploads['near_copies']:,} of them near-copies of existing pins); the pool "
        "graph is updated in place and the day's index is that graph with the pins outside the day's pool "
        "marked deleted.",
        "",
        "candidate_pool metadata, cold then steady-state: "
        + "; ".join(
            f"{phase}: {m.get('graph_update')} ({m.get('graph_pins_inserted')} inserted), "
            f"{m.get('excluded_near_duplicate')} near-duplicates, planted duplicate recall "
            f"{m.get('planted_duplicate_recall')}, precision {m.get('planted_duplicate_precision')}"
            for phase, m in pool.items()
        ),
    ]
    results_io.write("end_to_end", data, lines)


if __name__ == "__main__":
    main()
