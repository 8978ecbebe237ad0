"""The one typed configuration of the model and the system, with the paper's defaults.

Injected into assets and checks as the ``params`` resource; change any field per run from
the launchpad (``resources: params: config: {alpha: 1.0}``), or for every run with
``PINNERSAGE_PARAMS`` (settings.py).
"""

from typing import Literal

import dagster as dg
from pydantic import Field

WINDOW_DAYS = 90  # the paper's 90-day history; the partition mapping (partitions.py) is built from it


class PinnerSageParams(dg.ConfigurableResource):
    """PinnerSage parameters (paper sections 3 and 4)."""

    window_days: int = Field(
        default=WINDOW_DAYS,
        ge=1,
        le=WINDOW_DAYS,
        description="Days of history per user (paper: 90). At most the partition mapping's window.",
    )
    alpha: float = Field(
        default=1.8,
        gt=0,
        description="Ward threshold on the paper's squared-distance scale: a merge whose Lance-Williams "
        "distance d_ij <= alpha joins a cluster. Two single unit pins merge when cosine >= 1 - alpha/2. "
        "Calibrated on the realistic synthetic world: the best planted-interest recovery (docs/model.md, 'Choosing alpha').",
    )
    decay_lambda: float = Field(default=0.01, ge=0, description="Importance decay per day in Eq. 3 (paper: 0.01).")
    max_actions_per_user: int = Field(
        default=1000, ge=2, description="Most recent actions kept per user per window; bounds Ward's O(m^2)."
    )
    max_clusters_per_user: int = Field(
        default=150,
        ge=1,
        description="Sanity bound for the clusters_per_user_within_bounds check (paper: heavy users 75-100).",
    )
    sampled_medoids: int = Field(default=3, ge=1, description="Medoids sampled per request (paper: 3).")
    retrieval_policy: Literal["sampled", "proportional", "decay_average"] = Field(
        default="sampled",
        description="The service's default: 'sampled' (the paper: sampled_medoids drawn by importance, budget split "
        "evenly), 'proportional' (every medoid, a share of the budget by importance; docs/serving.md, 'Retrieval "
        "policies') or 'decay_average' (the paper's online control: one decay-weighted average embedding).",
    )
    retrieval_budget: int = Field(default=400, ge=1, description="Recommendations per request (paper: 400).")
    online_recent_actions: int = Field(
        default=20, ge=1, description="Same-day actions kept for the online update (paper: 20)."
    )
    quality_threshold: float = Field(
        default=0.25, ge=0, le=1, description="Pins with quality below this never enter the candidate pool."
    )
    duplicate_cosine: float = Field(
        default=0.95, gt=0, le=1, description="Pins at cosine >= this are near-duplicates; one representative is kept."
    )
    dedup_hash_tables: int = Field(
        default=16,
        ge=1,
        le=64,
        description="Hash tables of the near-duplicate search (random hyperplanes; the new pins' graph "
        "neighbour lists are searched too). A pair at duplicate_cosine 0.95 shares a bucket with "
        "probability 0.973 at the defaults, at 0.975 with 0.998 (docs/model.md).",
    )
    dedup_hash_bits: int = Field(
        default=15,
        ge=4,
        le=30,
        description="Hyperplanes per table: each bit halves the pairs compared and lowers the collision "
        "probability; add one per doubling of the catalog beyond about a million pins (docs/model.md).",
    )
    embedding_dim: int = Field(
        default=64,
        ge=2,
        le=1024,
        description="Dimension of embeddings learned from the log (pin_embeddings) when the source gives none.",
    )
    embedding_min_users: int = Field(
        default=2,
        ge=1,
        description="Distinct users a pin needs before an embedding is learned for it.",
    )
    retention_days: int = Field(
        default=7,
        ge=1,
        description="Days of pin_index builds, serving snapshots and ingested event logs kept on disk; older ones "
        "are removed when a newer day is published (never the newest, a served snapshot, or an event log not yet "
        "in the warehouse).",
    )
    max_catalog_shrink: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="A new catalog with fewer than (1 - this) x the previous catalog's pins is refused before it "
        "replaces anything (a truncated or wrong pins file); an empty catalog always is.",
    )
    min_day_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="A day with fewer accepted actions, or users, than this share of the median of the 7 days "
        "before it (those with any) is refused before it replaces anything (a partial or wrong day file); judged "
        "when a typical day has at least 1,000 actions.",
    )
    accept_implausible_inputs: bool = Field(
        default=False,
        description="Accept on purpose what the plausibility bounds refuse (a real catalog cut, a real quiet day, "
        "a day file that holds other days); the run records that it did.",
    )
    hnsw_m: int = Field(default=32, ge=4, description="HNSW graph degree M.")
    hnsw_ef_construction: int = Field(default=200, ge=8, description="HNSW ef at build time.")
    hnsw_ef: int = Field(default=200, ge=8, description="HNSW ef at query time (recall/latency trade-off).")
