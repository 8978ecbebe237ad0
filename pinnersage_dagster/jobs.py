"""Jobs: the daily PinnerSage job over the whole graph."""

import dagster as dg

# one partition per run; the unpartitioned catalog assets (pins, candidate_pool) refresh with it.
# Steps run in the run's own process by default: every step is in the one-slot duckdb pool, so
# they run one at a time anyway, and a step process per step cost seconds each (13 steps: a
# 2,000-user day took 44 s with spawn, 32 s with a forkserver and 10 s in process, of which
# 6-7.5 s were the steps; benchmarks/results/end_to_end.md has the 100k-user figures). A step
# that kills its process (the OOM killer) fails the whole run: run monitoring marks it failed
# and frees its slot (docs/reliability.md), and a re-run redoes only idempotent partitions. The
# launchpad can still pick `multiprocess` for a run (execution: config: multiprocess: {}).
pinnersage_daily_job = dg.define_asset_job(
    "pinnersage_daily_job",
    selection=dg.AssetSelection.groups("pinnersage"),
    description="Refresh the catalog, load day D's actions, and compute D's clusters, medoids and index.",
    config={"execution": {"config": {"in_process": {}}}},
)
