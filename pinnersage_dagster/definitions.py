"""The one ``Definitions`` of the project: assets, checks, job, schedule, resources."""

import dagster as dg

from .assets import all_assets
from .checks import all_checks
from .jobs import pinnersage_daily_job
from .resources import build_resources
from .schedules import pinnersage_daily_schedule

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[pinnersage_daily_job],
    schedules=[pinnersage_daily_schedule],
    resources=build_resources(),
)
