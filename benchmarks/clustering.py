"""Clustering-stage benchmark: users/s per core, product path vs naive scipy, same users, same run.

Population: the synthetic world's heavy-tailed users over a 90-day window, capped at 1,000
actions per user (as the pipeline does). Paths, each timed over the same users:
- naive: ``scipy.cluster.hierarchy.linkage(X, "ward")`` per user, one process (the baseline);
- fast, 1 process: the product's path (``ward_linkage``: float32 Gram distances, fastcluster's
  Ward), in-process;
- fast, all cores: the same through ``engines.workers.UserPool`` (worker processes).
Each path is timed ``--repeats`` times; the best time is kept (this machine is shared).

Run: ``make bench-clustering``; writes benchmarks/results/clustering.md and clustering.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_io

from pinnersage_dagster.core.synthetic import (
    UNKNOWN_PIN_ID,
    SyntheticWorld,
    generate_day_actions,
    generate_pins,
)
from pinnersage_dagster.core.ward import ward_clusters
from pinnersage_dagster.engines.workers import SharedMatrix, UserPool


def population(n_users: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.Series]:
    world = SyntheticWorld(n_users=n_users, n_pins=100_000, seed=seed, dirty_share=0, preset="clean")  # as committed
    day = date(2026, 8, 31)
    actions = pd.concat([generate_day_actions(world, day - timedelta(days=i)) for i in range(90)], ignore_index=True)
    actions = actions[actions.pin_id != UNKNOWN_PIN_ID].drop_duplicates()
    per_user_actions = actions.groupby("user_id").size()
    actions = actions.sort_values(["user_id", "ts"], ascending=[True, False]).groupby("user_id").head(1000)
    distinct = actions[["user_id", "pin_id"]].drop_duplicates().sort_values(["user_id", "pin_id"])
    pins = generate_pins(world)
    order = np.argsort(pins.pin_id)
    rows = np.searchsorted(pins.pin_id[order], distinct.pin_id.to_numpy())
    return distinct.user_id.to_numpy(), distinct.pin_id.to_numpy(), pins.embedding[order][rows], per_user_actions


def gram_scipy(users: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """The previous product path: the same float32 Gram distances, scipy's Ward linkage, the same cut.
    Returns each user's labels, to compare with fastcluster's."""
    from scipy.cluster.hierarchy import linkage

    from pinnersage_dagster.core.ward import clusters_from_linkage, gram_distances

    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    labels = []
    for s, e in zip(starts.tolist(), np.r_[starts[1:], len(users)].tolist()):
        if e - s >= 2:
            labels.append(clusters_from_linkage(linkage(gram_distances(x[s:e]), method="ward"), 1.3).labels)
    return labels


def gram_fastcluster_labels(users: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    from pinnersage_dagster.core.ward import clusters_from_linkage, ward_linkage

    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return [
        clusters_from_linkage(ward_linkage(x[s:e]), 1.3).labels
        for s, e in zip(starts.tolist(), np.r_[starts[1:], len(users)].tolist())
        if e - s >= 2
    ]


def ward_per_user(x: np.ndarray, users: np.ndarray, pins: np.ndarray, alpha: float, reference: bool = False) -> list:
    """Algorithm 1 on each user's rows (distinct pins, sorted by user): the labels, as the
    product's per-user pass computes them before medoids and importances."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return [
        ward_clusters(x[s:e], alpha, reference=reference).labels
        for s, e in zip(starts.tolist(), np.r_[starts[1:], len(users)].tolist())
    ]


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    users, pins, x, actions = population(args.users, args.seed)
    n_users = len(np.unique(users))
    pins_per_user = pd.Series(users).value_counts()
    naive = best_of(args.repeats, lambda: ward_per_user(x, users, pins, 1.3, reference=True))
    previous = best_of(args.repeats, lambda: gram_scipy(users, x))
    fast = best_of(args.repeats, lambda: ward_per_user(x, users, pins, 1.3))
    same_as_scipy = all(np.array_equal(a, b) for a, b in zip(gram_scipy(users, x), gram_fastcluster_labels(users, x)))
    with UserPool(cores) as pool, SharedMatrix(*x.shape) as matrix:
        matrix.array[:] = x
        pool.map_users(ward_per_user, matrix, users[:1000], pins[:1000], alpha=1.3)()  # workers warm
        parallel = best_of(args.repeats, lambda: pool.map_users(ward_per_user, matrix, users, pins, alpha=1.3)())
    same = all(
        np.array_equal(a, b)
        for a, b in zip(ward_per_user(x, users, pins, 1.3, reference=True), ward_per_user(x, users, pins, 1.3))
    )

    rows = [
        ("naive `linkage(X, 'ward')`, 1 process (baseline)", naive, 1),
        ("float32 Gram + scipy's Ward linkage and the cut, 1 process (the previous product path)", previous, 1),
        ("product path (float32 Gram + fastcluster), 1 process", fast, 1),
        (f"product path, {cores} worker processes", parallel, cores),
    ]
    command = f"make bench-clustering  # = .venv/bin/python benchmarks/clustering.py --users {args.users} --repeats {args.repeats}"
    machine = results_io.machine()
    results = {
        "command": command,
        "machine": machine,
        "users": n_users,
        "user_pins": len(users),
        "actions_per_user": {q: float(actions.quantile(v)) for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
        "distinct_pins_per_user_max": int(pins_per_user.max()),
        "identical_clusters": bool(same),
        "fastcluster_cuts_equal_scipy_on_same_distances": bool(same_as_scipy),
        "paths": [
            {
                "path": name,
                "seconds": round(t, 3),
                "users_per_s": round(n_users / t, 1),
                "users_per_s_per_core": round(n_users / t / c, 1),
                "ratio_per_core": round(naive / t / c, 2),
                "ratio_wall": round(naive / t, 2),
            }
            for name, t, c in rows
        ],
    }
    lines = [
        "# Clustering stage: Ward per user",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {machine}. Population: {n_users:,} synthetic users, {len(users):,} distinct user-pins; actions per "
        f"user over 90 days p50 {results['actions_per_user']['p50']:.0f}, p90 {results['actions_per_user']['p90']:.0f}, "
        f"p99 {results['actions_per_user']['p99']:.0f} (capped at 1,000; largest user {pins_per_user.max()} distinct pins). "
        f"Best of {args.repeats} runs per path; all paths measured in the same run on the same users. "
        f"Clusters identical between naive and product paths: {same}; fastcluster's cuts equal scipy's on the "
        f"same distances for every user: {same_as_scipy}.",
        "",
        "| path | seconds | users/s | users/s per core | ratio to naive, per core | ratio to naive, wall |",
        "|---|---|---|---|---|---|",
    ]
    for p in results["paths"]:
        lines.append(
            f"| {p['path']} | {p['seconds']} | {p['users_per_s']} | {p['users_per_s_per_core']} | "
            f"{p['ratio_per_core']} | {p['ratio_wall']} |"
        )
    results_io.write("clustering", results, lines)


if __name__ == "__main__":
    main()
