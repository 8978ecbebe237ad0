"""PinnerSage (KDD 2020) as a Dagster asset graph. ``definitions.py`` holds the one ``Definitions``."""

import warnings

from dagster import BetaWarning, PreviewWarning

# we use these beta/preview APIs on purpose and pin dagster to the version we verified them on
# (backfill policies, allow_nonexistent_upstream_partitions, partitioned asset checks)
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)
warnings.filterwarnings("ignore", message="Asset job .* materializes assets with varying BackfillPolicies")
