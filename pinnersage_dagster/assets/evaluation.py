"""The offline evaluation of each split day (paper, section 5.3; Tables 4-5, Figure 7)."""

import base64
import json
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import dagster as dg
import duckdb as duckdb_lib
import pandas as pd
from dagster_duckdb import DuckDBResource
from pydantic import Field

from .. import guards
from ..config import PinnerSageParams
from ..core.evaluation import exact_search
from ..core.offline import BASELINE, PINNERSAGE, run_offline
from ..evaluation_report import curve_png, index_search, load_split, render_markdown, report_json
from ..partitions import daily_partitions, partition_days
from ..resources import DataSource, IndexStore
from ..settings import settings
from .actions import action_windows, raw_actions
from .constants import DUCKDB_POOL
from .index import pin_index

HORIZON_DAYS = 7  # test days from the split day on; the partition mapping below is built from it


def report_root() -> str:
    """Where evaluation reports go: ``offline_evaluation/<split day>/`` under the reports setting."""
    return str(Path(settings().reports_root) / "offline_evaluation")


class EvaluationConfig(dg.Config):
    horizon_days: int = Field(
        default=HORIZON_DAYS,
        ge=0,
        le=3660,
        description="Test days from the split day on; 0 = every day up to the newest the source holds. The "
        "partition mapping declares the default horizon; a longer one reads raw_actions days it does not declare.",
    )
    alphas: list[float] = Field(default=[0.6, 1.0, 1.4, 1.8, 2.4, 3.0], description="The alpha sweep's values.")
    search: Literal["index", "exact"] = Field(
        default="index",
        description="Retrieve through the product's HNSW index of d-1, or exactly over the whole catalog.",
    )
    min_train_actions: int = Field(default=5, ge=1, description="History actions a user needs to be evaluated.")
    max_users: int = Field(default=1000, ge=1, description="Evaluate at most this many users (seeded sample).")
    seeds: int = Field(default=5, ge=1, description="Runs of every sampling model; tables give mean and spread.")
    relevance_threshold: float = Field(default=0.8, gt=0, le=1, description="Cosine for 'relevant' (paper: 0.8).")
    report_root: str = Field(default_factory=report_root, description="Where report.md and curve.png are written.")


@dg.asset(
    group_name="evaluation",
    partitions_def=daily_partitions,
    deps=[
        dg.AssetDep(action_windows, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)),
        dg.AssetDep(pin_index, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)),
        dg.AssetDep(
            raw_actions, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=0, end_offset=HORIZON_DAYS - 1)
        ),
    ],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    pool=DUCKDB_POOL,
    kinds={"duckdb", "matplotlib"},
)
def offline_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    duckdb: DuckDBResource,
    params: PinnerSageParams,
    index_store: IndexStore,
    source: DataSource,
) -> dg.MaterializeResult:
    """For split day d: PinnerSage and the paper's baselines trained on the window of d-1 and
    tested on the actions of [d, d+7): retrieval (relevance, recall), ranking (R-precision,
    reciprocal rank) and diversity, as lifts over the last-pin model, and Figure 7's curve."""
    for day in partition_days(context):
        horizon = config.horizon_days or horizon_to_newest(source, day)
        with duckdb.get_connection() as conn:
            guards.publish_into(conn, config.report_root, duckdb.database)
            users = load_split(conn, day, horizon, config.min_train_actions, config.max_users, seed=0)
            topic_of = _planted_topics(conn)
        search = (
            exact_search(users.catalog_ids, users.catalog_x)
            if config.search == "exact"
            else index_search(index_store.partition_dir((day - timedelta(days=1)).isoformat()))
        )
        report = run_offline(
            users,
            search,
            alpha=params.alpha,
            decay_lambda=params.decay_lambda,
            seeds=config.seeds,
            threshold=config.relevance_threshold,
            alphas=tuple(config.alphas),
            topic_of=topic_of,
            progress=context.log.info,
        )
        out = Path(config.report_root) / day.isoformat()
        out.mkdir(parents=True, exist_ok=True)
        png = curve_png(report)
        (out / "curve.png").write_bytes(png)
        markdown = render_markdown(report, day, horizon, type(source).__name__, "curve.png", config.search)
        (out / "report.md").write_text(markdown)
        summary = report_json(report, day, horizon, config.search, type(source).__name__, config.min_train_actions)
        (out / "report.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
        context.log.info(f"{day}: evaluated {report.users} users; report at {out / 'report.md'}")
    main, base = report.table.loc[PINNERSAGE], report.table.loc[BASELINE]
    image = base64.b64encode(png).decode()
    return dg.MaterializeResult(
        metadata={
            "horizon_days": horizon,
            "search": config.search,
            "recall_lift_of_proportional_over_sampled": round(float(report.policy.iloc[0]["recall_lift"]), 4)
            if report.policy is not None
            else "n/a",
            "alpha": params.alpha,
            "decay_lambda": params.decay_lambda,
            "users": report.users,
            "seeds": report.seeds,
            "relevance_lift_over_last_pin": round(float(main["relevance_lift"]), 4),
            "recall_lift_over_last_pin": round(float(main["recall_lift"]), 4),
            "pinnersage_relevance": round(float(main["relevance"]), 4),
            "last_pin_relevance": round(float(base["relevance"]), 4),
            "calibrated_threshold": round(report.calibrated, 4),
            "report": dg.MetadataValue.md(
                markdown.replace(
                    "![diversity-relevance curve](curve.png)",
                    f"![diversity-relevance curve](data:image/png;base64,{image})",
                )
            ),
            "path": dg.MetadataValue.path(str(out / "report.md")),
            "report_json": dg.MetadataValue.path(str(out / "report.json")),
        }
    )


def horizon_to_newest(source: DataSource, split_day: date) -> int:
    """Test days from ``split_day`` to the newest day the source holds (horizon 0)."""
    newest = source.newest_day(pd.Timestamp.now(tz="UTC").tz_localize(None))
    if newest is None or newest < split_day:
        raise ValueError(f"the source holds no day on or after the split day {split_day} (newest: {newest})")
    return (newest - split_day).days + 1


def _planted_topics(conn: duckdb_lib.DuckDBPyConnection):
    truth = conn.execute("SELECT pin_id, topic FROM synthetic_pin_truth").df()
    return truth.set_index("pin_id")["topic"] if len(truth) else None
