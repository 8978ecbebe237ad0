"""Offline evaluation (paper, section 5.3): retrieval, ranking and diversity of user embeddings.

Protocol. For a split day d, each user's history is the product's ``action_windows``
partition of d-1 (the 90 days before d, capped); the test set is the distinct pins the user
acted on in [d, d + horizon). A user is evaluated if they have at least one test pin and at
least ``min_train_actions`` history actions. Pin embeddings are fixed.

Choices the paper leaves open, made here:
- metrics are reported two ways: macro (averaged per user, then over users: each user weighs
  the same) and micro (per test action: each user weighs by their number of test actions);
  each lift over last pin has a 95% interval from a paired bootstrap over users;
- test pins are all distinct test-action pins, repeats of history pins included, and
  recommendation sets are not filtered by history (the paper filters neither);
- retrieval runs through the product's HNSW index of day d-1 (``search='index'``: the refined
  pool, so test pins outside it can be relevant but never recalled) or exactly over the whole
  catalog (``search='exact'``); the report says which;
- last pin is the latest action; among actions at the same latest ts, the highest pin id;
- ranking: each test pin against 20 random catalog pins per test pin standing in for
  impressions (no impression log in the data contract), never a pin the user acted on in the
  history or the test; scored by the maximum cosine to the user's embeddings queried; ties rank
  the action *after* the impressions (pessimistic). Reciprocal rank is reported as the rank of
  the first (best-ranked) action and as the mean over all actions;
- T_now for decay and importance is the start of day d;
- models that sample (PinnerSage with importance sampling, K-means initialisation) run once
  per seed; tables give the mean and the standard deviation over seeds.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.cluster.vq import kmeans2

from .decay import decay_sums, unit
from .metrics import per_user_recovery
from .retrieval import per_medoid_budget, proportional_budget
from .user_pass import WARD, Clusterer, fixed_clusters, represent_history
from .ward import UNCLUSTERED, WardClusters

BUDGET = 400
IMPRESSIONS_PER_ACTION = 20


# ---------------------------------------------------------------- metrics (per user)


def relevance(test_x: np.ndarray, rec_x: np.ndarray, threshold: float) -> float:
    """Share of test pins with cosine >= threshold to some recommended pin."""
    if len(test_x) == 0:
        return float("nan")
    if len(rec_x) == 0:
        return 0.0
    return float(np.mean((test_x @ rec_x.T).max(axis=1) >= threshold))


def recall(test_pins: np.ndarray, rec_pins: np.ndarray) -> float:
    """Share of test pins found in the recommendation set."""
    if len(test_pins) == 0:
        return float("nan")
    return float(np.mean(np.isin(test_pins, rec_pins)))


def diversity(rec_x: np.ndarray) -> float:
    """Mean pairwise cosine distance within a set of unit vectors, in O(n d):
    sum_{i != j} <x_i, x_j> = ||sum x||^2 - n."""
    n = len(rec_x)
    if n < 2:
        return 0.0
    total = rec_x.astype(np.float64).sum(axis=0)
    mean_cos = (float(total @ total) - n) / (n * (n - 1))
    return 1.0 - mean_cos


def ranking_metrics(action_scores: np.ndarray, impression_scores: np.ndarray) -> tuple[float, float, float]:
    """R-precision (share of actions in the top k, k = number of actions), the reciprocal rank
    of the first action (the best-ranked one), and the mean reciprocal rank over all actions.
    Ties rank actions after impressions."""
    k = len(action_scores)
    if k == 0:
        return float("nan"), float("nan"), float("nan")
    scores = np.r_[action_scores, impression_scores]
    is_action = np.r_[np.ones(k, bool), np.zeros(len(impression_scores), bool)]
    order = np.lexsort((is_action, -scores))  # score desc; on ties impressions first
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    r_precision = float(np.mean(ranks[:k] <= k))
    return r_precision, float(1.0 / ranks[:k].min()), float(np.mean(1.0 / ranks[:k]))


def exact_search(catalog_ids: np.ndarray, catalog_x: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
    """``search(queries, k)``: the k pins of the whole catalog with the highest cosine, exactly."""

    def search(queries: np.ndarray, k: int) -> np.ndarray:
        k = min(k, len(catalog_ids))
        scores = np.asarray(queries, dtype=np.float32) @ catalog_x.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-best, axis=1, kind="stable")
        return catalog_ids[np.take_along_axis(top, order, axis=1)]

    return search


def calibrated_threshold(
    x: np.ndarray, rng: np.random.Generator, quantile: float = 0.99, pairs: int = 200_000
) -> float:
    """The cosine that only (1 - quantile) of random pin pairs exceed."""
    i, j = rng.integers(0, len(x), pairs), rng.integers(0, len(x), pairs)
    keep = i != j
    cos = np.einsum("ij,ij->i", x[i[keep]], x[j[keep]])
    return float(np.quantile(cos, quantile))


# ---------------------------------------------------------------- user representations


@dataclass
class Users:
    """History and test sets of the evaluated users, with a catalog embedding lookup."""

    history: pd.DataFrame  # user_id, pin_id, ts (tz-naive UTC), sorted by user, ts
    test: pd.DataFrame  # user_id, pin_id (distinct)
    catalog_ids: np.ndarray  # sorted
    catalog_x: np.ndarray  # unit rows aligned with catalog_ids
    now: pd.Timestamp
    user_ids: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.user_ids = np.unique(self.test["user_id"].to_numpy())

    def x(self, pin_ids: np.ndarray | list[int]) -> np.ndarray:
        return self.catalog_x[np.searchsorted(self.catalog_ids, np.asarray(pin_ids))]


# A representation: for each user, embeddings (e x d) and their importance weights (e,)
Representation = dict[int, tuple[np.ndarray, np.ndarray]]


def last_pin(users: Users) -> Representation:
    """The latest action's pin; among actions at the same latest ts, the highest pin id."""
    last = users.history.sort_values(["user_id", "ts", "pin_id"], kind="stable").groupby("user_id").tail(1)
    return {int(u): (users.x([p]), np.ones(1)) for u, p in zip(last["user_id"], last["pin_id"])}


def decay_average(users: Users, decay_lambda: float) -> Representation:
    """The paper's control (``core.decay``): the decay-weighted average of the history's pins."""
    h = users.history.sort_values("user_id", kind="stable")
    age = (users.now - h["ts"]).dt.total_seconds().to_numpy() / 86400.0
    ids, sums = decay_sums(h["user_id"].to_numpy(), h["pin_id"].to_numpy(), age, decay_lambda, users.x)
    return {int(u): (unit(row)[None, :].astype(np.float32), np.ones(1)) for u, row in zip(ids, sums)}


def distinct_pins(users: Users) -> pd.DataFrame:
    return users.history[["user_id", "pin_id"]].drop_duplicates().sort_values(["user_id", "pin_id"], kind="stable")


def ward_members(users: Users, alpha: float) -> pd.DataFrame:
    """The product's clustering: the daily per-user pass (``core.user_pass``), Ward at alpha."""
    return _pass(users, alpha=alpha)


def complete_linkage_members(users: Users, alpha: float) -> pd.DataFrame:
    """Complete linkage cut where every pair in a cluster has squared distance <= alpha;
    pins in no cluster are dropped, with the product's singleton fallback."""
    return _pass(users, cluster=lambda _u, _p, x: _as_clusters(_complete_labels(x, alpha)), kind="cluster")


def kmeans_members(users: Users, k: int, seed: int) -> pd.DataFrame:
    """K-means on each user's distinct pins, k = min(k, pins), seeded ++ initialisation."""
    rng = np.random.default_rng(seed)
    return _pass(users, cluster=lambda _u, _p, x: _as_clusters(_kmeans_labels(x, k, rng)), kind="cluster")


def _pass(
    users: Users, *, alpha: float = 1.0, decay_lambda: float = 0.0, cluster: Clusterer | None = None, kind: str = WARD
) -> pd.DataFrame:
    """The pass's rows (one per cluster member) over the users' history, sorted by (user, cluster, pin)."""
    rows = represent_history(
        users.history,
        users.catalog_ids,
        users.catalog_x,
        alpha=alpha,
        decay_lambda=decay_lambda,
        now=users.now,
        cluster=cluster,
        kind=kind,
    )
    return rows.sort_values(["user_id", "cluster_id", "pin_id"], kind="stable").reset_index(drop=True)


def _as_clusters(labels: np.ndarray) -> WardClusters:
    """A baseline's labels (-1: in no cluster) as the pass takes them, clusters numbered from 0."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(len(labels), UNCLUSTERED, dtype=np.int64)
    keep = labels >= 0
    if not keep.any():
        return WardClusters(out, np.empty(0))
    _, out[keep] = np.unique(labels[keep], return_inverse=True)
    return WardClusters(out, np.full(int(out.max()) + 1, np.nan))


def _complete_labels(x: np.ndarray, alpha: float) -> np.ndarray:
    if len(x) < 2:
        return np.full(len(x), -1)
    labels = fcluster(linkage(x.astype(np.float64), method="complete"), t=np.sqrt(alpha), criterion="distance")
    sizes = np.bincount(labels)
    return np.where(sizes[labels] >= 2, labels, -1)


def _kmeans_labels(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    k = min(k, len(x))
    if k < 2:
        return np.zeros(len(x), dtype=np.int64)
    with warnings.catch_warnings():  # an empty cluster simply does not appear in the labels
        warnings.simplefilter("ignore", UserWarning)
        _, labels = kmeans2(x.astype(np.float64), k, minit="++", seed=rng)
    return labels


def cluster_representation(users: Users, members: pd.DataFrame, decay_lambda: float, embedding: str) -> Representation:
    """Each cluster as its medoid (Eq. 2) or its normalised centroid, weighted by importance
    (Eq. 3) with ``decay_lambda``: both computed by the daily pass on ``members``' clusters."""
    rows = _pass(users, decay_lambda=decay_lambda, cluster=fixed_clusters(members))
    first = np.flatnonzero(
        np.r_[
            True,
            np.any(
                rows[["user_id", "cluster_id"]].to_numpy()[1:] != rows[["user_id", "cluster_id"]].to_numpy()[:-1],
                axis=1,
            ),
        ]
    )
    if embedding == "medoid":
        vectors = users.x(rows["medoid_pin_id"].to_numpy()[first])
    elif embedding == "centroid":
        sums = np.add.reduceat(users.x(rows["pin_id"].to_numpy()).astype(np.float64), first, axis=0)
        vectors = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
    else:
        raise ValueError(f"unknown cluster embedding {embedding!r}")
    out: Representation = {}
    user_col = rows["user_id"].to_numpy()[first]
    importance = rows["importance"].to_numpy()[first]
    bounds = np.flatnonzero(np.r_[True, user_col[1:] != user_col[:-1], True])
    for start, end in itertools.pairwise(bounds):
        out[int(user_col[start])] = (vectors[start:end], importance[start:end])
    return out


# ---------------------------------------------------------------- running a model


@dataclass(frozen=True)
class ModelResult:
    """One run of one model: per evaluated user, each metric (columns ``USER_METRICS``)."""

    user_ids: np.ndarray
    per_user: np.ndarray  # users x metrics
    actions: np.ndarray  # test actions (distinct test pins) per user: the micro averages' weights
    queries: np.ndarray  # ANN queries per user

    def macro(self, metric: str) -> float:
        """The mean over users (each user weighs the same)."""
        return float(np.nanmean(self.per_user[:, USER_METRICS.index(metric)])) if len(self.user_ids) else float("nan")

    def micro(self, metric: str) -> float:
        """The mean over test actions (each user weighs by their number of test actions)."""
        values = self.per_user[:, USER_METRICS.index(metric)]
        ok = np.isfinite(values)
        return float(np.average(values[ok], weights=self.actions[ok])) if ok.any() else float("nan")

    def __getattr__(self, name: str) -> float:  # result.recall == result.macro("recall")
        if name in USER_METRICS:
            return self.macro(name)
        raise AttributeError(name)


USER_METRICS = [
    "relevance",
    "relevance_calibrated",
    "recall",
    "r_precision",
    "reciprocal_rank",
    "reciprocal_rank_all",
    "diversity",
]


def evaluate_representation(
    users: Users,
    representation: Representation,
    search: Callable[[np.ndarray, int], np.ndarray],
    *,
    sampled: int | None,
    rng: np.random.Generator,
    threshold: float,
    calibrated: float,
    negatives: dict[int, np.ndarray],
    policy: str = "sampled",
) -> ModelResult:
    """Metrics of one representation. ``policy='sampled'``: draw ``sampled`` embeddings by
    importance (without replacement, as the product does; None keeps every embedding) and fetch
    floor(budget / e) neighbours each. ``policy='proportional'``: every embedding gets a share of
    the budget by importance (``core.retrieval.proportional_budget``). ``search(queries, k)``
    returns k nearest pin ids per query row. Ranking scores actions and impressions by their
    best cosine to the embeddings queried."""
    test = users.test.groupby("user_id")["pin_id"].apply(np.asarray)
    ids, rows, actions, queries = [], [], [], []
    for user in users.user_ids.tolist():
        if user not in representation:
            continue
        vectors, weights = representation[user]
        if policy == "proportional":
            shares = proportional_budget(weights, BUDGET)
            used = np.flatnonzero(shares)
            vectors = vectors[used]
            recs = np.unique(
                np.concatenate([search(vectors[i : i + 1], int(shares[j]))[0] for i, j in enumerate(used)])
            )
        else:
            if sampled is not None and len(vectors) > sampled:
                chosen = rng.choice(len(vectors), size=sampled, replace=False, p=weights / weights.sum())
                vectors = vectors[chosen]
            recs = np.unique(search(vectors, per_medoid_budget(BUDGET, len(vectors))).ravel())
        test_pins = test[user]
        test_x, rec_x = users.x(test_pins), users.x(recs)
        action_scores = (test_x @ vectors.T).max(axis=1)
        impression_scores = (users.x(negatives[user]) @ vectors.T).max(axis=1)
        r_prec, rr_first, rr_all = ranking_metrics(action_scores, impression_scores)
        ids.append(user)
        rows.append(
            (
                relevance(test_x, rec_x, threshold),
                relevance(test_x, rec_x, calibrated),
                recall(test_pins, recs),
                r_prec,
                rr_first,
                rr_all,
                diversity(rec_x),
            )
        )
        actions.append(len(test_pins))
        queries.append(len(vectors))
    per_user = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(USER_METRICS))
    return ModelResult(
        np.asarray(ids, np.int64), per_user, np.asarray(actions, np.float64), np.asarray(queries, np.float64)
    )


def sample_negatives(users: Users, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """20 random catalog pins per test pin standing in for impressions; never a pin the user
    acted on, in the history or in the test (an impression is something not acted on)."""
    acted = pd.concat([users.history[["user_id", "pin_id"]], users.test[["user_id", "pin_id"]]])
    acted = acted.groupby("user_id")["pin_id"].apply(np.asarray)
    out = {}
    for user, pins in users.test.groupby("user_id")["pin_id"]:
        n = IMPRESSIONS_PER_ACTION * len(pins)
        seen = acted[user]
        kept: list[np.ndarray] = []
        while sum(map(len, kept)) < n:
            draw = users.catalog_ids[rng.integers(0, len(users.catalog_ids), 2 * n + 50)]
            kept.append(draw[~np.isin(draw, seen)])
            if len(kept) > 20:
                raise ValueError(f"user {user} acted on nearly the whole catalog: no impressions to draw")
        out[int(user)] = np.concatenate(kept)[:n]
    return out


def recovery(users: Users, members: pd.DataFrame, topic_of: pd.Series) -> dict[str, float]:
    """Mean per-user ARI and purity of ``members`` against planted topics."""
    d = distinct_pins(users)
    pins = d["pin_id"].to_numpy()
    return per_user_recovery(d["user_id"].to_numpy(), pins, topic_of.reindex(pins).to_numpy(), members)
