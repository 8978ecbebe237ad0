"""Near-duplicate pairs by random-hyperplane hashing (SimHash), verified exactly.

Each of ``tables`` hash tables signs every pin against ``bits`` random hyperplanes; pins with
the same signature share a bucket, and every pair inside a bucket is compared by its exact
cosine. Two pins at angle ``theta`` share one table's bucket with probability
``(1 - theta / pi) ** bits``, so a pair is missed by all tables with probability
``(1 - (1 - theta / pi) ** bits) ** tables``, whatever the shape of the data: unlike a graph
search, no pin is hard to reach. Every pair returned has cosine >= the threshold (precision 1).
"""

from __future__ import annotations

import numpy as np

MAX_COSINES = 1 << 22  # cosines computed at once (16 MiB)
MAX_ROWS = 1 << 16  # embedding rows gathered at once (64 MiB at d = 256)
SIGNATURE_ROWS = 1 << 16  # rows projected at once when signing


def collision_probability(cosine: float, bits: int, tables: int) -> float:
    """The probability that a pair at ``cosine`` shares a bucket of at least one table."""
    one = (1.0 - np.arccos(np.clip(cosine, -1.0, 1.0)) / np.pi) ** bits
    return float(1.0 - (1.0 - one) ** tables)


def hashed_pairs(
    x: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    is_new: np.ndarray,
    threshold: float,
    *,
    tables: int,
    bits: int,
    seed: int,
) -> np.ndarray:
    """Label pairs at cosine >= ``threshold`` that share a bucket, among the pins at ``rows`` of
    the unit rows ``x`` (labelled ``labels``), of which at least one ``is_new``: a day's update
    compares only the buckets its new pins fall in. Each pair appears once per table it meets in."""
    if not 1 <= bits <= 30 or tables < 1:
        raise ValueError(f"hashing needs 1 <= bits <= 30 and tables >= 1, got bits={bits}, tables={tables}")
    if not (len(rows) == len(labels) == len(is_new)):
        raise ValueError("rows, labels and is_new must be aligned")
    if len(rows) < 2 or not is_new.any():
        return np.empty((0, 2), np.int64)
    signatures = _signatures(x, rows, tables, bits, seed)
    found = [_bucket_pairs(x, rows, is_new, signature, threshold) for signature in signatures]
    pairs = np.vstack(found)
    return labels[pairs]


def _signatures(x: np.ndarray, rows: np.ndarray, tables: int, bits: int, seed: int) -> np.ndarray:
    """(tables, len(rows)) bucket keys, projecting a bounded slice of rows at a time."""
    planes = np.random.default_rng(seed).standard_normal((x.shape[1], tables * bits)).astype(np.float32)
    weights = np.left_shift(1, np.arange(bits, dtype=np.int32))
    out = np.empty((tables, len(rows)), dtype=np.int32)  # bits <= 30: a key and its new-first flag fit
    for start in range(0, len(rows), SIGNATURE_ROWS):
        part = rows[start : start + SIGNATURE_ROWS]
        sign = (x[part] @ planes > 0).reshape(len(part), tables, bits)
        out[:, start : start + len(part)] = (sign @ weights).T
    return out


def _bucket_pairs(
    x: np.ndarray, rows: np.ndarray, is_new: np.ndarray, signature: np.ndarray, threshold: float
) -> np.ndarray:
    """Position pairs (into ``rows``) inside one table's buckets holding a new pin.

    Within a bucket the new pins come first, and each new pin is compared with the pins after
    it: every pair with a new pin is computed once. Buckets of one size are compared together
    in one batched product; a bucket too big for one block is compared a slice of rows at a time.
    """
    # only the buckets a new pin falls in: their pins are picked by a lookup over the keys (a
    # day of uploads meets a few thousand buckets), then sorted by bucket, its new pins first
    picked = np.flatnonzero(np.isin(signature, signature[is_new]))
    order = picked[np.argsort(signature[picked] * 2 + ~is_new[picked])]
    key = signature[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    new_counts = np.add.reduceat(is_new[order].astype(np.int64), starts)
    wanted = (sizes >= 2) & (new_counts > 0)
    starts, sizes, new_counts = starts[wanted], sizes[wanted], new_counts[wanted]
    found = [np.empty((0, 2), np.int64)]
    for size in np.unique(sizes).tolist():
        group, group_new = starts[sizes == size], new_counts[sizes == size]
        if size * size > MAX_COSINES:
            for start in group.tolist():
                found.append(_big_bucket_pairs(x, rows, is_new, order[start : start + size], threshold))
            continue
        per_block = max(1, min(MAX_COSINES // (size * size), MAX_ROWS // size))
        for first in range(0, len(group), per_block):
            members = order[group[first : first + per_block, None] + np.arange(size)]  # (buckets, size)
            queries = int(group_new[first : first + per_block].max())  # rows that can be new
            block = x[rows[members]]
            close = block[:, :queries] @ block.transpose(0, 2, 1) >= threshold
            close &= np.triu(np.ones((queries, size), dtype=bool), 1) & is_new[members[:, :queries]][:, :, None]
            bucket, i, j = np.nonzero(close)
            found.append(np.column_stack([members[bucket, i], members[bucket, j]]))
    return np.vstack(found)


def _big_bucket_pairs(
    x: np.ndarray, rows: np.ndarray, is_new: np.ndarray, members: np.ndarray, threshold: float
) -> np.ndarray:
    """One bucket's pairs with a new pin (new members first), a bounded slice of new rows at a time."""
    new = int(is_new[members].sum())
    bucket = x[rows[members]] if len(members) <= MAX_ROWS else None  # gathered once when it fits
    found = [np.empty((0, 2), np.int64)]
    step = max(1, MAX_COSINES // len(members))
    for first in range(0, new, step):
        last = min(first + step, new)  # only new pins query: old pairs were found when they were new
        query, later = members[first:last], members[first:]
        if bucket is None:
            close = x[rows[query]] @ x[rows[later]].T >= threshold
        else:
            close = bucket[first:last] @ bucket[first:].T >= threshold
        i, j = np.nonzero(close)
        keep = j > i  # the pair's second pin comes after the first in the bucket
        found.append(np.column_stack([query[i[keep]], later[j[keep]]]))
    return np.vstack(found)
