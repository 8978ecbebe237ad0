"""The offline evaluation and the alpha calibration, from the command line."""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ..reporting import frame_markdown
from ..settings import settings
from .pipeline import QUIET, dagster_instance, first_partition


@dataclass(frozen=True)
class Tuning:
    """What a user tunes from the command line, validated before any work starts."""

    alpha: float | None = None
    decay_lambda: float | None = None
    horizon_days: int | None = None
    min_train_actions: int | None = None

    def params(self):
        from ..config import PinnerSageParams

        fields = {"alpha": self.alpha, "decay_lambda": self.decay_lambda}
        # the deployment's parameters (PINNERSAGE_PARAMS), with what the command line tunes on top
        return PinnerSageParams(**{**settings().params, **{k: v for k, v in fields.items() if v is not None}})

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

    from ..assets import all_assets
    from ..assets.evaluation import HORIZON_DAYS, horizon_to_newest, report_root
    from ..definitions import defs

    warnings.filterwarnings("ignore")
    instance = dagster_instance()
    resources = {**(defs.resources or {}), "params": tuning.params()}
    before = split_day - timedelta(days=1)
    horizon = HORIZON_DAYS if tuning.horizon_days is None else tuning.horizon_days
    first = max(before - timedelta(days=resources["params"].window_days), first_partition())
    if horizon == 0:  # up to the newest day the source holds, and not one empty day beyond it
        try:
            horizon = horizon_to_newest(resources["source"].process_config_and_initialize(), split_day)
        except ValueError as exc:
            sys.exit(f"--horizon-days 0: {exc}")
    last = split_day + timedelta(days=horizon - 1)
    if last >= datetime.now(UTC).date():
        sys.exit(f"the test window ends {last}: pick a split day at least {horizon} days before today")
    config = tuning.evaluation(
        seeds=seeds, max_users=max_users, search=search, **({"alphas": alphas} if alphas else {})
    )
    steps: list[tuple[str, dict[str, Any]]] = [
        (
            f"actions {first} .. {last} in one range run",
            dict(
                selection=dg.AssetSelection.assets("raw_actions"),
                tags={
                    "dagster/asset_partition_range_start": first.isoformat(),
                    "dagster/asset_partition_range_end": last.isoformat(),
                },
            ),
        ),
        (
            f"the daily graph for {before}",
            dict(
                selection=dg.AssetSelection.groups("pinnersage") - dg.AssetSelection.assets("raw_actions"),
                partition_key=before.isoformat(),
            ),
        ),
        (
            f"offline_evaluation for split day {split_day} ({seeds} seeds, <= {max_users} users)",
            dict(
                selection=dg.AssetSelection.assets("offline_evaluation"),
                partition_key=split_day.isoformat(),
                run_config={**QUIET, "ops": {"offline_evaluation": {"config": config}}},
            ),
        ),
    ]
    for number, (label, kwargs) in enumerate(steps, 1):
        print(f"[{number}/{len(steps)}] {label}", flush=True)
        kwargs.setdefault("run_config", QUIET)
        result = dg.materialize(all_assets, resources=resources, instance=instance, raise_on_error=False, **kwargs)
        if not result.success:
            sys.exit(f"step {number} failed; see the run in the Dagster UI (make dev)")
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


def calibrate_alpha(day: date, alphas: list[float], users: int, warehouse: bool) -> str:
    from ..core.calibration import alpha_sweep, synthetic_window
    from ..core.synthetic import SyntheticWorld
    from ..warehouse import DAY_PINS_SQL, embedding_matrix, query_arrow

    if warehouse:
        database = settings().duckdb_path
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
