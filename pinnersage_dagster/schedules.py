"""The daily schedule: at 02:00 UTC, materialize yesterday (the latest complete day)."""

import dagster as dg

from .jobs import pinnersage_daily_job

pinnersage_daily_schedule = dg.build_schedule_from_partitioned_job(
    pinnersage_daily_job,
    hour_of_day=2,
    minute_of_hour=0,
    name="pinnersage_daily_schedule",
    description="Each day at 02:00 UTC, run the whole graph for yesterday's partition.",
)
