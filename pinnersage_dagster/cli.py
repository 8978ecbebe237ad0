"""Command line: the demo, summaries, alpha calibration, and the recommender (recommend, interests, serve)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from .core.hnsw import IndexIntegrityError, read_manifest
from .reporting import distribution, frame_markdown
from .resources import DEFAULT_DATABASE, DEFAULT_EVENTS_ROOT, DEFAULT_INDEX_ROOT, DEFAULT_SERVING_ROOT

if TYPE_CHECKING:
    from .serving.server import ServerLimits


def latest_partition() -> date:
    """The last complete UTC day: what the daily schedule materializes."""
    return datetime.now(timezone.utc).date() - timedelta(days=1)


def _instance():
    """The persistent Dagster instance: $DAGSTER_HOME, else the project's .dagster_home (make setup)."""
    import dagster as dg

    if not os.getenv("DAGSTER_HOME"):
        home = Path.cwd() / ".dagster_home"
        if not (home / "dagster.yaml").exists():
            sys.exit("DAGSTER_HOME is not set and ./.dagster_home does not exist: run `make setup` first")
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def _first_partition() -> date:
    from .partitions import daily_partitions

    return daily_partitions.start.date()


def run_demo(day: date, window_days: int, days: int) -> None:
    import dagster as dg

    from .definitions import defs

    warnings.filterwarnings("ignore")
    instance = _instance()  # persistent, so the UI shows these runs
    first_job_day = day - timedelta(days=days - 1)
    # pin_embeddings of a day reads the window before it; nothing exists before the first partition
    first = max(first_job_day - timedelta(days=window_days), _first_partition())
    # the full run log goes to the instance (see it in the UI); the terminal shows warnings only
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    started = time.perf_counter()
    print(f"[1/{days + 1}] actions of {first} .. {day} in one range run", flush=True)
    history = dg.materialize(
        [*defs.assets],
        selection=dg.AssetSelection.assets("raw_actions"),
        resources=defs.resources,
        instance=instance,
        run_config=quiet,
        tags={"dagster/asset_partition_range_start": first.isoformat(), "dagster/asset_partition_range_end": day.isoformat()},
    )
    if not history.success:
        sys.exit("loading the history failed; see the run in the Dagster UI (make dev)")
    # a few days, so the UI's partition bars, check history and metadata plots have a story to tell
    checks: list = []
    for number, job_day in enumerate((first_job_day + timedelta(days=i) for i in range(days)), 2):
        print(f"[{number}/{days + 1}] pinnersage_daily_job for partition {job_day} (all assets and checks)", flush=True)
        result = defs.resolve_job_def("pinnersage_daily_job").execute_in_process(
            partition_key=job_day.isoformat(), instance=instance, run_config=quiet, raise_on_error=False
        )
        checks = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        if not result.success:
            sys.exit(f"the daily job for {job_day} failed; see the run in the Dagster UI (make dev)")
    failed = [c.check_name for c in checks if not c.passed]
    print(f"done in {time.perf_counter() - started:.0f}s; checks of {day}: {len(checks) - len(failed)}/{len(checks)} passed"
          + (f", FAILED: {failed}" if failed else ""))
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
        if not conn.execute("SELECT count(*) FROM synthetic_pin_truth").fetchall()[0][0]:
            interests = interests.drop(columns=["true_topic"])  # your own data has no planted topics
    try:
        manifest = read_manifest(Path(index_root) / day.isoformat())
        index_line = f"{manifest.count} pins, d={manifest.dimension}, M={manifest.M}, ef={manifest.ef}, build {manifest.build_id}"
    except IndexIntegrityError as exc:
        index_line = f"not available ({exc})"
    try:
        from .core.artifacts import read_manifest as read_artifact

        serving = read_artifact(Path(os.getenv("PINNERSAGE_SERVING_ROOT", DEFAULT_SERVING_ROOT)) / day.isoformat())
        serving_line = f"{serving['users']} users, {serving['clusters']} interests, build {serving['build_id']} (pinnersage serve)"
    except IndexIntegrityError as exc:
        serving_line = f"not available ({exc})"
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
            f"  serving snapshot: {serving_line}",
            f"  interests of user {user} (medoid pins by importance):",
            frame_markdown(interests, max_rows=15),
        ]
    )


def calibrate_held_out(split_day: date, alphas: list[float], seeds: int, max_users: int, tuning: Tuning) -> str:
    """The alpha sweep of the offline evaluation on your data: recall and relevance per alpha."""
    report_dir = run_evaluation(split_day, seeds, max_users, None, tuning, alphas=alphas)
    text = (report_dir / "report.md").read_text()
    start = text.index("## Alpha sweep")
    return f"held-out alpha sweep for split day {split_day} (report: {report_dir / 'report.md'})\n\n" + text[start:text.index("## Choices")]


def calibrate_alpha(day: date, alphas: list[float], users: int, warehouse: bool) -> str:
    from .core.calibration import alpha_sweep, synthetic_window
    from .core.synthetic import SyntheticWorld
    from .warehouse import embedding_matrix, query_arrow

    if warehouse:
        from .engines.local import DAY_PINS_SQL

        database = os.getenv("PINNERSAGE_DUCKDB_PATH", DEFAULT_DATABASE)
        with duckdb.connect(database, read_only=True) as conn:
            pairs = conn.execute(
                "SELECT DISTINCT user_id, pin_id FROM action_windows WHERE partition_date = ? ORDER BY ALL", [day]
            ).fetchnumpy()
            pins = query_arrow(conn, DAY_PINS_SQL, [day])
        rows = np.searchsorted(pins.column("pin_id").to_numpy(), pairs["pin_id"])
        sweep = alpha_sweep(pairs["user_id"], pairs["pin_id"], embedding_matrix(pins)[rows], alphas)
        title = f"alpha sweep on action_windows of {day} ({database})"
    else:
        world = SyntheticWorld(n_users=users)
        user_ids, pin_ids, embeddings, topics = synthetic_window(world, day)
        sweep = alpha_sweep(user_ids, pin_ids, embeddings, alphas, labels=topics)
        title = f"alpha sweep on the synthetic world (seed {world.seed}, {users} users, window ending {day})"
    return f"{title}\n\n{frame_markdown(sweep, max_rows=len(sweep))}"


@dataclass(frozen=True)
class Tuning:
    """What a user tunes from the command line, validated before any work starts."""

    alpha: float | None = None
    decay_lambda: float | None = None
    horizon_days: int | None = None
    min_train_actions: int | None = None

    def params(self):
        from .config import PinnerSageParams

        fields = {"alpha": self.alpha, "decay_lambda": self.decay_lambda}
        return PinnerSageParams(**{k: v for k, v in fields.items() if v is not None})

    def evaluation(self, **extra) -> dict:
        from .assets.evaluation import EvaluationConfig

        fields = {"horizon_days": self.horizon_days, "min_train_actions": self.min_train_actions, **extra}
        return EvaluationConfig(**{k: v for k, v in fields.items() if v is not None}).model_dump()

    def validate(self) -> str | None:
        """A message naming the first bad value, or None."""
        import pydantic

        try:
            self.params()
            self.evaluation()
        except pydantic.ValidationError as exc:
            error = exc.errors()[0]
            name = "--" + str(error["loc"][0]).replace("_", "-")
            return f"{name}: {error['msg']} (got {error.get('input')!r})"
        return None


def run_evaluation(
    split_day: date, seeds: int, max_users: int, output: str | None, tuning: Tuning = Tuning(),
    alphas: list[float] | None = None,
    search: str = "index",
) -> Path:
    """Materialize what a split needs (history, the day-before graph), then offline_evaluation.
    Returns the report's folder."""
    import shutil

    import dagster as dg

    from .assets.evaluation import HORIZON_DAYS, REPORT_ROOT, horizon_to_newest
    from .definitions import defs

    warnings.filterwarnings("ignore")
    instance = _instance()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    resources = {**defs.resources, "params": tuning.params()}
    before = split_day - timedelta(days=1)
    horizon = HORIZON_DAYS if tuning.horizon_days is None else tuning.horizon_days
    first = max(before - timedelta(days=resources["params"].window_days), _first_partition())
    if horizon == 0:  # up to the newest day the source holds, and not one empty day beyond it
        try:
            horizon = horizon_to_newest(resources["source"].process_config_and_initialize(), split_day)
        except ValueError as exc:
            sys.exit(f"--horizon-days 0: {exc}")
    last = split_day + timedelta(days=horizon - 1)
    if last >= datetime.now(timezone.utc).date():
        sys.exit(f"the test window ends {last}: pick a split day at least {horizon} days before today")
    config = tuning.evaluation(seeds=seeds, max_users=max_users, search=search, **({"alphas": alphas} if alphas else {}))
    steps = [
        (f"actions {first} .. {last} in one range run", dict(
            selection=dg.AssetSelection.assets("raw_actions"),
            tags={"dagster/asset_partition_range_start": first.isoformat(),
                  "dagster/asset_partition_range_end": last.isoformat()})),
        (f"the daily graph for {before}", dict(
            selection=dg.AssetSelection.groups("pinnersage") - dg.AssetSelection.assets("raw_actions"),
            partition_key=before.isoformat())),
        (f"offline_evaluation for split day {split_day} ({seeds} seeds, <= {max_users} users)", dict(
            selection=dg.AssetSelection.assets("offline_evaluation"), partition_key=split_day.isoformat(),
            run_config={**quiet, "ops": {"offline_evaluation": {"config": config}}})),
    ]
    for number, (label, kwargs) in enumerate(steps, 1):
        print(f"[{number}/{len(steps)}] {label}", flush=True)
        kwargs.setdefault("run_config", quiet)
        result = dg.materialize([*defs.assets], resources=resources, instance=instance, raise_on_error=False, **kwargs)
        if not result.success:
            sys.exit(f"step {number} failed; see the run in the Dagster UI (make dev)")
    report_dir = Path(REPORT_ROOT) / split_day.isoformat()
    if output:
        target = Path(output)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(report_dir / "report.md", target / "offline-evaluation.md")
        shutil.copy(report_dir / "curve.png", target / "curve.png")
        shutil.copy(report_dir / "report.json", target / "offline-evaluation.json")
        print(f"copied to {target / 'offline-evaluation.md'}")
    return report_dir


def _service(serving_root: str | None, refresh: bool = True, policy: str | None = None):
    from .config import PinnerSageParams
    from .serving.event_log import EventLog
    from .serving.service import RecommenderService, ServiceSettings
    from .serving.store import SnapshotManager

    params = PinnerSageParams()
    settings = ServiceSettings(
        sampled_medoids=params.sampled_medoids,
        policy=policy or params.retrieval_policy,
        retrieval_budget=params.retrieval_budget,
        online_recent_actions=params.online_recent_actions,
    )
    root = serving_root or os.getenv("PINNERSAGE_SERVING_ROOT", DEFAULT_SERVING_ROOT)
    events = EventLog(os.getenv("PINNERSAGE_EVENTS_ROOT", DEFAULT_EVENTS_ROOT))
    service = RecommenderService(SnapshotManager(Path(root)), settings, events)
    if refresh:
        service.manager.refresh()
        if service.manager.current is None:
            sys.exit(f"no loadable serving snapshot under {root}: run `make demo` (or materialize serving_snapshot)")
    return service


def _user_report(args: argparse.Namespace) -> str:
    import pandas as pd

    service = _service(args.serving_root)
    if args.command == "interests":
        result = service.interests(args.user_id)
        table = pd.DataFrame(result["interests"])
        head = f"interests of user {args.user_id} (snapshot {result['snapshot']['partition']})"
        return head + "\n" + (frame_markdown(table, max_rows=50) if len(table) else "(none: cold-start user)")
    result = service.recommend(args.user_id, seed=args.seed, policy=args.policy)
    sampled = ", ".join(f"{m['medoid_pin_id']} (cluster {m['cluster_id']})" for m in result["sampled"]) or "none"
    head = (f"{len(result['items'])} recommendations for user {args.user_id} from {result['source']} "
            f"(snapshot {result['snapshot']['partition']}); sampled medoids: {sampled}")
    return head + "\n" + frame_markdown(pd.DataFrame(result["items"]), max_rows=args.limit)


def serve(
    host: str, port: int, serving_root: str | None, refresh_seconds: float, policy: str | None = None, workers: int = 1,
    limits: ServerLimits | None = None,
) -> None:
    """One process, or ``workers`` processes behind one port (uvicorn's supervisor). Each worker
    loads and swaps snapshots on its own and follows the shared event log, so an event posted to
    any worker is seen by the next request on every worker. ``limits``: what a slow client may
    hold (``serving.server``)."""
    import uvicorn

    from .serving.api import create_app
    from .serving.server import ServerLimits, uvicorn_options

    options = uvicorn_options(limits or ServerLimits())
    if workers == 1:
        app = create_app(_service(serving_root, refresh=False, policy=policy), refresh_seconds=refresh_seconds)
        return uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, **options)
    # workers are fresh processes: they rebuild the app from these settings
    os.environ.update({"PINNERSAGE_SERVE_ROOT": serving_root or "", "PINNERSAGE_SERVE_REFRESH": str(refresh_seconds),
                       "PINNERSAGE_SERVE_POLICY": policy or ""})
    uvicorn.run("pinnersage_dagster.cli:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning", access_log=False, **options)


def app_from_env():
    """The app of one worker of ``pinnersage serve --workers N``."""
    from .serving.api import create_app

    service = _service(os.getenv("PINNERSAGE_SERVE_ROOT") or None, refresh=False,
                       policy=os.getenv("PINNERSAGE_SERVE_POLICY") or None)
    return create_app(service, refresh_seconds=float(os.getenv("PINNERSAGE_SERVE_REFRESH", "30")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pinnersage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize the whole graph for one day (default: yesterday) and summarize")
    demo.add_argument("--date", type=date.fromisoformat, default=None, help="partition day, YYYY-MM-DD")
    demo.add_argument("--window-days", type=int, default=90)
    demo.add_argument("--days", type=int, default=3, help="run the daily job for this many days up to --date")
    show = sub.add_parser("summary", help="summarize a materialized partition")
    show.add_argument("--date", type=date.fromisoformat, default=None)
    tuning = argparse.ArgumentParser(add_help=False)
    tuning.add_argument("--alpha", type=float, default=None, help="Ward threshold (default: params.alpha)")
    tuning.add_argument("--decay-lambda", type=float, default=None, help="importance decay per day (default 0.01)")
    tuning.add_argument("--horizon-days", type=int, default=None,
                        help="test days from the split day (default 7); 0 = up to the newest day the source holds")
    tuning.add_argument("--min-train-actions", type=int, default=None, help="history actions a user needs (default 5)")
    calibrate = sub.add_parser(
        "calibrate", parents=[tuning],
        help="sweep alpha: cluster shape (and recovery on synthetic data), or with --split-day held-out recall per alpha",
    )
    calibrate.add_argument("--date", type=date.fromisoformat, default=None)
    calibrate.add_argument("--alphas", default="0.6,0.8,1.0,1.2,1.4,1.6,1.8,2.0,2.4,3.0")
    calibrate.add_argument("--users", type=int, default=2000, help="synthetic users")
    calibrate.add_argument(
        "--warehouse", action="store_true", help="sweep your own materialized action_windows partition instead"
    )
    calibrate.add_argument("--split-day", type=date.fromisoformat, default=None,
                           help="evaluate each alpha on held-out actions from this day (materializes what it needs)")
    calibrate.add_argument("--seeds", type=int, default=3)
    calibrate.add_argument("--max-users", type=int, default=1000)
    rec = sub.add_parser("recommend", help="recommendations for a user from the newest serving snapshot")
    rec.add_argument("user_id", type=int)
    rec.add_argument("--seed", type=int, default=None)
    rec.add_argument("--limit", type=int, default=20, help="items to print (of up to 400)")
    rec.add_argument("--policy", choices=["sampled", "proportional"], default=None,
                     help="how the budget is spent across medoids (default: params.retrieval_policy)")
    rec.add_argument("--serving-root", default=None)
    intr = sub.add_parser("interests", help="a user's interests (medoid pins with importance)")
    intr.add_argument("user_id", type=int)
    intr.add_argument("--serving-root", default=None)
    srv = sub.add_parser("serve", help="start the HTTP API (FastAPI + uvicorn)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--serving-root", default=None)
    srv.add_argument("--refresh-seconds", type=float, default=30.0, help="how often to look for a newer snapshot")
    srv.add_argument("--policy", choices=["sampled", "proportional"], default=None,
                     help="the default retrieval policy of requests that name none (default: sampled, the paper's)")
    srv.add_argument("--workers", type=int, default=1,
                     help="processes behind the one port; they share the event log (default 1)")
    srv.add_argument("--header-timeout", type=float, default=10.0,
                     help="seconds from a request's first byte to the end of its headers, else 408 and close (default 10)")
    srv.add_argument("--body-timeout", type=float, default=30.0,
                     help="seconds from the end of the headers to the end of the body, else 408 and close (default 30)")
    srv.add_argument("--keep-alive-timeout", type=float, default=5.0,
                     help="seconds an idle connection stays open, before and between requests (default 5)")
    srv.add_argument("--limit-concurrency", type=int, default=1000,
                     help="open connections and requests in flight per worker; past it, 503 and close (default 1000)")
    ev = sub.add_parser("evaluate", parents=[tuning], help="offline evaluation (Tables 4-5, Figure 7) for a split day")
    ev.add_argument("--split-day", type=date.fromisoformat, default=None, help="default: 8 days ago")
    ev.add_argument("--seeds", type=int, default=5)
    ev.add_argument("--max-users", type=int, default=1000)
    ev.add_argument("--output", default=None, help="also copy report.md, report.json and curve.png here (e.g. docs/evaluation)")
    ev.add_argument("--search", choices=["index", "exact"], default="index",
                    help="retrieve through the product's HNSW index (default) or exactly over the whole catalog")
    args = parser.parse_args(argv)
    if args.command in ("evaluate", "calibrate"):
        tuned = Tuning(args.alpha, args.decay_lambda, args.horizon_days, args.min_train_actions)
        if message := tuned.validate():
            parser.error(message)
        if args.command == "calibrate" and args.split_day is None and (
            args.decay_lambda is not None or args.horizon_days is not None or args.min_train_actions is not None
        ):
            parser.error("--decay-lambda, --horizon-days and --min-train-actions apply to a held-out sweep: add --split-day")
    if args.command == "evaluate":
        split_day = args.split_day or latest_partition() - timedelta(days=7)
        report_dir = run_evaluation(split_day, args.seeds, args.max_users, args.output, tuned, search=args.search)
        print(f"report: {report_dir / 'report.md'}")
        return print((report_dir / "report.md").read_text())
    if args.command == "serve":
        from .serving.server import ServerLimits

        if args.workers < 1:
            parser.error(f"--workers: must be at least 1, got {args.workers}")
        limits = ServerLimits(args.header_timeout, args.body_timeout, args.keep_alive_timeout, args.limit_concurrency)
        if message := limits.validate():
            parser.error(message)
        return serve(args.host, args.port, args.serving_root, args.refresh_seconds, args.policy, args.workers, limits)
    if args.command in ("recommend", "interests"):
        return print(_user_report(args))
    day = args.date or latest_partition()
    if args.command == "demo":
        run_demo(day, args.window_days, max(1, args.days))
    elif args.command == "calibrate":
        alphas = _alphas(parser, args.alphas, args.alpha)
        if args.split_day:
            print(calibrate_held_out(args.split_day, alphas, args.seeds, args.max_users, tuned))
        else:
            print(calibrate_alpha(day, alphas, args.users, args.warehouse))
    else:
        print(summary(day))


def _alphas(parser: argparse.ArgumentParser, text: str, extra: float | None) -> list[float]:
    try:
        alphas = sorted({float(a) for a in text.split(",")} | ({extra} if extra is not None else set()))
    except ValueError:
        parser.error(f"--alphas: expected numbers separated by commas, got {text!r}")
    if not alphas or min(alphas) <= 0:
        parser.error(f"--alphas: every alpha must be > 0, got {text!r}")
    return alphas


if __name__ == "__main__":
    main()
