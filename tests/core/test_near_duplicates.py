"""Near-duplicate hashing: exactly the bucket pairs at the threshold, at the promised rate."""

import numpy as np
import pytest

from pinnersage_dagster.core import near_duplicates
from pinnersage_dagster.core.near_duplicates import _signatures, collision_probability, hashed_pairs

DIM = 24


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def at_cosine(base: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """Unit rows at exactly ``cosine`` to each unit row of ``base``."""
    noise = rng.standard_normal(base.shape)
    noise -= (noise * base).sum(1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cosine * base + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def clustered(n: int = 3000, seed: int = 0) -> np.ndarray:
    """Tight clusters (big buckets) plus copies of a fifth of the pins at cosines 0.93-0.999."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((6, DIM)))
    x = unit(centres[rng.integers(0, 6, n)] + 0.35 * rng.standard_normal((n, DIM)))
    picked = rng.choice(n, n // 5, replace=False)
    copies = np.vstack(
        [at_cosine(x[[i]], float(c), rng) for i, c in zip(picked, rng.uniform(0.93, 0.999, len(picked)))]
    )
    return np.vstack([x, copies])


def brute_force(x, rows, is_new, threshold, tables, bits, seed) -> set:
    """Every pair sharing a bucket of some table, with a new pin, at cosine >= threshold."""
    signatures = _signatures(x, rows, tables, bits, seed)
    cosine = x[rows] @ x[rows].T
    same = np.zeros(cosine.shape, dtype=bool)
    for signature in signatures:
        same |= signature[:, None] == signature[None, :]
    a, b = np.nonzero(np.triu(same & (cosine >= threshold), 1))
    keep = is_new[a] | is_new[b]
    return {(int(i), int(j)) for i, j in zip(a[keep], b[keep])}


def as_set(pairs: np.ndarray) -> set:
    return set(map(tuple, np.sort(pairs, axis=1).tolist()))


@pytest.mark.parametrize("max_cosines", [1 << 22, 64])  # one batched block, or buckets sliced row by row
# a rebuild, a day's new pins, or a few new copies (most buckets then hold no new pin)
@pytest.mark.parametrize("new_share", [1.0, 0.05, 0.01])
def test_the_pairs_are_exactly_the_bucket_pairs_at_the_threshold(monkeypatch, max_cosines, new_share):
    monkeypatch.setattr(near_duplicates, "MAX_COSINES", max_cosines)
    monkeypatch.setattr(near_duplicates, "MAX_ROWS", 50)
    x = clustered()
    rng = np.random.default_rng(1)
    rows = rng.permutation(len(x))[: len(x) - 100]  # not every row of x is in the graph
    labels = rows * 7 + 3
    is_new = rng.random(len(rows)) < new_share
    if new_share == 0.01:  # 30 of the copies, the last rows of x
        is_new = np.isin(rows, rng.choice(np.arange(3000, len(x)), 30, replace=False))
    pairs = hashed_pairs(x, rows, labels, is_new, 0.95, tables=4, bits=6, seed=5)
    expected = brute_force(x, rows, is_new, 0.95, 4, 6, 5)
    assert len(expected) > {1.0: 300, 0.05: 20, 0.01: 10}[new_share]
    assert as_set(pairs) == as_set(labels[np.array(sorted(expected))])


def test_every_pair_found_is_at_the_threshold_and_none_is_missed_beyond_chance():
    rng = np.random.default_rng(2)
    base = unit(rng.standard_normal((4000, 64)))
    x = np.vstack([base, at_cosine(base, 0.95, rng)])  # pair i is (i, 4000 + i), at exactly 0.95
    rows = np.arange(len(x))
    pairs = hashed_pairs(x, rows, rows, np.ones(len(x), bool), 0.95 - 1e-5, tables=3, bits=8, seed=9)
    cosine = np.einsum("ij,ij->i", x[pairs[:, 0]], x[pairs[:, 1]])
    assert cosine.min() >= 0.95 - 1e-5
    found = np.zeros(4000, dtype=bool)
    planted = np.abs(pairs[:, 0] - pairs[:, 1]) == 4000
    found[np.minimum(pairs[planted, 0], pairs[planted, 1])] = True
    expected = collision_probability(0.95, bits=8, tables=3)
    assert abs(found.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / 4000), (found.mean(), expected)


def test_nothing_to_compare_and_bad_parameters():
    x = unit(np.random.default_rng(3).standard_normal((10, DIM)))
    rows = np.arange(10)
    assert hashed_pairs(x, rows, rows, np.zeros(10, bool), 0.9, tables=2, bits=4, seed=0).shape == (0, 2)
    assert hashed_pairs(x, rows[:1], rows[:1], np.ones(1, bool), 0.9, tables=2, bits=4, seed=0).shape == (0, 2)
    with pytest.raises(ValueError, match="bits"):
        hashed_pairs(x, rows, rows, np.ones(10, bool), 0.9, tables=2, bits=31, seed=0)
    with pytest.raises(ValueError, match="aligned"):
        hashed_pairs(x, rows, rows[:5], np.ones(10, bool), 0.9, tables=2, bits=4, seed=0)
