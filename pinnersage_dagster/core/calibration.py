"""Choosing alpha: sweep it over users' windows and report cluster shape and, with labels, recovery."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

import numpy as np
import pandas as pd

from .metrics import per_user_recovery
from .synthetic import UNKNOWN_PIN_ID, SyntheticWorld, generate_day_actions, generate_pins
from .user_pass import SINGLETON, represent_history


def alpha_sweep(
    user_ids: np.ndarray,
    pin_ids: np.ndarray,
    embeddings: np.ndarray,
    alphas: list[float],
    labels: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One row per alpha. Rows of the input are distinct (user, pin), sorted by user.

    Without ``labels``: clusters per user, the share of pins that land in a Ward cluster, and the
    mean number of Ward clusters of median users (the 40th-60th percentiles by distinct pins)
    and of the heaviest 1%.
    With ``labels`` (a planted topic per row): mean per-user adjusted Rand index and purity,
    where each pin outside every Ward cluster counts as its own cluster. ``progress`` hears of
    each alpha as it starts.
    """
    rows = []
    # the daily pass itself, on one action per distinct pin (Ward sees distinct pins either way)
    history = pd.DataFrame({"user_id": user_ids, "pin_id": pin_ids, "ts": pd.Timestamp("2000-01-01")})
    order = np.argsort(pin_ids, kind="stable")
    catalog_ids, catalog_x = pin_ids[order], embeddings[order]
    unique = np.r_[True, catalog_ids[1:] != catalog_ids[:-1]]
    catalog_ids, catalog_x = catalog_ids[unique], catalog_x[unique]
    pins_per_user = pd.Series(user_ids).value_counts()
    median_users = pins_per_user[pins_per_user.between(pins_per_user.quantile(0.4), pins_per_user.quantile(0.6))].index
    heavy_users = pins_per_user[pins_per_user >= pins_per_user.quantile(0.99)].index
    for i, alpha in enumerate(alphas, 1):
        if progress:
            progress(f"alpha {alpha:g} ({i}/{len(alphas)})")
        members = represent_history(
            history, catalog_ids, catalog_x, alpha=alpha, decay_lambda=0.0, now=pd.Timestamp("2000-01-02")
        )
        ward = members[members["kind"] != SINGLETON]
        per_user = members.groupby("user_id")["cluster_id"].nunique()
        ward_per_user = ward.groupby("user_id")["cluster_id"].nunique()
        row = {
            "alpha": alpha,
            "single_pin_merge_cosine": round(1 - alpha / 2, 3),
            "clusters_per_user_p50": float(per_user.median()),
            "clusters_per_user_p90": float(per_user.quantile(0.9)),
            "clusters_per_user_max": int(per_user.max()),
            "pins_in_ward_clusters": round(len(ward) / len(pin_ids), 3),
            # the paper's shape: light users 3-5 clusters, heavy users 75-100
            "ward_clusters_median_users": round(float(ward_per_user.reindex(median_users).fillna(0).mean()), 1),
            "ward_clusters_heaviest_1pct": round(float(ward_per_user.reindex(heavy_users).fillna(0).mean()), 1),
            "users_without_ward_cluster": int(per_user.size - ward["user_id"].nunique()),
        }
        if labels is not None:
            scores = per_user_recovery(user_ids, pin_ids, labels, ward)
            row.update(
                {
                    "mean_adjusted_rand_index": round(scores["adjusted_rand_index"], 4),
                    "mean_purity": round(scores["purity"], 4),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def synthetic_window(
    world: SyntheticWorld, day: date, window_days: int = 90, max_actions_per_user: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (user, pin) rows of the window ending ``day``, as the pipeline sees them,
    with embeddings and each pin's planted topic."""
    pins = generate_pins(world)
    frames = [generate_day_actions(world, day - timedelta(days=i)) for i in range(window_days)]
    actions = pd.concat(frames, ignore_index=True)
    actions = actions[actions["pin_id"] != UNKNOWN_PIN_ID].drop_duplicates()
    actions = (
        actions.sort_values(["user_id", "ts"], ascending=[True, False]).groupby("user_id").head(max_actions_per_user)
    )
    distinct = actions[["user_id", "pin_id"]].drop_duplicates().sort_values(["user_id", "pin_id"])
    row_of = pd.Series(np.arange(len(pins.pin_id)), index=pins.pin_id)
    rows = row_of.reindex(distinct["pin_id"].to_numpy()).to_numpy()
    return distinct["user_id"].to_numpy(), distinct["pin_id"].to_numpy(), pins.embedding[rows], pins.topic[rows]
