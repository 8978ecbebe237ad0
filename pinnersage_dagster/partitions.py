"""The one daily partitions definition shared by every partitioned asset and check.

A partition is a UTC day [D 00:00, D+1 00:00). The last partition is yesterday, the
last complete day. ``PINNERSAGE_START_DATE`` moves the first day (a setting, read when the
definitions load, so it is fixed for a deployment).
"""

import warnings
from datetime import date, timedelta

import dagster as dg

from .config import WINDOW_DAYS
from .settings import settings

START_DATE = settings().start_date.isoformat()

daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE)

# partition D of a windowed asset reads raw_actions partitions D-89 .. D (90 days)
with warnings.catch_warnings():  # a beta parameter, used on purpose (definitions.py says why)
    warnings.simplefilter("ignore", dg.BetaWarning)
    window_mapping = dg.TimeWindowPartitionMapping(
        start_offset=-(WINDOW_DAYS - 1), end_offset=0, allow_nonexistent_upstream_partitions=True
    )


def partition_days(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> list[date]:
    """The days a run covers: one for a daily run, several for a range (backfill) run."""
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    return [start + timedelta(days=i) for i in range((end - start).days)]
