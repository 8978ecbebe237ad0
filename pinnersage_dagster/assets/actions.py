"""Daily action events and the 90-day window of each day."""

from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from .. import guards
from ..action_log import Span
from ..config import PinnerSageParams
from ..core.contract import Validated, validate_actions
from ..core.plausibility import day_volume, foreign_rows
from ..core.retention import served_partitions
from ..partitions import daily_partitions, partition_days, window_mapping
from ..readers import day_bounds
from ..reporting import table_schema
from ..resources import DataSource, EventLogStore, ServingStore
from ..service_events import (
    claimed_events,
    claimed_ranges,
    migrate_legacy_ledger,
    new_claims,
    prune_event_logs,
    record_claims,
)
from ..warehouse import (
    TABLES,
    WINDOW_SQL,
    ensure_tables,
    held_elsewhere,
    replace_partition_from_query,
    replace_partitions,
    transaction,
)
from .candidates import pins
from .constants import DUCKDB_POOL, GROUP

IN_WINDOW = "partition_date BETWEEN $first AND $day AND ts >= $first AND ts < $day + INTERVAL 1 DAY"
WINDOW_STATS_SQL = f"""
    WITH eligible AS (
        SELECT user_id, count(*) AS n
        FROM raw_actions r SEMI JOIN pins p ON r.pin_id = p.pin_id
        WHERE {IN_WINDOW} GROUP BY user_id)
    SELECT
        (SELECT count(*) FROM raw_actions WHERE {IN_WINDOW}),
        coalesce(sum(n), 0), count(*), count(*) FILTER (WHERE n > $cap), coalesce(sum(greatest(n - $cap, 0)), 0),
        (SELECT count(*) FROM action_windows WHERE partition_date = $day)
    FROM eligible
"""


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    # loading a day is cheap I/O: a 90-day history load is one run, not 90, and reads the source once
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
)
def raw_actions(
    context: dg.AssetExecutionContext,
    duckdb: DuckDBResource,
    source: DataSource,
    event_log: EventLogStore,
    serving_store: ServingStore,
    params: PinnerSageParams,
) -> dg.MaterializeResult:
    """The valid repin/click events of partition day D: the source's rows of D (ts in [D, D+1)
    UTC), and the recommendation service's events that the run of D claimed from its event logs.

    The run of D claims every byte no run has claimed yet of the logs of D and earlier days: D's
    own log, and late events that earlier logs gained after their day's run (their ts stays in
    their own day; windows count them from D on). A re-run of D validates all of D's claimed
    events again, from the warehouse's copy (``service_events``), and claims what is new; each
    event reaches the warehouse exactly once (docs/reliability.md).

    Rows that break the contract (bad ids or action, bad or out-of-day timestamps, pins the
    source's catalog does not hold, an event already kept, here or in another partition) go to
    ``raw_actions_quarantine`` with their reason, file and line. With a log spanning many days,
    the first partition also quarantines the log's rows before it or without a usable ts, and
    the newest partition its rows in the future.
    """
    with duckdb.get_connection() as conn:
        ensure_tables(conn)
        guards.require_source(conn, source.identity(), duckdb.database)
    if event_log.ingest:
        guards.events_of_source(event_log.root, source.identity())
    known_ids, created_at = source.known_pins() or (None, None)
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    first = daily_partitions.start.date()
    span = Span(
        days=partition_days(context),
        first_partition=first,
        newest_partition=_newest_partition(),
        now=now,
    )
    logs = Path(event_log.root)
    if event_log.ingest:
        with duckdb.get_connection() as conn:
            ensure_tables(conn)
            migrate_legacy_ledger(conn, logs)
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    per_day, claimed_now, users = {}, [], set()
    versions: dict[date, str] = {}
    accepted_changes: list[str] = []
    for day, rows in source.read_actions(span):
        start, end = day_bounds(day)
        claims = []
        if event_log.ingest:
            with duckdb.get_connection() as conn:
                ensure_tables(conn)
                claims = new_claims(logs, day, claimed_ranges(conn))  # reads the logs with no connection held
        with duckdb.get_connection() as conn:
            ensure_tables(conn)
            with transaction(conn):
                record_claims(conn, day, claims)
                events, unreadable = claimed_events(conn, day, logs) if event_log.ingest else (None, None)
                combined = rows if events is None or events.empty else pd.concat([rows, events], ignore_index=True)
                row_day = combined["log_day"] if "log_day" in combined else pd.Series(pd.NA, index=combined.index)
                row_start = pd.to_datetime(row_day.fillna(day)).astype("datetime64[us]")
                validated = validate_actions(
                    combined,
                    day_start=row_start,
                    day_end=row_start + pd.Timedelta(days=1),
                    now=now,
                    known_pin_ids=known_ids,
                    pins_created_at=created_at,
                    first_start=day_bounds(first)[0],
                )
                validated = keep_once(conn, validated, day)
                quarantine = (
                    validated.quarantine
                    if unreadable is None or unreadable.empty
                    else pd.concat([validated.quarantine, unreadable], ignore_index=True)
                )
                day_users = int(validated.accepted["user_id"].nunique())
                accepted_change = guards.plausible(
                    context,
                    _implausible_day(conn, day, rows, validated, day_users, params),
                    params.accept_implausible_inputs,
                )
                if accepted_change:
                    accepted_changes.append(accepted_change)
                replace_partitions(
                    conn, "raw_actions", validated.accepted.assign(partition_date=day), day, day, atomic=False
                )
                replace_partitions(
                    conn, "raw_actions_quarantine", quarantine.assign(partition_date=day), day, day, atomic=False
                )
                version, _ = guards.table_version(conn, "raw_actions", "user_id, pin_id, action, ts", day)
                guards.record(
                    conn,
                    "raw_actions",
                    day,
                    version,
                    {"users": day_users, "source_rows": len(rows), "accepted_implausible": accepted_change},
                    len(validated.accepted),
                )
                versions[day] = version
        n_events = 0 if events is None or unreadable is None else len(events) + len(unreadable)
        log_files = set() if events is None else set(events["source"])
        totals.update(
            {
                "read": len(rows) + n_events,
                "from_source": len(rows),
                "from_events": n_events,
                "late": 0 if events is None else int((events["log_day"] < day).sum()),
                "accepted": len(validated.accepted),
                "quarantined": len(quarantine),
                "events_in_source": int(
                    (
                        validated.quarantine["reason"].eq("duplicate_event")
                        & validated.quarantine["source"].isin(log_files)
                    ).sum()
                ),
                "claimed_lines": sum(len(c.lines) for c in claims),
            }
        )
        reasons.update(validated.reasons)
        if unreadable is not None and len(unreadable):
            reasons["unreadable_event_line"] += len(unreadable)
        claimed_now += [
            f"{c.file} bytes {c.start}..{c.end} (lines {c.first_line}..{c.first_line + len(c.lines) - 1})"
            for c in claims
        ]
        per_day[str(day)] = len(validated.accepted)
        users.update(validated.accepted["user_id"].unique().tolist())
    if totals["read"] != totals["accepted"] + totals["quarantined"]:  # the accounting identity: nothing is lost
        raise RuntimeError(
            f"rows read {totals['read']} != accepted {totals['accepted']} + quarantined {totals['quarantined']}"
        )
    removed_logs = []
    if event_log.ingest:
        with duckdb.get_connection() as conn:
            removed_logs = prune_event_logs(
                conn,
                logs,
                keep_days=params.retention_days,
                today=now.date(),
                served=served_partitions(Path(serving_store.root)),
            )
    return dg.MaterializeResult(
        data_version=guards.data_version(context, next(iter(versions.values()), "0-0")),
        metadata={
            "days": len(per_day),
            "version": next(iter(versions.values())) if len(versions) == 1 else f"{len(versions)} days",
            "accepted_implausible": accepted_changes or "no",
            "rows_read": totals["read"],
            "rows_read_from_source": totals["from_source"],
            "rows_read_from_service_events": totals["from_events"],
            "late_service_events": totals["late"],
            "service_events_already_in_source": totals["events_in_source"],
            "event_log_lines_claimed": totals["claimed_lines"],
            "event_log_claims": claimed_now if len(claimed_now) <= 31 else f"{len(claimed_now)} claims",
            "event_logs_removed_by_retention": removed_logs,
            "dagster/row_count": totals["accepted"],
            "rows_quarantined": totals["quarantined"],
            "quarantine_reasons": dict(sorted(reasons.items())),
            "users": len(users),
            "empty_days": sum(1 for n in per_day.values() if n == 0),
            "accepted_per_day": per_day if len(per_day) <= 31 else "many",
            "dagster/column_schema": table_schema(TABLES["raw_actions"]),
        },
    )


def _newest_partition() -> date:
    window = daily_partitions.get_last_partition_window()
    if window is None:
        raise dg.Failure(f"the deployment's first partition {daily_partitions.start.date()} is in the future")
    return window.start.date()


PREVIOUS_DAYS_SQL = """
    SELECT rows, CAST(json_extract(inputs, '$.users') AS BIGINT) FROM lineage
    WHERE asset = 'raw_actions' AND partition_date BETWEEN ? AND ? AND rows > 0
"""


def _implausible_day(
    conn, day: date, rows: pd.DataFrame, validated: Validated, users: int, params: PinnerSageParams
) -> str | None:
    """A day file of another day, or a day far below the 7 days before it (``core.plausibility``)."""
    from_source = validated.quarantine["source"].isin(set(rows["source"])) if len(rows) else None
    outside = (
        0
        if from_source is None
        else int((from_source & validated.quarantine["reason"].eq("ts_outside_partition")).sum())
    )
    foreign = foreign_rows(day, outside, len(rows), str(rows["source"].iloc[0]) if len(rows) else "")
    before = conn.execute(PREVIOUS_DAYS_SQL, [day - timedelta(days=7), day - timedelta(days=1)]).fetchall()
    return foreign or day_volume(
        day, len(validated.accepted), users, [(int(a), int(u or 0)) for a, u in before], params.min_day_share
    )


def keep_once(conn, validated: Validated, day: date) -> Validated:
    """Move accepted rows that another partition already holds (a late event, or a source
    re-read after its events were claimed elsewhere) to the quarantine as ``duplicate_event``."""
    elsewhere = held_elsewhere(conn, validated.accepted, day)
    repeated = elsewhere.notna().to_numpy()
    if not repeated.any():
        return validated
    moved = validated.accepted[repeated]
    extra = pd.DataFrame(
        {
            "source": "raw_actions",
            "row_number": pd.Series(pd.NA, index=moved.index, dtype="Int64"),
            "reason": "duplicate_event",
            "detail": "already in raw_actions of " + elsewhere[repeated].astype(str),
            "user_id": moved["user_id"].astype(str),
            "pin_id": moved["pin_id"].astype(str),
            "action": moved["action"],
            "ts": moved["ts"].astype(str),
        }
    )
    return Validated(
        validated.accepted[~repeated].reset_index(drop=True),
        pd.concat([validated.quarantine, extra], ignore_index=True),
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep(raw_actions, partition_mapping=window_mapping), pins],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
)
def action_windows(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, params: PinnerSageParams
) -> dg.MaterializeResult:
    """For day D: every user's distinct, valid actions of [D-89, D], capped to the most recent
    ``max_actions_per_user`` per user, on pins still in the catalog. Every raw_actions day of the
    window must have been materialized (an empty day is fine, a missing one fails the run)."""
    stats = []
    cap = params.max_actions_per_user
    versions = []
    for day in partition_days(context):
        first = day - timedelta(days=params.window_days - 1)
        with duckdb.get_connection() as conn:
            ensure_tables(conn)
            days = guards.require_days(conn, "raw_actions", first, day, needed_by=f"action_windows of {day}")
            catalog = guards.require(conn, "pins", needed_by=f"action_windows of {day}")

            def record(conn) -> None:
                version, rows = guards.table_version(conn, "action_windows", "user_id, pin_id, action, ts", day)
                guards.record(
                    conn,
                    "action_windows",
                    day,
                    version,
                    {
                        "raw_actions": guards.digest([f"{d}:{v}" for d, v in sorted(days.items())]),
                        "pins_ids": catalog.inputs["ids"],
                        "window_days": params.window_days,
                        "cap": cap,
                    },
                    rows,
                )
                versions.append(version)

            replace_partition_from_query(
                conn, "action_windows", day, WINDOW_SQL, {"day": day, "first": first, "cap": cap}, before_commit=record
            )
            stats.append(conn.execute(WINDOW_STATS_SQL, {"day": day, "first": first, "cap": cap}).fetchone())
    in_window, eligible, users, capped_users, dropped_by_cap, kept = map(int, stats[-1])
    return dg.MaterializeResult(
        data_version=guards.data_version(context, versions[-1]),
        metadata={
            "version": versions[-1],
            "days_in_run": len(stats),
            "window": f"{first} .. {day}",
            "actions_in_window": in_window,
            "dagster/row_count": kept,
            "users": users,
            "users_capped": capped_users,
            "actions_dropped_by_cap": dropped_by_cap,
            "actions_on_pins_not_in_catalog": in_window - eligible,
            "max_actions_per_user": params.max_actions_per_user,
            "dagster/column_schema": table_schema(TABLES["action_windows"]),
        },
    )
