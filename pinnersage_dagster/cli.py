"""Command line: the demo, summaries, alpha calibration, the offline evaluation, and the
recommender (recommend, interests, serve). It parses and validates, then calls ``commands/``
(what each command does) or ``serving.app`` (the service)."""

from __future__ import annotations

import argparse
from datetime import date, timedelta

from .commands.pipeline import latest_partition
from .commands.summary import summary
from .settings import SettingsError, settings


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
    tuning.add_argument(
        "--horizon-days",
        type=int,
        default=None,
        help="test days from the split day (default 7); 0 = up to the newest day the source holds",
    )
    tuning.add_argument("--min-train-actions", type=int, default=None, help="history actions a user needs (default 5)")
    calibrate = sub.add_parser(
        "calibrate",
        parents=[tuning],
        help="sweep alpha: cluster shape (and recovery on synthetic data), or with --split-day held-out recall per alpha",
    )
    calibrate.add_argument("--date", type=date.fromisoformat, default=None)
    calibrate.add_argument("--alphas", default="0.6,0.8,1.0,1.2,1.4,1.6,1.8,2.0,2.4,3.0")
    calibrate.add_argument("--users", type=int, default=2000, help="synthetic users")
    calibrate.add_argument(
        "--warehouse", action="store_true", help="sweep your own materialized action_windows partition instead"
    )
    calibrate.add_argument(
        "--split-day",
        type=date.fromisoformat,
        default=None,
        help="evaluate each alpha on held-out actions from this day (materializes what it needs)",
    )
    calibrate.add_argument("--seeds", type=int, default=3)
    calibrate.add_argument("--max-users", type=int, default=1000)
    rec = sub.add_parser("recommend", help="recommendations for a user from the newest serving snapshot")
    rec.add_argument("user_id", type=int)
    rec.add_argument("--seed", type=int, default=None)
    rec.add_argument("--limit", type=int, default=20, help="items to print (of up to 400)")
    rec.add_argument(
        "--policy",
        choices=["sampled", "proportional"],
        default=None,
        help="how the budget is spent across medoids (default: params.retrieval_policy)",
    )
    rec.add_argument("--serving-root", default=None)
    intr = sub.add_parser("interests", help="a user's interests (medoid pins with importance)")
    intr.add_argument("user_id", type=int)
    intr.add_argument("--serving-root", default=None)
    srv = sub.add_parser("serve", help="start the HTTP API (FastAPI + uvicorn)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--serving-root", default=None)
    srv.add_argument("--refresh-seconds", type=float, default=30.0, help="how often to look for a newer snapshot")
    srv.add_argument(
        "--policy",
        choices=["sampled", "proportional"],
        default=None,
        help="the default retrieval policy of requests that name none (default: sampled, the paper's)",
    )
    srv.add_argument(
        "--workers", type=int, default=1, help="processes behind the one port; they share the event log (default 1)"
    )
    srv.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds from a request's first byte to the end of its headers, else 408 and close (default 10)",
    )
    srv.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds from the end of the headers to the end of the body, else 408 and close (default 30)",
    )
    srv.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5.0,
        help="seconds an idle connection stays open, before and between requests (default 5)",
    )
    srv.add_argument(
        "--limit-concurrency",
        type=int,
        default=1000,
        help="open connections and requests in flight per worker; past it, 503 and close (default 1000)",
    )
    ev = sub.add_parser("evaluate", parents=[tuning], help="offline evaluation (Tables 4-5, Figure 7) for a split day")
    ev.add_argument("--split-day", type=date.fromisoformat, default=None, help="default: 8 days ago")
    ev.add_argument("--seeds", type=int, default=5)
    ev.add_argument("--max-users", type=int, default=1000)
    ev.add_argument(
        "--output", default=None, help="also copy report.md, report.json and curve.png here (e.g. docs/evaluation)"
    )
    ev.add_argument(
        "--search",
        choices=["index", "exact"],
        default="index",
        help="retrieve through the product's HNSW index (default) or exactly over the whole catalog",
    )
    args = parser.parse_args(argv)
    try:
        settings()  # every setting validated before any work
    except SettingsError as exc:
        parser.error(str(exc))
    if args.command in ("evaluate", "calibrate"):
        from .commands.tuning import Tuning

        tuned = Tuning(args.alpha, args.decay_lambda, args.horizon_days, args.min_train_actions)
        if message := tuned.validate():
            parser.error(message)
        if (
            args.command == "calibrate"
            and args.split_day is None
            and (args.decay_lambda is not None or args.horizon_days is not None or args.min_train_actions is not None)
        ):
            parser.error(
                "--decay-lambda, --horizon-days and --min-train-actions apply to a held-out sweep: add --split-day"
            )
    if args.command == "evaluate":
        from .commands.tuning import run_evaluation

        split_day = args.split_day or latest_partition() - timedelta(days=7)
        report_dir = run_evaluation(split_day, args.seeds, args.max_users, args.output, tuned, search=args.search)
        print(f"report: {report_dir / 'report.md'}")
        return print((report_dir / "report.md").read_text())
    if args.command == "serve":
        from .serving.app import serve
        from .serving.settings import ServerLimits, ServiceSettings

        if args.workers < 1:
            parser.error(f"--workers: must be at least 1, got {args.workers}")
        limits = ServerLimits(args.header_timeout, args.body_timeout, args.keep_alive_timeout, args.limit_concurrency)
        if message := limits.validate():
            parser.error(message)
        service = ServiceSettings.of(
            settings(),
            serving_root=args.serving_root,
            refresh_seconds=args.refresh_seconds,
            policy=args.policy,
            **{
                k: getattr(args, k)
                for k in ("header_timeout", "body_timeout", "keep_alive_timeout", "limit_concurrency")
            },
        )
        return serve(service, host=args.host, port=args.port, workers=args.workers)
    if args.command in ("recommend", "interests"):
        from .commands.users import user_report

        return print(
            user_report(
                args.command,
                args.user_id,
                serving_root=args.serving_root,
                seed=getattr(args, "seed", None),
                policy=getattr(args, "policy", None),
                limit=getattr(args, "limit", 20),
            )
        )
    day = args.date or latest_partition()
    if args.command == "demo":
        from .commands.pipeline import run_demo

        run_demo(day, args.window_days, max(1, args.days))
        print()
        print(summary(day))
    elif args.command == "calibrate":
        from .commands.tuning import calibrate_alpha, calibrate_held_out

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
