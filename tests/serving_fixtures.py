"""A small hand-made serving snapshot whose geometry the tests control."""

from pathlib import Path

import numpy as np
import pandas as pd

from pinnersage_dagster.core.hnsw import build_index, publish_index
from pinnersage_dagster.serving.catalog import ArrayCatalog
from pinnersage_dagster.serving.snapshot import publish_snapshot

DIM = 16
TOPICS = 4
PER_TOPIC = 60


def catalog(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """240 pins in 4 tight topics (cosine ~0.9 within, ~0 across); ids 1000 + row."""
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM)[:TOPICS]
    topic = np.repeat(np.arange(TOPICS), PER_TOPIC)
    x = centres[topic] + 0.08 * rng.standard_normal((len(topic), DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return 1000 + np.arange(len(topic), dtype=np.int64), x.astype(np.float32), topic


def publish_day(root: Path, partition: str, importance: tuple[float, float] = (3.0, 1.0)) -> dict:
    """User 1 has two interests (topics 0 and 1); user 2 has one (topic 2); user 3 none.

    User 1 acted on the first 10 pins of topics 0 and 1 (the members); topic 3 is untouched.
    """
    ids, x, topic = catalog()
    index_dir = root / "pin_index" / partition
    index_dir.mkdir(parents=True, exist_ok=True)
    publish_index(index_dir, build_index(x, M=16, ef_construction=100, ef=100), ids,
                  source_partition=partition, M=16, ef_construction=100, ef=100)
    t0, t1, t2 = (np.flatnonzero(topic == t)[:10] for t in range(3))
    members = pd.DataFrame(
        {
            "user_id": [1] * 20 + [2] * 10,
            "cluster_id": [0] * 10 + [1] * 10 + [0] * 10,
            "pin_id": np.r_[ids[t0], ids[t1], ids[t2]],
        }
    )
    medoids = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "cluster_id": [0, 1, 0],
            "medoid_pin_id": [ids[t0][0], ids[t1][0], ids[t2][0]],
            "importance": [importance[0], importance[1], 2.0],
            "size": [10, 10, 10],
            "n_actions": [10, 10, 10],
            "kind": ["ward", "ward", "ward"],
        }
    )
    day_end = pd.Timestamp(partition) + pd.Timedelta(days=1)
    return publish_snapshot(
        root / "serving" / partition,
        partition=partition,
        batch_time=day_end,
        medoids=medoids,
        members=members,
        seen=members[["user_id", "pin_id"]],
        popular=ids[np.flatnonzero(topic == 3)][:50],
        catalog=ArrayCatalog(ids, x),
        index_dir=index_dir,
        alpha=1.3,
        decay_lambda=0.01,
    )
