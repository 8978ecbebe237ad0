"""pinnersage: run the PinnerSage graph, inspect it, tune it, evaluate it and serve it.

Every command first prints one line naming the source, the warehouse and the day(s) it works
on, and refuses a warehouse or folder built from another source. A mistake of yours (a bad
flag, a day never materialized) is one line and exit code 2; a failed run prints the failing
step, its message and the run to open in the UI (make dev), and the full trace with --verbose.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Callable
from datetime import date, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from .commands import RunFailed, UserError
from .commands.context import check_source, first_line, span
from .settings import Settings, SettingsError, settings

POLICIES = ["sampled", "proportional", "decay_average"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to look, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class Help(argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its help (unless the help says it); descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _number(kind: type, low: float | None = None, high: float | None = None, above: float | None = None) -> Callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be > {above}, got {text}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, got {text!r}") from None


positive = _number(int, low=1)
seconds = _number(float, above=0)

CALIBRATE = """three ways to choose alpha (the Ward threshold):
  pinnersage calibrate                 the synthetic world: cluster shape and recovery of its planted
                                       interests per alpha (no warehouse needed)
  pinnersage calibrate --warehouse     your materialized window: cluster shape per alpha
  pinnersage calibrate --split-day D   held-out recall and relevance per alpha on the actions from D on
                                       (materializes what it needs, like evaluate)"""


def build_parser() -> Parser:
    parser = Parser(prog="pinnersage", description=__doc__, formatter_class=Help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = Parser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="on failure, print the full trace")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=Parser)

    def command(name: str, summary: str, description: str | None = None, parents=()) -> Parser:
        return sub.add_parser(
            name,
            help=summary,
            description=description or summary,
            parents=[common, *parents],
            formatter_class=Help,
        )

    demo = command(
        "demo",
        "run the whole graph for some days and summarize the last",
        "Load the actions of the window in one run, run pinnersage_daily_job for --days days up to --date "
        "(as the schedule would), and print the summary of the last day.",
    )
    demo.add_argument("--date", type=_day, default=None, help="the last day (default: the newest day the source holds)")
    demo.add_argument("--days", type=positive, default=3, help="daily runs up to --date")
    demo.add_argument(
        "--window-days", type=_number(int, 1, 3650), default=None, help="days of history (default: params, 90)"
    )

    show = command("summary", "print what a materialized day holds")
    show.add_argument("--date", type=_day, default=None, help="the day (default: the newest materialized)")

    tuning = Parser(add_help=False)
    tuning.add_argument("--alpha", type=seconds, default=None, help="Ward threshold (default: params.alpha)")
    tuning.add_argument("--decay-lambda", type=_number(float, low=0), default=None, help="importance decay per day")
    tuning.add_argument(
        "--horizon-days",
        type=_number(int, 0, 3660),
        default=None,
        help="test days from the split day (default 7); 0 = up to the newest day the source holds",
    )
    tuning.add_argument("--min-train-actions", type=positive, default=None, help="history actions a user needs (5)")

    calibrate = command("calibrate", "sweep alpha, three ways (see calibrate --help)", CALIBRATE, parents=[tuning])
    calibrate.add_argument("--date", type=_day, default=None, help="the window's day (default: newest)")
    calibrate.add_argument("--alphas", default="0.6,0.8,1.0,1.2,1.4,1.6,1.8,2.0,2.4,3.0", help="values to sweep")
    calibrate.add_argument("--users", type=positive, default=2000, help="users of the synthetic sweep")
    calibrate.add_argument("--warehouse", action="store_true", help="sweep your materialized action_windows")
    calibrate.add_argument("--split-day", type=_day, default=None, help="held-out recall per alpha from this day")
    calibrate.add_argument("--seeds", type=positive, default=3, help="runs of each sampling model (--split-day)")
    calibrate.add_argument("--max-users", type=positive, default=1000, help="users evaluated (--split-day)")

    evaluate = command(
        "evaluate",
        "the offline evaluation of a split day (the paper's Tables 4-5, Figure 7)",
        "Train on the window before the split day, test on the actions from it on: PinnerSage against the "
        "paper's baselines, with 95% intervals. Materializes what the split needs.",
        parents=[tuning],
    )
    evaluate.add_argument(
        "--split-day", type=_day, default=None, help="default: 7 days before the newest day the source holds"
    )
    evaluate.add_argument("--seeds", type=positive, default=5, help="runs of each sampling model")
    evaluate.add_argument("--max-users", type=positive, default=1000, help="users evaluated (seeded sample)")
    evaluate.add_argument("--output", default=None, help="also copy the report here (docs/evaluation publishes it)")
    evaluate.add_argument(
        "--search", choices=["index", "exact"], default="index", help="the product's HNSW index, or exact search"
    )

    rec = command("recommend", "a user's recommendations from the newest serving snapshot")
    rec.add_argument("user_id", type=int)
    rec.add_argument("--seed", type=int, default=None, help="the sampling's seed (default: random)")
    rec.add_argument("--limit", type=positive, default=20, help="items to print (of up to the budget)")
    rec.add_argument("--policy", choices=POLICIES, default=None, help="default: the snapshot's")
    rec.add_argument("--serving-root", default=None, help="default: PINNERSAGE_SERVING_ROOT")

    intr = command("interests", "a user's interests (medoid pins with importance)")
    intr.add_argument("user_id", type=int)
    intr.add_argument("--serving-root", default=None, help="default: PINNERSAGE_SERVING_ROOT")

    srv = command(
        "serve",
        "the HTTP API (FastAPI on uvicorn)",
        "Serve recommendations from the newest serving snapshot, swapping in newer ones, and take events "
        "at once (docs/serving.md). Logs each request; Ctrl-C stops it.",
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    srv.add_argument("--port", type=_number(int, 1, 65535), default=8000, help="port to listen on")
    srv.add_argument("--serving-root", default=None, help="default: PINNERSAGE_SERVING_ROOT")
    srv.add_argument("--refresh-seconds", type=seconds, default=30.0, help="how often to look for a newer snapshot")
    srv.add_argument(
        "--policy", choices=POLICIES, default=None, help="for requests that name none (default: the snapshot's)"
    )
    srv.add_argument("--workers", type=positive, default=1, help="processes behind the one port (they share events)")
    srv.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default="info",
        help="the server's log level (uvicorn's; the access log is at info)",
    )
    srv.add_argument("--no-access-log", action="store_true", help="do not log each request")
    srv.add_argument("--header-timeout", type=seconds, default=10.0, help="seconds to the end of a request's headers")
    srv.add_argument("--body-timeout", type=seconds, default=30.0, help="seconds from the headers to the body's end")
    srv.add_argument("--keep-alive-timeout", type=seconds, default=5.0, help="seconds an idle connection stays open")
    srv.add_argument("--limit-concurrency", type=positive, default=1000, help="connections and requests per worker")
    srv.add_argument(
        "--experiment",
        default=None,
        help="run this experiment file (YAML: name, salt, arms, start, end; deploy/experiment.example.yaml) "
        "(default: PINNERSAGE_EXPERIMENT_PATH, or none)",
    )

    rep = command(
        "experiment-report",
        "an experiment's daily report: arms, volume, propensity, lifts",
        "Materialize experiment_report for a day (the traffic served from that day's snapshot: the day after it) "
        "and its sample-ratio check, and print the report (docs/experiments.md).",
    )
    rep.add_argument("--date", type=_day, default=None, help="the snapshot's day (default: the newest published)")
    rep.add_argument("--experiment", default=None, help="the experiment file (default: PINNERSAGE_EXPERIMENT_PATH)")

    sim = command(
        "simulate",
        "play synthetic users against a running service (experiments)",
        "Each of --users synthetic users asks the service for recommendations, looks at the first --items, and "
        "engages (posts repins and clicks) with a probability that grows with how well a pin matches its true "
        "interests in the synthetic world (docs/experiments.md says what it assumes). Prints a summary per arm. "
        "Needs the synthetic source: your own data has no true interests.",
    )
    sim.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    sim.add_argument("--users", type=positive, default=1000, help="synthetic users to play")
    sim.add_argument("--seed", type=_number(int, 0), default=0, help="which users, and their draws")
    sim.add_argument("--items", type=positive, default=20, help="items of each answer a user looks at")

    clean = command(
        "clean",
        "remove the warehouse and the folders the settings name",
        "Remove the warehouse file and the index, serving, exchange, event-log and report folders of the "
        "current settings (PINNERSAGE_DATA_ROOT and the paths under it), the service's event log included: "
        "to start over. Your input files are never touched.",
    )
    del clean
    return parser


def main(argv: list[str] | None = None) -> None:
    # Dagster's beta/preview notices about APIs used on purpose (definitions.py), whichever
    # module a command imports first
    warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview)")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        current = settings()  # every setting validated before any work
    except SettingsError as exc:
        parser.exit(2, f"pinnersage: {exc}\n")
    try:
        run(args, current)
    except UserError as exc:
        parser.exit(2, f"pinnersage {args.command}: {exc}\n")
    except RunFailed as failure:
        if args.verbose:
            print(failure.trace, file=sys.stderr)
        parser.exit(
            1,
            f"pinnersage {args.command}: {failure}\n"
            f"  run {failure.run_id}: open it in the Dagster UI (make dev) for the whole log"
            + ("" if args.verbose else "; --verbose prints the trace")
            + "\n",
        )
    except KeyboardInterrupt:
        parser.exit(130, f"pinnersage {args.command}: interrupted\n")
    except Exception as exc:  # a bug or an environment problem: one line, the trace on request
        if args.verbose:
            traceback.print_exc()
        parser.exit(
            1,
            f"pinnersage {args.command}: {type(exc).__name__}: {exc}"
            + ("" if args.verbose else " (--verbose prints the trace)")
            + "\n",
        )


def run(args: argparse.Namespace, current: Settings) -> None:
    if args.command == "clean":
        from .commands.housekeeping import clean

        print(first_line("clean", current, place=f"data root: {current.data_root}"))
        removed = clean(current)
        print("\n".join(f"removed {path}" for path in removed) or "nothing to remove")
    elif args.command == "demo":
        from .commands.pipeline import newest_source_day, run_demo
        from .commands.summary import summary

        day = args.date or newest_source_day()
        print(first_line("demo", current, days=span(day - timedelta(days=args.days - 1), day)), flush=True)
        check_source(current, folders=_artifact_folders(current))
        run_demo(day, args.window_days, args.days)
        print()
        print(summary(day))
    elif args.command == "summary":
        from .commands.summary import summary, summary_day

        check_source(current, folders=[current.index_root, current.serving_root])
        day = summary_day(args.date, current.duckdb_path)
        print(first_line("summary", current, days=span(day, day)))
        print(summary(day))
    elif args.command in ("evaluate", "calibrate"):
        _tuning(args, current)
    elif args.command == "serve":
        _serve(args, current)
    elif args.command == "experiment-report":
        from .commands.experiments import experiment_report, newest_served_day

        path = args.experiment or current.experiment_path
        if not path:
            raise UserError("no experiment: give --experiment PATH or set PINNERSAGE_EXPERIMENT_PATH")
        day = args.date or newest_served_day()
        print(first_line("experiment-report", current, days=f"snapshot {day}"), flush=True)
        check_source(current, folders=_artifact_folders(current))
        print(experiment_report(day, path))
    elif args.command == "simulate":
        from .commands.simulate import simulate

        print(first_line("simulate", current, warehouse=False, place=f"service: {args.url}"), flush=True)
        if current.source != "synthetic":
            raise UserError(
                "simulate plays the synthetic world's users with their true interests; PINNERSAGE_SOURCE=files has "
                "no ground truth: measure an experiment on your own data with real traffic (docs/experiments.md)"
            )
        print(simulate(current.synthetic_world(), args.url, args.users, args.seed, args.items))
    else:
        from .commands.users import user_report

        root = args.serving_root or current.serving_root
        print(first_line(args.command, current, warehouse=False, place=f"snapshots: {root}"))
        check_source(current, warehouse=False, folders=[root])
        print(
            user_report(
                args.command,
                args.user_id,
                serving_root=args.serving_root,
                seed=getattr(args, "seed", None),
                policy=getattr(args, "policy", None),
                limit=getattr(args, "limit", 20),
            )
        )


def _tuning(args: argparse.Namespace, current: Settings) -> None:
    from .commands.tuning import Tuning

    tuned = Tuning(args.alpha, args.decay_lambda, args.horizon_days, args.min_train_actions)
    if message := tuned.validate():
        raise UserError(message)
    if args.command == "evaluate":
        from .assets.evaluation import report_root
        from .commands.pipeline import newest_source_day
        from .commands.tuning import run_evaluation

        split_day = args.split_day or newest_source_day() - timedelta(days=7)
        print(first_line("evaluate", current, days=f"split day {split_day}"), flush=True)
        check_source(current, folders=[*_artifact_folders(current), report_root()])
        report_dir = run_evaluation(split_day, args.seeds, args.max_users, args.output, tuned, search=args.search)
        print(f"report: {report_dir / 'report.md'}")
        print((report_dir / "report.md").read_text())
        return
    from .commands.tuning import calibrate_alpha, calibrate_held_out

    if args.split_day is None and tuned != Tuning(alpha=args.alpha):
        raise UserError(
            "--decay-lambda, --horizon-days and --min-train-actions apply to a held-out sweep: add --split-day"
        )
    alphas = _alphas(args.alphas, args.alpha)
    if args.split_day:
        print(first_line("calibrate", current, days=f"split day {args.split_day}"), flush=True)
        check_source(current, folders=_artifact_folders(current))
        print(calibrate_held_out(args.split_day, alphas, args.seeds, args.max_users, tuned))
    elif args.warehouse:
        from .commands.tuning import calibration_day

        check_source(current)
        day = calibration_day(args.date)
        print(first_line("calibrate", current, days=f"day {day}"), flush=True)
        print(calibrate_alpha(day, alphas, args.users, warehouse=True))
    else:
        world = f"source: the synthetic world (seed 7, {args.users} users)"
        print(f"pinnersage calibrate · {world} · no warehouse · window ending {args.date or 'yesterday'}", flush=True)
        print(calibrate_alpha(args.date, alphas, args.users, warehouse=False))


def _serve(args: argparse.Namespace, current: Settings) -> None:
    from .provenance import stamp_folder
    from .serving.app import describe, serve
    from .serving.settings import ServiceSettings

    service = ServiceSettings.of(
        current,
        serving_root=args.serving_root,
        refresh_seconds=args.refresh_seconds,
        policy=args.policy,
        experiment_path=args.experiment,
        **{k: getattr(args, k) for k in ("header_timeout", "body_timeout", "keep_alive_timeout", "limit_concurrency")},
    )
    if service.experiment_path:
        from .core.experiment import ExperimentError, load_experiment

        try:
            load_experiment(service.experiment_path)
        except ExperimentError as exc:
            raise UserError(f"--experiment: {exc}") from None
    print(first_line("serve", current, warehouse=False, place=f"snapshots: {service.serving_root}"), flush=True)
    check_source(current, warehouse=False, folders=[f for f in (service.serving_root, service.events_root) if f])
    if service.events_root:
        stamp_folder(service.events_root, current.source_identity())  # raw_actions ingests only this source's
    print(describe(service, host=args.host, port=args.port, workers=args.workers), flush=True)
    serve(
        service,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=not args.no_access_log,
    )


def _artifact_folders(current: Settings) -> list[str]:
    return [current.index_root, current.serving_root]


def _alphas(text: str, extra: float | None) -> list[float]:
    try:
        alphas = sorted({float(a) for a in text.split(",")} | ({extra} if extra is not None else set()))
    except ValueError:
        raise UserError(f"--alphas: expected numbers separated by commas, got {text!r}") from None
    if not alphas or min(alphas) <= 0:
        raise UserError(f"--alphas: every alpha must be > 0, got {text!r}")
    return alphas


def _version() -> str:
    try:
        return version("pinnersage-dagster")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    main()
