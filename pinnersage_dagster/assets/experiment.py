"""The daily report of an online experiment (the paper's Table 3): what each arm's users were
shown and what they did next."""

import json
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb as duckdb_lib
import pandas as pd
from dagster_duckdb import DuckDBResource
from pydantic import Field

from ..config import PinnerSageParams
from ..core.events import log_path
from ..core.experiment import CONTROL, experiment_report as build_report, load_experiment
from ..partitions import daily_partitions, partition_days
from ..pictures import lift_intervals, markdown_image
from ..resources import EventLogStore
from ..serving.event_log import iter_day
from ..serving.impressions import impression_days, prune_impressions, read_impressions
from ..settings import settings
from .constants import DUCKDB_POOL
from .snapshot import serving_snapshot

# the traffic of snapshot D is served on D+1 (and into D+2 until D+1's snapshot is published),
# and on any later day the service still served it (the daily job failed, or the snapshot was
# served again); engagements are attributed up to 24 hours after the last impression
TRAFFIC_DAYS = (1, 2)
ENGAGEMENT_DAYS = (1, 2, 3)


def report_root() -> str:
    return str(Path(settings().reports_root) / "experiment")


class ExperimentConfig(dg.Config):
    experiment_path: str = Field(
        default_factory=lambda: settings().experiment_path or "",
        description="The experiment file the service ran (PINNERSAGE_EXPERIMENT_PATH).",
    )
    impressions_root: str = Field(default_factory=lambda: settings().impressions_root)
    report_root: str = Field(default_factory=report_root, description="Where report.json and report.md go.")


@dg.asset(
    group_name="experiments",
    partitions_def=daily_partitions,
    deps=[serving_snapshot],
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
)
def experiment_report(
    context: dg.AssetExecutionContext,
    config: ExperimentConfig,
    duckdb: DuckDBResource,
    event_log: EventLogStore,
    params: PinnerSageParams,
) -> dg.MaterializeResult:
    """Partition D: the traffic served from snapshot D (during D+1, or later while it was the
    newest the service could load), per arm: exposed users, impressions, engaged users,
    engagements, engagements on served pins, volume, propensity and served-pin CTR, with lifts
    against decay_average (95% intervals over users) and the sample ratio mismatch p-value.
    Before that day is over it reports the traffic so far; re-materializing replaces it.
    Engagements are the service's events and the source's actions (raw_actions)."""
    if not config.experiment_path:
        raise dg.Failure("no experiment: set PINNERSAGE_EXPERIMENT_PATH to the file the service ran")
    experiment = load_experiment(config.experiment_path)
    (day,) = partition_days(context)
    impressions, unreadable = _snapshot_impressions(config.impressions_root, day)
    mine = (
        impressions[(impressions["experiment"] == experiment.name) & (impressions["snapshot"] == day.isoformat())]
        if not impressions.empty
        else impressions
    )
    outside = int(mine["arm"].isna().sum()) if not mine.empty else 0
    mine = mine[mine["arm"].notna()] if not mine.empty else mine
    shown = mine.assign(cold_start=mine["source"] == "popular")[["user_id", "arm", "ts", "cold_start", "pin_ids"]]
    engagements = _engagements(duckdb, event_log.root, day, shown["user_id"].unique(), last_shown=shown["ts"].max())
    report = build_report(
        experiment,
        day.isoformat(),
        shown,
        engagements,
        impressions_outside_experiment=outside,
        unreadable_impression_lines=unreadable,
    )
    out = Path(config.report_root) / day.isoformat()
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render(report))
    removed = prune_impressions(config.impressions_root, keep_days=params.retention_days, today=date.today())
    context.log.info(
        f"{day}: {sum(a['exposed_users'] + a['cold_start']['exposed_users'] for a in report['arms'].values())} "
        f"exposed users, SRM p = {report['srm_p_value']:.3g}; report at {out / 'report.md'}"
    )
    picture = lift_intervals(report["lifts"], title=f"{experiment.name}: lift over {CONTROL}, {day}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out / "report.md")),
            "experiment": experiment.name,
            "srm_p_value": report["srm_p_value"],
            "exposed_users": report["exposed_users_all"],
            "arms": dg.MetadataValue.md(arms_table(report)),
            "lifts": markdown_image(picture, "lifts over decay_average") if picture else "no lifts (no control users)",
            "impressions_outside_experiment": outside,
            "unreadable_impression_lines": unreadable,
            "impression_files_removed": removed,
        }
    )


def _snapshot_impressions(root: str, day: date) -> tuple[pd.DataFrame, int]:
    """The impressions of the days snapshot ``day`` is served (D+1, D+2), and of every later day
    whose file holds some of its traffic."""
    usual = [day + timedelta(d) for d in TRAFFIC_DAYS]
    impressions, unreadable = read_impressions(root, usual)
    later = [d for d in impression_days(root) if d > usual[-1]]
    if not later:
        return impressions, unreadable
    stale, stale_unreadable = read_impressions(root, later, mentioning=day.isoformat())
    frames = [f for f in (impressions, stale) if not f.empty] or [impressions]
    return pd.concat(frames, ignore_index=True), unreadable + stale_unreadable


def _engagements(duckdb: DuckDBResource, events_root: str, day: date, users, last_shown) -> pd.DataFrame:
    """Distinct (user, pin, action, ts) of the exposed users in the days the traffic can reach
    (through the day after the last impression): the service's event log and the warehouse's
    raw_actions (which holds the events it ingested)."""
    last = day + timedelta(ENGAGEMENT_DAYS[-1])
    if not pd.isna(last_shown):  # a stale snapshot's traffic: through the day after its last impression
        last = max(last, last_shown.date() + timedelta(1))
    days = [day + timedelta(d) for d in range(ENGAGEMENT_DAYS[0], (last - day).days + 1)]
    wanted = set(int(u) for u in users)
    rows = [
        (e.user_id, e.pin_id, e.action, e.ts)
        for d in days
        if log_path(events_root, d).exists()
        for _, _, e in iter_day(log_path(events_root, d))
        if e is not None and e.user_id in wanted
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "pin_id", "action", "ts"])
    if wanted:
        try:
            with duckdb.get_connection() as conn:
                conn.register("exposed", pd.DataFrame({"user_id": sorted(wanted)}))
                batch = conn.execute(
                    "SELECT user_id, pin_id, action, ts FROM raw_actions JOIN exposed USING (user_id) "
                    "WHERE partition_date BETWEEN ? AND ?",
                    [days[0], days[-1]],
                ).df()
            frame = pd.concat([frame, batch], ignore_index=True)
        except duckdb_lib.CatalogException:
            pass  # no raw_actions table yet: the event log alone
    if frame.empty:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "pin_id": pd.Series(dtype="int64"), "ts": []})
    frame["ts"] = pd.to_datetime(frame["ts"])
    return frame.drop_duplicates(["user_id", "pin_id", "action", "ts"])[["user_id", "pin_id", "ts"]]


def arms_table(report: dict) -> str:
    head = (
        "| arm | exposed users | impressions | engaged users | engagements | on served pins | volume | "
        "propensity | served CTR | cold-start users (engaged) |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {arm} | {a['exposed_users']} | {a['impressions']} | {a['engaged_users']} | {a['engagements']} | "
        f"{a['served_engagements']} | {a['volume']:.3f} | {a['propensity']:.3f} | {a['served_ctr']:.4f} | "
        f"{a['cold_start']['exposed_users']} ({a['cold_start']['engaged_users']}) |"
        for arm, a in report["arms"].items()
    ]
    return "\n".join([head, *rows])


def _interval(lift: dict) -> str:
    if lift["lift"] is None:
        return "n/a"
    return f"{lift['lift']:+.1%} [{lift['low']:+.1%}, {lift['high']:+.1%}]"


def render(report: dict) -> str:
    experiment = report["experiment"]
    lines = [
        f"# Experiment {experiment['name']}, traffic of snapshot {report['partition']}",
        "",
        f"Arms and weights: {', '.join(f'{a} {w}' for a, w in experiment['arms'].items())}. "
        f"Sample ratio mismatch p = {report['srm_p_value']:.3g} (the check fails below 0.001). Impressions "
        f"outside the experiment (a request that named its policy): {report['impressions_outside_experiment']}; "
        f"unreadable impression lines: {report['unreadable_impression_lines']}. Users shown popular pins (no "
        "interests: cold start) are counted apart.",
        "",
        arms_table(report),
        "",
        f"## Lift over {CONTROL} (95% bootstrap intervals over users)",
        "",
        "| arm | volume (engagements per exposed user) | propensity (share of exposed users who engaged) |",
        "|---|---|---|",
        *[
            f"| {arm} | {_interval(lift['volume'])} | {_interval(lift['propensity'])} |"
            for arm, lift in report["lifts"].items()
        ],
    ]
    return "\n".join(lines) + "\n"
