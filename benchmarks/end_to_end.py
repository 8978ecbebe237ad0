"""One daily partition end to end at scale: wall time per asset and peak memory.

Runs the real assets (Dagster, in-process, a fresh warehouse under benchmarks/.cache/) on the
synthetic world with ``--users`` users and ``--pins`` pins: the catalog, 90 days of actions
(one range run, as a history load), then every asset of the daily graph for the last day.
Peak RSS is the maximum of this process and of its worker processes (getrusage).

Run: ``make bench-e2e``; writes benchmarks/results/end_to_end.md and end_to_end.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
import warnings
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

import dagster as dg  # noqa: E402
from dagster_duckdb import DuckDBResource  # noqa: E402

from pinnersage_dagster.assets import all_assets  # noqa: E402
from pinnersage_dagster.config import PinnerSageParams  # noqa: E402
from pinnersage_dagster.resources import IndexStore, ServingStore, SyntheticSource  # noqa: E402

DAY = date(2026, 6, 30)
STAGES = ["candidate_pool", "action_windows", "user_clusters", "user_medoids", "pin_index", "serving_snapshot"]


def peak_rss_gib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 2**20  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--pins", type=int, default=1_000_000)
    args = parser.parse_args()
    root = ROOT / "benchmarks" / ".cache" / f"e2e-{args.users}-{args.pins}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    resources = {
        "duckdb": DuckDBResource(database=str(root / "warehouse.duckdb")),
        "index_store": IndexStore(root=str(root / "pin_index")),
        "serving_store": ServingStore(root=str(root / "serving")),
        "source": SyntheticSource(n_users=args.users, n_pins=args.pins, dirty_share=0.001),
        "params": PinnerSageParams(),
    }
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    first = DAY - timedelta(days=89)
    timings: list[tuple[str, float, float]] = []

    def run(label: str, **kwargs) -> None:
        started = time.perf_counter()
        result = dg.materialize(all_assets, resources=resources, run_config=quiet, raise_on_error=False, **kwargs)
        seconds = time.perf_counter() - started
        timings.append((label, seconds, peak_rss_gib()))
        print(f"{label}: {seconds:.1f}s, peak RSS so far {peak_rss_gib():.2f} GiB, success={result.success}", flush=True)
        if not result.success:
            raise SystemExit(f"{label} failed")

    total_started = time.perf_counter()
    run("pins (catalog)", selection=["pins"])
    run("raw_actions (90 days, one range run)", selection=["raw_actions"],
        tags={"dagster/asset_partition_range_start": first.isoformat(), "dagster/asset_partition_range_end": DAY.isoformat()})
    daily_started = time.perf_counter()
    for stage in STAGES:
        run(stage, selection=[stage], **({} if stage == "candidate_pool" else {"partition_key": DAY.isoformat()}))
    daily = time.perf_counter() - daily_started
    total = time.perf_counter() - total_started
    report(args, timings, daily, total)


def report(args: argparse.Namespace, timings: list, daily: float, total: float) -> None:
    command = f"make bench-e2e  # = .venv/bin/python benchmarks/end_to_end.py --users {args.users} --pins {args.pins}"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    peak = max(t[2] for t in timings)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "end_to_end.json").write_text(json.dumps({
        "command": command, "machine": machine, "users": args.users, "pins": args.pins,
        "stages": [{"stage": s, "seconds": round(t, 1), "peak_rss_gib_so_far": round(r, 2)} for s, t, r in timings],
        "daily_partition_seconds": round(daily, 1), "total_seconds": round(total, 1), "peak_rss_gib": round(peak, 2),
    }, indent=2))
    lines = [
        "# One daily partition end to end",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {machine}. Synthetic world: {args.users:,} users, {args.pins:,} pins (d=256). The catalog and 90 days "
        "of history are loaded first; then every asset of the daily graph runs for one day, each as its own run.",
        "",
        "| stage | seconds | peak RSS so far (GiB) |",
        "|---|---|---|",
        *[f"| {s} | {t:.1f} | {r:.2f} |" for s, t, r in timings],
        "",
        f"**One daily partition (candidate_pool through serving_snapshot): {daily / 60:.1f} min; "
        f"with the catalog and history load: {total / 60:.1f} min; peak RSS {peak:.2f} GiB.**",
    ]
    (out / "end_to_end.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
