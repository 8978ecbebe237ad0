"""Daily action events and the 90-day window of each day."""


from datetime import timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from ..config import PinnerSageParams
from ..core.contract import validate_actions
from ..core.retention import prune_event_logs
from ..partitions import daily_partitions, partition_days, window_mapping
from ..action_log import Span
from ..readers import day_bounds, read_event_log_day
from ..reporting import column_schema
from ..resources import DataSource, EventLogStore
from ..warehouse import (
    WINDOW_SQL, ensure_tables, record_event_log_ingestion, replace_partition_from_query, replace_partitions, transaction,
)
from .candidates import pins
from .constants import DUCKDB_POOL, GROUP

RAW_ACTIONS_SCHEMA = column_schema(
    partition_date="date: the UTC day of ts", user_id="int64: the user", pin_id="int64: the pin acted on",
    action="string: repin or click", ts="timestamp: when, UTC",
)
WINDOW_STATS_SQL = """
    WITH eligible AS (
        SELECT user_id, count(*) AS n
        FROM raw_actions r SEMI JOIN pins p ON r.pin_id = p.pin_id
        WHERE r.partition_date BETWEEN ? AND ? GROUP BY user_id)
    SELECT
        (SELECT count(*) FROM raw_actions WHERE partition_date BETWEEN ? AND ?),
        coalesce(sum(n), 0), count(*), count(*) FILTER (WHERE n > ?), coalesce(sum(greatest(n - ?, 0)), 0),
        (SELECT count(*) FROM action_windows WHERE partition_date = ?)
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
    params: PinnerSageParams,
) -> dg.MaterializeResult:
    """The valid repin/click events of partition day D (ts in [D, D+1) UTC).

    Rows that break the contract (bad ids or action, bad or out-of-day timestamps, pins the
    source's catalog does not hold, repeated events) go to ``raw_actions_quarantine`` with their
    reason. With a log spanning many days, the first partition also quarantines the log's rows
    before it or without a usable ts, and the newest partition its rows in the future. The
    recommendation service's event log of D is ingested too, after the source's rows, so an
    event the source also holds is kept once (its copy is quarantined ``duplicate_event``).
    """
    known = source.known_pin_ids()
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    first = daily_partitions.start.date()
    span = Span(
        days=partition_days(context),
        first_partition=first,
        newest_partition=daily_partitions.get_last_partition_window().start.date(),
        now=now,
    )
    read = accepted = quarantined = from_source = from_events = events_in_source = 0
    reasons: dict[str, int] = {}
    per_day = {}
    users: set[int] = set()
    for day, rows in source.read_actions(span):
        start, end = day_bounds(day)
        path = event_log.day_file(day)
        events, unreadable = read_event_log_day(path) if event_log.ingest else (rows.iloc[:0], None)
        combined = pd.concat([rows, events], ignore_index=True) if len(events) else rows
        validated = validate_actions(
            combined, day_start=start, day_end=end, now=now, known_pin_ids=known, first_start=day_bounds(first)[0]
        )
        quarantine = validated.quarantine if unreadable is None or unreadable.empty else pd.concat(
            [validated.quarantine, unreadable], ignore_index=True)
        with duckdb.get_connection() as conn:
            ensure_tables(conn)
            with transaction(conn):
                replace_partitions(conn, "raw_actions", validated.accepted.assign(partition_date=day), day, day, atomic=False)
                replace_partitions(conn, "raw_actions_quarantine", quarantine.assign(partition_date=day), day, day, atomic=False)
                record_event_log_ingestion(conn, day, path if event_log.ingest else None)
        n_events = len(events) + (0 if unreadable is None else len(unreadable))
        read += len(rows) + n_events
        from_source += len(rows)
        from_events += n_events
        event_copies = validated.quarantine["source"].eq(str(path)) & validated.quarantine["reason"].eq("duplicate_event")
        events_in_source += int(event_copies.sum())
        accepted += len(validated.accepted)
        quarantined += len(quarantine)
        for reason, count in validated.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
        if unreadable is not None and len(unreadable):
            reasons["unreadable_event_line"] = reasons.get("unreadable_event_line", 0) + len(unreadable)
        per_day[str(day)] = len(validated.accepted)
        users.update(validated.accepted["user_id"].unique().tolist())
    if read != accepted + quarantined:  # the accounting identity: nothing is lost
        raise RuntimeError(f"rows read {read} != accepted {accepted} + quarantined {quarantined}")
    with duckdb.get_connection() as conn:
        ingested = dict(conn.execute("SELECT file, bytes FROM event_log_ingestions").fetchall())
    removed_logs = prune_event_logs(Path(event_log.root), keep_days=params.retention_days, today=now.date(),
                                    ingested_bytes=ingested)
    return dg.MaterializeResult(
        metadata={
            "days": len(per_day),
            "rows_read": read,
            "rows_read_from_source": from_source,
            "rows_read_from_service_events": from_events,
            "service_events_already_in_source": events_in_source,
            "event_logs_removed_by_retention": removed_logs,
            "dagster/row_count": accepted,
            "rows_quarantined": quarantined,
            "quarantine_reasons": reasons,
            "users": len(users),
            "empty_days": sum(1 for n in per_day.values() if n == 0),
            "accepted_per_day": per_day if len(per_day) <= 31 else "many",
            "dagster/column_schema": RAW_ACTIONS_SCHEMA,
        }
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
    ``max_actions_per_user`` per user, on pins still in the catalog."""
    stats = []
    cap = params.max_actions_per_user
    for day in partition_days(context):
        first = day - timedelta(days=params.window_days - 1)
        with duckdb.get_connection() as conn:
            ensure_tables(conn)
            replace_partition_from_query(conn, "action_windows", day, WINDOW_SQL, [day, first, day, cap])
            stats.append(conn.execute(WINDOW_STATS_SQL, [first, day, first, day, cap, cap, day]).fetchone())
    in_window, eligible, users, capped_users, dropped_by_cap, kept = map(int, stats[-1])
    return dg.MaterializeResult(
        metadata={
            "days_in_run": len(stats),
            "window": f"{first} .. {day}",
            "actions_in_window": in_window,
            "dagster/row_count": kept,
            "users": users,
            "users_capped": capped_users,
            "actions_dropped_by_cap": dropped_by_cap,
            "actions_on_pins_not_in_catalog": in_window - eligible,
            "max_actions_per_user": params.max_actions_per_user,
            "dagster/column_schema": RAW_ACTIONS_SCHEMA,
        }
    )
