"""The one ``Definitions`` of the project: assets, checks, job, schedule, resources."""

import warnings

import dagster as dg

# beta/preview APIs used on purpose, on the pinned dagster version they were verified on
# (backfill policies, allow_nonexistent_upstream_partitions, partitioned asset checks)
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", message="Asset job .* materializes assets with varying BackfillPolicies")

from .assets import all_assets
from .checks import all_checks
from .jobs import pinnersage_daily_job
from .loggers import LOGGERS
from .resources import build_resources
from .schedules import pinnersage_daily_schedule
from .settings import settings

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[pinnersage_daily_job],
    schedules=[pinnersage_daily_schedule],
    resources=build_resources(settings()),
    loggers=LOGGERS,
)
