"""Jobs: the daily PinnerSage job over the whole graph."""

import dagster as dg

# one partition per run; the unpartitioned catalog assets (pins, candidate_pool) refresh with it
pinnersage_daily_job = dg.define_asset_job(
    "pinnersage_daily_job",
    selection=dg.AssetSelection.groups("pinnersage"),
    description="Refresh the catalog, load day D's actions, and compute D's clusters, medoids and index.",
)
