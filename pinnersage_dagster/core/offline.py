"""The offline comparison of Tables 4-5 and Figure 7: models, seeds, lifts, the alpha sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from .evaluation import (
    ModelResult,
    Users,
    calibrated_threshold,
    cluster_representation,
    complete_linkage_members,
    decay_average,
    evaluate_representation,
    kmeans_members,
    last_pin,
    recovery,
    sample_negatives,
    ward_members,
)

METRICS = ["relevance", "relevance_calibrated", "recall", "r_precision", "reciprocal_rank", "diversity"]
PINNERSAGE = "PinnerSage (Ward, medoid)"  # at the run's alpha and λ, which the report states
BASELINE = "Last pin"


@dataclass
class OfflineReport:
    table: pd.DataFrame  # one row per model: mean and std of each metric, lifts over last pin
    curve: pd.DataFrame  # e, relevance, diversity and their lifts over last pin
    alpha_sweep: pd.DataFrame
    threshold: float
    calibrated: float
    users: int
    seeds: int
    recovery: dict[str, float] | None
    alpha: float = 1.3
    decay_lambda: float = 0.01


def run_offline(
    users: Users,
    search: Callable[[np.ndarray, int], np.ndarray],
    *,
    alpha: float,
    seeds: int = 5,
    threshold: float = 0.8,
    alphas: tuple[float, ...] = (0.5, 0.9, 1.3, 2.0, 3.0),
    max_embeddings: int = 10,
    topic_of: pd.Series | None = None,
    decay_lambda: float = 0.01,
) -> OfflineReport:
    """``alpha`` and ``decay_lambda`` are PinnerSage's (Ward threshold, importance decay per day);
    the ablations keep the paper's λ of 0 and 0.1 for comparison."""
    calibrated = calibrated_threshold(users.catalog_x, np.random.default_rng(0))
    ward = ward_members(users, alpha)
    ward_medoid = cluster_representation(users, ward, decay_lambda, "medoid")
    complete = cluster_representation(users, complete_linkage_members(users, alpha), decay_lambda, "medoid")
    centroid = cluster_representation(users, ward, decay_lambda, "centroid")
    lam0 = cluster_representation(users, ward, 0.0, "medoid")
    lam01 = cluster_representation(users, ward, 0.1, "medoid")

    # (name, representation factory per seed, embeddings sampled per user)
    models: list[tuple[str, Callable[[int], dict], int | None]] = [
        (BASELINE, lambda s: last_pin(users), None),
        *[(f"Decay average (λ={lam:g})", (lambda s, lam=lam: decay_average(users, lam)), None) for lam in (0, 0.01, 0.1, 0.25)],
        ("PinnerSage (sample 1 embedding)", lambda s: ward_medoid, 1),
        ("PinnerSage (K-means, k=5)", lambda s: cluster_representation(users, kmeans_members(users, 5, s), decay_lambda, "medoid"), 3),
        ("PinnerSage (complete linkage)", lambda s: complete, 3),
        ("PinnerSage (embedding = centroid)", lambda s: centroid, 3),
        ("PinnerSage (importance λ=0)", lambda s: lam0, 3),
        ("PinnerSage (importance λ=0.1)", lambda s: lam01, 3),
        (PINNERSAGE, lambda s: ward_medoid, 3),
    ]

    rows = []
    for name, factory, sampled in models:
        deterministic = sampled is None
        runs = []
        for seed in range(1 if deterministic else seeds):
            rng = np.random.default_rng([seed, 1])
            negatives = sample_negatives(users, np.random.default_rng([seed, 2]))
            runs.append(
                evaluate_representation(
                    users, factory(seed), search, sampled=sampled, rng=rng, threshold=threshold,
                    calibrated=calibrated, negatives=negatives,
                )
            )
        rows.append(_summarize(name, runs))
    table = _with_lifts(pd.DataFrame(rows).set_index("model"))

    curve_rows = []
    baseline = table.loc[BASELINE]
    for e in range(1, max_embeddings + 1):
        runs = [
            evaluate_representation(
                users, ward_medoid, search, sampled=e, rng=np.random.default_rng([seed, 1]), threshold=threshold,
                calibrated=calibrated, negatives=sample_negatives(users, np.random.default_rng([seed, 2])),
            )
            for seed in range(seeds)
        ]
        rel, div = np.mean([r.relevance for r in runs]), np.mean([r.diversity for r in runs])
        curve_rows.append({"e": e, "relevance": rel, "diversity": div,
                           "relevance_lift": rel / baseline["relevance"] - 1, "diversity_lift": div / baseline["diversity"] - 1})

    sweep_rows = []
    for a in alphas:
        members = ward_members(users, a)
        per_user = members.groupby("user_id")["cluster_id"].nunique()
        rep = cluster_representation(users, members, decay_lambda, "medoid")
        runs = [
            evaluate_representation(
                users, rep, search, sampled=3, rng=np.random.default_rng([seed, 1]), threshold=threshold,
                calibrated=calibrated, negatives=sample_negatives(users, np.random.default_rng([seed, 2])),
            )
            for seed in range(seeds)
        ]
        row = {"alpha": a, "clusters_per_user_mean": per_user.mean(), "clusters_per_user_p90": per_user.quantile(0.9),
               **{m: float(np.mean([getattr(r, m) for r in runs])) for m in ("relevance", "relevance_calibrated", "recall")}}
        if topic_of is not None:
            row.update(recovery(users, members, topic_of))
        sweep_rows.append(row)

    return OfflineReport(
        table=table,
        curve=pd.DataFrame(curve_rows),
        alpha_sweep=pd.DataFrame(sweep_rows),
        threshold=threshold,
        calibrated=calibrated,
        users=len(users.user_ids),
        seeds=seeds,
        recovery=recovery(users, ward, topic_of) if topic_of is not None else None,
        alpha=alpha,
        decay_lambda=decay_lambda,
    )


def _summarize(name: str, runs: list[ModelResult]) -> dict:
    row: dict[str, object] = {"model": name, "seeds": len(runs)}
    for metric in METRICS:
        values = np.array([getattr(r, metric) for r in runs])
        row[metric] = float(values.mean())
        row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return row


def _with_lifts(table: pd.DataFrame) -> pd.DataFrame:
    base = table.loc[BASELINE]
    for metric in METRICS:
        table[f"{metric}_lift"] = table[metric] / base[metric] - 1 if base[metric] else np.nan
    return table
