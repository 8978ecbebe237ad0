"""The offline comparison of Tables 4-5 and Figure 7: models, seeds, lifts, the alpha sweep."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .evaluation import (
    USER_METRICS,
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

METRICS = USER_METRICS
PINNERSAGE = "PinnerSage (Ward, medoid)"  # at the run's alpha and λ, which the report states
PROPORTIONAL = "PinnerSage (proportional budget)"
BOOTSTRAP_RESAMPLES = 1000
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
    alpha: float = 1.8
    decay_lambda: float = 0.01
    policy: pd.DataFrame | None = None  # the proportional policy against the paper's sampling: lifts over it


def run_offline(
    users: Users,
    search: Callable[[np.ndarray, int], np.ndarray],
    *,
    alpha: float,
    seeds: int = 5,
    threshold: float = 0.8,
    alphas: tuple[float, ...] = (0.6, 1.0, 1.4, 1.8, 2.4, 3.0),
    max_embeddings: int = 10,
    topic_of: pd.Series | None = None,
    decay_lambda: float = 0.01,
    progress: Callable[[str], None] = lambda message: None,
) -> OfflineReport:
    """``alpha`` and ``decay_lambda`` are PinnerSage's (Ward threshold, importance decay per day);
    the ablations keep the paper's λ of 0 and 0.1 for comparison. ``progress`` hears one line
    per model, per point of the curve and per alpha of the sweep."""
    progress(f"clustering {len(users.user_ids)} users at alpha {alpha:g} (Ward, complete linkage)")
    calibrated = calibrated_threshold(users.catalog_x, np.random.default_rng(0))
    ward = ward_members(users, alpha)
    ward_medoid = cluster_representation(users, ward, decay_lambda, "medoid")
    complete = cluster_representation(users, complete_linkage_members(users, alpha), decay_lambda, "medoid")
    centroid = cluster_representation(users, ward, decay_lambda, "centroid")
    lam0 = cluster_representation(users, ward, 0.0, "medoid")
    lam01 = cluster_representation(users, ward, 0.1, "medoid")

    # (name, representation factory per seed, embeddings sampled per user, retrieval policy)
    models: list[tuple[str, Callable[[int], dict], int | None, str]] = [
        (BASELINE, lambda s: last_pin(users), None, "sampled"),
        *[
            (f"Decay average (λ={lam:g})", (lambda s, lam=lam: decay_average(users, lam)), None, "sampled")
            for lam in (0, 0.01, 0.1, 0.25)
        ],
        ("PinnerSage (sample 1 embedding)", lambda s: ward_medoid, 1, "sampled"),
        (
            "PinnerSage (K-means, k=5)",
            lambda s: cluster_representation(users, kmeans_members(users, 5, s), decay_lambda, "medoid"),
            3,
            "sampled",
        ),
        ("PinnerSage (complete linkage)", lambda s: complete, 3, "sampled"),
        ("PinnerSage (embedding = centroid)", lambda s: centroid, 3, "sampled"),
        ("PinnerSage (importance λ=0)", lambda s: lam0, 3, "sampled"),
        ("PinnerSage (importance λ=0.1)", lambda s: lam01, 3, "sampled"),
        (PINNERSAGE, lambda s: ward_medoid, 3, "sampled"),
        (PROPORTIONAL, lambda s: ward_medoid, None, "proportional"),
    ]

    results: dict[str, list[ModelResult]] = {}
    for number, (name, factory, sampled, policy) in enumerate(models, 1):
        progress(f"model {number}/{len(models)}: {name}")
        # sampling models run once per seed; the others once (only the impressions' draw would vary)
        runs = []
        for seed in range(seeds if sampled is not None else 1):
            rng = np.random.default_rng([seed, 1])
            negatives = sample_negatives(users, np.random.default_rng([seed, 2]))
            runs.append(
                evaluate_representation(
                    users,
                    factory(seed),
                    search,
                    sampled=sampled,
                    rng=rng,
                    threshold=threshold,
                    calibrated=calibrated,
                    negatives=negatives,
                    policy=policy,
                )
            )
        results[name] = runs
    table = pd.DataFrame([_summarize(name, runs, results[BASELINE]) for name, runs in results.items()]).set_index(
        "model"
    )
    policy = pd.DataFrame([_summarize(PROPORTIONAL, results[PROPORTIONAL], results[PINNERSAGE])]).set_index("model")

    curve_rows = []
    baseline = table.loc[BASELINE]
    progress(f"Figure 7's curve: 1 .. {max_embeddings} sampled embeddings")
    for e in range(1, max_embeddings + 1):
        runs = [
            evaluate_representation(
                users,
                ward_medoid,
                search,
                sampled=e,
                rng=np.random.default_rng([seed, 1]),
                threshold=threshold,
                calibrated=calibrated,
                negatives=sample_negatives(users, np.random.default_rng([seed, 2])),
            )
            for seed in range(seeds)
        ]
        rel, div = np.mean([r.relevance for r in runs]), np.mean([r.diversity for r in runs])
        curve_rows.append(
            {
                "e": e,
                "relevance": rel,
                "diversity": div,
                "relevance_lift": rel / baseline["relevance"] - 1,
                "diversity_lift": div / baseline["diversity"] - 1,
            }
        )

    sweep_rows = []
    for a in alphas:
        progress(f"alpha sweep: {a:g} ({alphas.index(a) + 1}/{len(alphas)})")
        members = ward_members(users, a)
        per_user = members.groupby("user_id")["cluster_id"].nunique()
        rep = cluster_representation(users, members, decay_lambda, "medoid")
        runs = [
            evaluate_representation(
                users,
                rep,
                search,
                sampled=3,
                rng=np.random.default_rng([seed, 1]),
                threshold=threshold,
                calibrated=calibrated,
                negatives=sample_negatives(users, np.random.default_rng([seed, 2])),
            )
            for seed in range(seeds)
        ]
        row = {
            "alpha": a,
            "clusters_per_user_mean": per_user.mean(),
            "clusters_per_user_p90": per_user.quantile(0.9),
            **{
                m: float(np.mean([getattr(r, m) for r in runs]))
                for m in ("relevance", "relevance_calibrated", "recall")
            },
        }
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
        policy=policy,
    )


def _summarize(name: str, runs: list[ModelResult], baseline: list[ModelResult]) -> dict:
    """Mean and seeds' standard deviation of each metric, macro and micro, and each lift over
    the baseline with a 95% paired-bootstrap interval over users."""
    row: dict[str, object] = {
        "model": name,
        "seeds": len(runs),
        "ann_queries": float(np.mean([r.queries.mean() for r in runs])),
    }
    for metric in METRICS:
        for reading in ("macro", "micro"):
            key = metric if reading == "macro" else f"{metric}_micro"
            values = np.array([getattr(r, reading)(metric) for r in runs])
            base = float(np.mean([getattr(r, reading)(metric) for r in baseline]))
            row[key] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[f"{key}_lift"] = float(values.mean()) / base - 1 if base else float("nan")
    lows, highs = bootstrap_lift_intervals(runs, baseline)
    for key in lows:
        row[f"{key}_lift_lo"], row[f"{key}_lift_hi"] = lows[key], highs[key]
    return row


def bootstrap_lift_intervals(
    runs: list[ModelResult], baseline: list[ModelResult], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """95% percentile intervals of model / baseline - 1, resampling users with replacement and
    keeping each user's model and baseline values together (per-user values averaged over seeds)."""
    users = np.intersect1d(runs[0].user_ids, baseline[0].user_ids)
    model, weights = _per_user_mean(runs, users)
    base, _ = _per_user_mean(baseline, users)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(users), np.full(len(users), 1.0 / len(users)), size=resamples).astype(np.float64)
    lows, highs = {}, {}
    for reading, w in (("macro", np.ones(len(users))), ("micro", weights)):
        cw = counts * w
        ratios = []
        for values in (model, base):
            valid = np.isfinite(values)
            ratios.append((cw @ np.where(valid, values, 0.0)) / np.maximum(cw @ valid, 1e-12))
        lift = ratios[0] / ratios[1] - 1
        for j, metric in enumerate(METRICS):
            key = metric if reading == "macro" else f"{metric}_micro"
            finite = lift[:, j][np.isfinite(lift[:, j])]
            lows[key], highs[key] = (
                (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5)))
                if finite.size
                else (float("nan"), float("nan"))
            )
    return lows, highs


def _per_user_mean(runs: list[ModelResult], users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    stacked = []
    for run in runs:
        rows = np.searchsorted(run.user_ids, users)
        stacked.append(run.per_user[rows])
    with warnings.catch_warnings():  # a metric undefined for a user in every run stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.nanmean(np.stack(stacked), axis=0) if len(stacked) > 1 else stacked[0]
    return values, runs[0].actions[np.searchsorted(runs[0].user_ids, users)]
