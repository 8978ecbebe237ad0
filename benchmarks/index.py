"""pin_index benchmark: build time, size on disk, recall@133 against exact search, query latency per ef.

Index: the product's ``build_index`` (hnswlib, inner product, M=32, ef_construction=200) over
``--pins`` synthetic unit embeddings (d=256). Queries: ``--queries`` pins drawn from the
catalog, as medoids are. Exact neighbours come from a brute-force matrix product in the same
run. Latency is one query at a time on one thread (a serving request's view); recall is the
share of the exact top-133 found in the index's top-133, averaged over queries.

Run: ``make bench-index``; writes benchmarks/results/index.md and index.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_io

from pinnersage_dagster.core.hnsw import build_index
from pinnersage_dagster.core.synthetic import SyntheticWorld, generate_pins

K = 133  # floor(400 / 3): neighbours per sampled medoid


def exact_neighbours(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 100):
        scores = queries[start : start + 100] @ x.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + 100] = np.take_along_axis(top, order, axis=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pins", type=int, default=300_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--efs", default="133,200,300,400")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    x = generate_pins(SyntheticWorld(n_pins=args.pins, seed=args.seed, preset="clean")).embedding  # as committed
    rng = np.random.default_rng(args.seed)
    queries = x[rng.choice(len(x), args.queries, replace=False)]
    started = time.perf_counter()
    index = build_index(x, M=32, ef_construction=200, ef=200)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.bin"
        index.save_index(str(path))
        size_mb = path.stat().st_size / 2**20
    started = time.perf_counter()
    truth = exact_neighbours(x, queries, K)
    exact_ms = (time.perf_counter() - started) / len(queries) * 1000

    index.set_num_threads(1)
    rows = []
    for ef in map(int, args.efs.split(",")):
        index.set_ef(max(ef, K))
        latencies, found = [], []
        for q, expected in zip(queries, truth):
            t = time.perf_counter()
            labels, _ = index.knn_query(q[None, :], k=K)
            latencies.append(time.perf_counter() - t)
            found.append(len(np.intersect1d(labels[0], expected)) / K)
        ms = np.asarray(latencies) * 1000
        rows.append(
            {
                "ef": max(ef, K),
                "recall_at_133": round(float(np.mean(found)), 4),
                "p50_ms": round(float(np.percentile(ms, 50)), 3),
                "p99_ms": round(float(np.percentile(ms, 99)), 3),
            }
        )

    command = f"make bench-index  # = .venv/bin/python benchmarks/index.py --pins {args.pins} --queries {args.queries}"
    machine = results_io.machine()
    results = {
        "command": command,
        "machine": machine,
        "pins": args.pins,
        "dimension": int(x.shape[1]),
        "M": 32,
        "ef_construction": 200,
        "build_seconds": round(build_seconds, 1),
        "size_on_disk_mb": round(size_mb, 1),
        "exact_search_ms_per_query": round(exact_ms, 2),
        "ef": rows,
    }
    lines = [
        "# pin_index: HNSW build, size, recall and latency",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {machine}. {args.pins:,} synthetic pins, d={x.shape[1]}, hnswlib inner product, M=32, "
        f"ef_construction=200, built on all cores in **{build_seconds:.1f} s**, **{size_mb:.0f} MiB** on disk. "
        f"Recall@{K} against exact search (brute force, {exact_ms:.1f} ms per query in the same run) over "
        f"{args.queries:,} catalog pins as queries; latency of one query at a time on one thread.",
        "",
        f"| ef | recall@{K} | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *[f"| {r['ef']} | {r['recall_at_133']} | {r['p50_ms']} | {r['p99_ms']} |" for r in rows],
        "",
        "The product's default is ef = 200 (`hnsw_ef`). An ef below k = 133 is raised to k by hnswlib.",
    ]
    results_io.write("index", results, lines)


if __name__ == "__main__":
    main()
