"""The offline evaluation and the alpha calibration, from the command line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ..reporting import frame_markdown
from ..settings import settings
from . import UserError
from .context import progress
from .pipeline import Runner, first_partition, latest_partition
from .summary import materialized_days


@dataclass(frozen=True)
class Tuning:
    """What a user tunes from the command line, validated before any work starts."""

    alpha: float | None = None
    decay_lambda: float | None = None
    horizon_days: int | None = None
    min_train_actions: int | None = None

    def overrides(self) -> dict[str, float]:
        """What the command line sets of the model's parameters."""
        fields = {"alpha": self.alpha, "decay_lambda": self.decay_lambda}
        return {k: v for k, v in fields.items() if v is not None}

    def params(self):
        from ..config import PinnerSageParams

        # the deployment's parameters (PINNERSAGE_PARAMS), with what the command line tunes on top
        return PinnerSageParams(**{**settings().params, **self.overrides()})

    def evaluation(self, **extra) -> dict:
        from ..assets.evaluation import EvaluationConfig

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
    split_day: date,
    seeds: int,
    max_users: int,
    output: str | None,
    tuning: Tuning = Tuning(),
    alphas: list[float] | None = None,
    search: str = "index",
) -> Path:
    """Materialize what a split needs (history, the day-before graph), then offline_evaluation.
    Returns the report's folder."""
    import shutil

    import dagster as dg

    from ..assets.evaluation import HORIZON_DAYS, horizon_to_newest, report_root
    from ..definitions import defs

    params = tuning.params()
    before = split_day - timedelta(days=1)
    horizon = HORIZON_DAYS if tuning.horizon_days is None else tuning.horizon_days
    first = max(before - timedelta(days=params.window_days), first_partition())
    if horizon == 0:  # up to the newest day the source holds, and not one empty day beyond it
        try:
            horizon = horizon_to_newest((defs.resources or {})["source"], split_day)
        except ValueError as exc:
            raise UserError(f"--horizon-days 0: {exc}") from None
    last = split_day + timedelta(days=horizon - 1)
    if last >= datetime.now(UTC).date():
        raise UserError(f"the test window ends {last}: pick a split day at least {horizon} days before today")
    config = tuning.evaluation(
        seeds=seeds, max_users=max_users, search=search, **({"alphas": alphas} if alphas else {})
    )
    graph = dg.AssetSelection.groups("pinnersage") - dg.AssetSelection.assets("raw_actions")
    daily = sorted(key.to_user_string() for key in graph.resolve(defs.resolve_asset_graph()))
    runner = Runner(steps=3, params=tuning.overrides())
    runner.assets(
        f"raw_actions of {first} .. {last} in one range run",
        ["raw_actions"],
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
    )
    runner.assets(f"the daily graph for {before}", daily, partition_key=before.isoformat())
    runner.assets(
        f"offline_evaluation for split day {split_day} ({seeds} seeds, <= {max_users} users)",
        ["offline_evaluation"],
        partition_key=split_day.isoformat(),
        ops={"offline_evaluation": {"config": config}},
    )
    report_dir = Path(report_root()) / split_day.isoformat()
    if output:
        target = Path(output)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(report_dir / "report.md", target / "offline-evaluation.md")
        shutil.copy(report_dir / "curve.png", target / "curve.png")
        shutil.copy(report_dir / "report.json", target / "offline-evaluation.json")
        print(f"copied to {target / 'offline-evaluation.md'}")
    return report_dir


def calibrate_held_out(split_day: date, alphas: list[float], seeds: int, max_users: int, tuning: Tuning) -> str:
    """The alpha sweep of the offline evaluation on your data: recall and relevance per alpha."""
    report_dir = run_evaluation(split_day, seeds, max_users, None, tuning, alphas=alphas)
    sweep = pd.DataFrame(json.loads((report_dir / "report.json").read_text())["alpha_sweep"])
    return f"held-out alpha sweep for split day {split_day} (report: {report_dir / 'report.md'})\n\n" + frame_markdown(
        sweep, max_rows=len(sweep)
    )


def calibrate_alpha(day: date | None, alphas: list[float], users: int, warehouse: bool) -> str:
    """The alpha sweep on a window: the synthetic world's (with recovery of its planted
    interests), or a materialized ``action_windows`` partition of the warehouse."""
    from ..core.calibration import alpha_sweep, synthetic_window
    from ..core.synthetic import SyntheticWorld
    from ..warehouse import DAY_PINS_SQL, embedding_matrix, query_arrow

    if warehouse:
        database = settings().duckdb_path
        day = calibration_day(day)
        with duckdb.connect(database, read_only=True) as conn:
            pairs = conn.execute(
                "SELECT DISTINCT user_id, pin_id FROM action_windows WHERE partition_date = ? ORDER BY ALL", [day]
            ).fetchnumpy()
            pins = query_arrow(conn, DAY_PINS_SQL.format(users="") + " ORDER BY pin_id", [day])
        rows = np.searchsorted(pins.column("pin_id").to_numpy(), pairs["pin_id"])
        sweep = alpha_sweep(
            pairs["user_id"], pairs["pin_id"], embedding_matrix(pins)[rows], alphas, progress=progress("sweep")
        )
        title = f"alpha sweep on action_windows of {day} ({database})"
    else:
        day = day or latest_partition()
        world = SyntheticWorld(n_users=users)
        say = progress("sweep")
        say(f"the synthetic window ending {day} ({users} users)")
        user_ids, pin_ids, embeddings, topics = synthetic_window(world, day)
        sweep = alpha_sweep(user_ids, pin_ids, embeddings, alphas, labels=topics, progress=say)
        title = f"alpha sweep on the synthetic world (seed {world.seed}, {users} users, window ending {day})"
    return f"{title}\n\n{frame_markdown(sweep, max_rows=len(sweep))}"


def calibration_day(day: date | None) -> date:
    """The window ``calibrate --warehouse`` sweeps (see ``_calibration_day``)."""
    database = settings().duckdb_path
    days = materialized_days(database, "action_windows")
    with duckdb.connect(database, read_only=True) as conn:
        return _calibration_day(conn, database, day, days)


def _calibration_day(conn: duckdb.DuckDBPyConnection, database: str, day: date | None, days: list[date]) -> date:
    """The day asked for if its window was materialized against the current catalog; by default
    the newest such day."""
    if not days:
        raise UserError(f"no action_windows partition in {database}: run `pinnersage demo` first")
    if day is None:
        usable = [d for d in reversed(days) if _same_catalog(conn, d)]
        if not usable:
            raise UserError(
                f"the catalog (pins) was rebuilt since every materialized window was made: "
                f"run `pinnersage demo --date {days[-1]} --days 1` first"
            )
        return usable[0]
    if day not in days:
        newest = next((d for d in reversed(days) if _same_catalog(conn, d)), None)
        instead = f", or `pinnersage calibrate --warehouse --date {newest}`" if newest else ""
        raise UserError(
            f"action_windows of {day} was never materialized in {database}: "
            f"run `pinnersage demo --date {day} --days 1`{instead}"
        )
    if not _same_catalog(conn, day):
        raise UserError(
            f"the catalog (pins) was rebuilt since action_windows of {day} was made (by a later run, such as "
            f"an evaluation): run `pinnersage demo --date {day} --days 1` first"
        )
    return day


def _same_catalog(conn: duckdb.DuckDBPyConnection, day: date) -> bool:
    """Whether the window's pins are those of the current catalog (a later run, an evaluation of
    another day say, may have rebuilt the catalog since)."""
    from .. import guards

    window, catalog = guards.get(conn, "action_windows", day), guards.get(conn, "pins")
    return window is not None and catalog is not None and window.inputs.get("pins_ids") == catalog.inputs.get("ids")
