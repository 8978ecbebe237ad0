"""Command line: ``pinnersage demo`` runs the whole graph for one day; ``pinnersage summary`` prints it."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np

from .core.hnsw import IndexIntegrityError, read_manifest
from .reporting import distribution, frame_markdown
from .resources import DEFAULT_DATABASE, DEFAULT_INDEX_ROOT


def latest_partition() -> date:
    """The last complete UTC day: what the daily schedule materializes."""
    return datetime.now(timezone.utc).date() - timedelta(days=1)


def run_demo(day: date, window_days: int) -> None:
    import dagster as dg

    from .definitions import defs

    warnings.filterwarnings("ignore")
    instance = dg.DagsterInstance.get()  # persistent: $DAGSTER_HOME, so the UI shows these runs
    first = day - timedelta(days=window_days - 1)
    started = time.perf_counter()
    print(f"[1/2] catalog and {window_days} days of actions ({first} .. {day}) in one range run", flush=True)
    history = dg.materialize(
        [*defs.assets],
        selection=dg.AssetSelection.assets("pins", "raw_actions"),
        resources=defs.resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": first.isoformat(), "dagster/asset_partition_range_end": day.isoformat()},
    )
    if not history.success:
        sys.exit("loading the history failed; see the run in the Dagster UI (make dev)")
    print(f"[2/2] pinnersage_daily_job for partition {day} (all assets and checks)", flush=True)
    result = defs.resolve_job_def("pinnersage_daily_job").execute_in_process(
        partition_key=day.isoformat(), instance=instance, raise_on_error=False
    )
    checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    failed = [c.check_name for c in checks if not c.passed]
    print(f"done in {time.perf_counter() - started:.0f}s; checks: {len(checks) - len(failed)}/{len(checks)} passed"
          + (f", FAILED: {failed}" if failed else ""))
    if not result.success:
        sys.exit("the daily job failed; see the run in the Dagster UI (make dev)")
    print()
    print(summary(day))


def summary(day: date, database: str | None = None, index_root: str | None = None) -> str:
    database = database or os.getenv("PINNERSAGE_DUCKDB_PATH", DEFAULT_DATABASE)
    index_root = index_root or os.getenv("PINNERSAGE_INDEX_ROOT", DEFAULT_INDEX_ROOT)
    with duckdb.connect(database, read_only=True) as conn:
        one = lambda sql: conn.execute(sql, [day]).fetchone()[0]  # noqa: E731
        users = one("SELECT count(DISTINCT user_id) FROM action_windows WHERE partition_date = ?")
        actions = one("SELECT count(*) FROM action_windows WHERE partition_date = ?")
        quarantined = conn.execute(
            "SELECT count(*) FROM raw_actions_quarantine WHERE partition_date BETWEEN ? - INTERVAL 89 DAY AND ?", [day, day]
        ).fetchone()[0]
        per_user = conn.execute(
            "SELECT count(*) AS n FROM user_clusters WHERE partition_date = ? GROUP BY user_id", [day]
        ).df()["n"].to_numpy()
        catalog = conn.execute("SELECT count(*) FROM pins").fetchone()[0]
        pool = conn.execute("SELECT count(*) FROM candidate_pool").fetchone()[0]
        medoids = conn.execute(
            "SELECT user_id, count(*) AS n FROM user_medoids WHERE partition_date = ? GROUP BY user_id ORDER BY n DESC, user_id",
            [day],
        ).df()
        user = int(medoids["user_id"].iloc[min(len(medoids) - 1, len(medoids) // 10)]) if len(medoids) else None
        interests = conn.execute(
            """
            SELECT m.cluster_id, m.medoid_pin_id, round(m.importance, 3) AS importance, m.size AS pins,
                   m.n_actions AS actions, m.kind, t.topic AS true_topic
            FROM user_medoids m LEFT JOIN synthetic_pin_truth t ON t.pin_id = m.medoid_pin_id
            WHERE m.partition_date = ? AND m.user_id = ? ORDER BY m.importance DESC
            """,
            [day, user],
        ).df()
    try:
        manifest = read_manifest(Path(index_root) / day.isoformat())
        index_line = f"{manifest.count} pins, d={manifest.dimension}, M={manifest.M}, ef={manifest.ef}, build {manifest.build_id}"
    except IndexIntegrityError as exc:
        index_line = f"not available ({exc})"
    d = distribution(per_user)
    counts = np.bincount(np.minimum(per_user, 11).astype(int), minlength=12)[1:] if per_user.size else np.zeros(11, int)
    buckets = ", ".join(f"{k}:{c}" for k, c in zip([*map(str, range(1, 11)), "11+"], counts))
    return "\n".join(
        [
            f"PinnerSage summary for partition {day}",
            f"  users with actions in the 90-day window : {users}",
            f"  actions in the window (deduplicated, capped): {actions}   quarantined rows in window: {quarantined}",
            f"  clusters per user: p50 {d['p50']:.0f}, p90 {d['p90']:.0f}, p99 {d['p99']:.0f}, max {d['max']:.0f}, mean {d['mean']}",
            f"  clusters per user (count: users): {buckets}",
            f"  catalog pins: {catalog}   candidate pool: {pool}",
            f"  pin index: {index_line}",
            f"  interests of user {user} (medoid pins by importance):",
            frame_markdown(interests, max_rows=15),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pinnersage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize the whole graph for one day (default: yesterday) and summarize")
    demo.add_argument("--date", type=date.fromisoformat, default=None, help="partition day, YYYY-MM-DD")
    demo.add_argument("--window-days", type=int, default=90)
    show = sub.add_parser("summary", help="summarize a materialized partition")
    show.add_argument("--date", type=date.fromisoformat, default=None)
    args = parser.parse_args(argv)
    day = args.date or latest_partition()
    if args.command == "demo":
        run_demo(day, args.window_days)
    else:
        print(summary(day))


if __name__ == "__main__":
    main()
