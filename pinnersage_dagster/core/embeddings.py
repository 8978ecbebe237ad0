"""Pin embeddings learned from the action log, for sources that give none.

Two pins are related when the same users act on both. From the distinct (user, pin) pairs:

1. pins acted on by fewer than ``min_users`` users are left out (too little evidence);
2. C = XᵀX counts, for each pair of pins, the users who acted on both (diagonal removed);
3. positive PMI: M_ij = max(0, log(C_ij · N / (c_i · c_j))), N = ΣC, c_i = Σ_j C_ij;
4. truncated SVD M ≈ U S Vᵀ (``scipy.sparse.linalg.svds``) to ``dim`` components; a pin's
   embedding is its row of U·√S, unit-normalised (the symmetric factorisation of Levy &
   Goldberg, 2014).

Deterministic: a fixed ARPACK start vector, components ordered by singular value, and the sign
of each component fixed so its largest entry is positive. Pins left out get a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

PINS_PER_DIMENSION = 2  # below 2·dim pins the spectrum is mostly noise; we refuse instead


class TooFewPins(ValueError):
    """The log cannot support embeddings of the asked dimension."""


@dataclass(frozen=True)
class LearnedEmbeddings:
    pin_id: np.ndarray  # sorted, int64
    embedding: np.ndarray  # (pins, dim) float32, unit rows
    singular_values: np.ndarray  # descending
    popularity: np.ndarray  # users per pin, aligned with pin_id
    excluded: pd.DataFrame  # pin_id, reason, detail
    users: int


def minimum_pins(dim: int) -> int:
    return PINS_PER_DIMENSION * dim


def learn_embeddings(user_ids: np.ndarray, pin_ids: np.ndarray, *, dim: int, min_users: int) -> LearnedEmbeddings:
    """Embeddings of the pins in (user, pin) action pairs (repeats are counted once)."""
    pairs = np.unique(np.c_[np.asarray(user_ids, np.int64), np.asarray(pin_ids, np.int64)], axis=0)
    users, user_row = np.unique(pairs[:, 0], return_inverse=True)
    pins, pin_col = np.unique(pairs[:, 1], return_inverse=True)
    per_pin = np.bincount(pin_col, minlength=len(pins))
    excluded = [
        _excluded(
            pins[per_pin < min_users],
            "too_few_users",
            [f"acted on by {n} user(s); needs {min_users}" for n in per_pin[per_pin < min_users]],
        )
    ]

    kept = per_pin >= min_users
    X = sp.csr_matrix((np.ones(len(pairs), np.float64), (user_row, pin_col)), shape=(len(users), len(pins)))[:, kept]
    C = (X.T @ X).tocsr()
    C.setdiag(0)
    C.eliminate_zeros()
    ppmi = _positive_pmi(C)
    related = np.diff(ppmi.indptr) > 0
    lonely = pins[kept][~related]
    excluded.append(
        _excluded(lonely, "no_cooccurrence", ["its users act on no other embedded pin with positive PMI"] * len(lonely))
    )
    ppmi = ppmi[related][:, related]
    ids, popularity = pins[kept][related], per_pin[kept][related]
    if len(ids) < minimum_pins(dim):
        raise TooFewPins(
            f"learning {dim}-d embeddings needs at least {minimum_pins(dim)} pins acted on by >= {min_users} users "
            f"with co-occurring actions; the log has {len(ids)} (lower the dimension or bring more history)"
        )
    embedding, singular = _factorise(ppmi, dim)
    return LearnedEmbeddings(
        pin_id=ids,
        embedding=embedding,
        singular_values=singular,
        popularity=popularity,
        excluded=pd.concat(excluded, ignore_index=True),
        users=len(users),
    )


def _excluded(pin_ids: np.ndarray, reason: str, details: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"pin_id": np.asarray(pin_ids, np.int64), "reason": reason, "detail": details})


def _positive_pmi(C: sp.csr_matrix) -> sp.csr_matrix:
    total = C.sum()
    counts = np.asarray(C.sum(axis=1)).ravel()
    coo = C.tocoo()
    with np.errstate(divide="ignore"):
        pmi = np.log(coo.data * total / (counts[coo.row] * counts[coo.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=C.shape)


def _factorise(ppmi: sp.csr_matrix, dim: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.full(ppmi.shape[0], 1.0 / np.sqrt(ppmi.shape[0]))
    u, s, _ = svds(ppmi, k=dim, v0=start, solver="arpack")
    order = np.argsort(-s, kind="stable")
    u, s = u[:, order], s[order]
    u *= np.sign(u[np.abs(u).argmax(axis=0), np.arange(dim)])  # a fixed sign per component
    x = u * np.sqrt(s)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32), s


def nearest_neighbours(learned: LearnedEmbeddings, pins: int = 5, k: int = 5) -> pd.DataFrame:
    """The ``k`` nearest pins (cosine) of the ``pins`` most popular pins: a glance at what was learned."""
    top = np.argsort(-learned.popularity, kind="stable")[:pins]
    scores = learned.embedding[top] @ learned.embedding.T
    rows = []
    for i, row in zip(top, scores):
        row[i] = -np.inf
        best = np.argsort(-row, kind="stable")[:k]
        rows.append(
            {
                "pin_id": int(learned.pin_id[i]),
                "users": int(learned.popularity[i]),
                "nearest (cosine)": ", ".join(f"{learned.pin_id[j]} ({row[j]:.2f})" for j in best),
            }
        )
    return pd.DataFrame(rows)
