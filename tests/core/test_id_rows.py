"""IdRows: the dense table and the binary search give the same rows, absent ids -1."""

import numpy as np
import pytest

from pinnersage_dagster.core.id_rows import IdRows


def _expected(ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    where = {int(p): r for r, p in enumerate(ids)}
    return np.array([where.get(int(q), -1) for q in queries], dtype=np.int64)


@pytest.mark.parametrize(
    "ids, dense",
    [
        (np.array([3, 4, 6, 9, 10, 11]), True),  # a counter with gaps: the table
        (np.array([-7, -5, 0, 2]), True),  # negative ids
        (np.array([1, 10**12, 2 * 10**12]), False),  # sparse (hashes): the binary search
        (np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max]), False),  # the whole int64 range
        (np.array([5]), True),
    ],
)
def test_rows_of_present_and_absent_ids(ids, dense):
    lookup = IdRows(ids)
    assert (lookup._table is not None) == dense
    extremes = [np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0, 1]
    queries = np.array(sorted({*ids.tolist(), *(ids + 1).clip(max=np.iinfo(np.int64).max).tolist(), *extremes}))
    queries = np.concatenate([queries, queries[::-1], ids[::-1]])
    np.testing.assert_array_equal(lookup(queries), _expected(ids, queries))


def test_a_large_dense_catalog_matches_the_binary_search():
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(300_000, 100_000, replace=False)).astype(np.int64)
    queries = rng.integers(-10, 300_010, 50_000)
    table = IdRows(ids)
    assert table._table is not None
    rows = np.minimum(np.searchsorted(ids, queries), len(ids) - 1)
    np.testing.assert_array_equal(table(queries), np.where(ids[rows] == queries, rows, -1))


def test_no_ids():
    np.testing.assert_array_equal(IdRows(np.empty(0, np.int64))(np.array([1, 2])), [-1, -1])
