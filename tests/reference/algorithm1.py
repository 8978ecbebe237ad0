"""Algorithm 1 of the paper, literally as printed (slow, O(m^3) in pure Python): the reference.

Kept in the tests only; the product runs scipy's nearest-neighbour chain instead.
"""

from __future__ import annotations

import numpy as np


def algorithm1(P: np.ndarray, alpha: float) -> list[frozenset[int]]:
    """Ward(A, alpha): clusters as sets of row indices of ``P``."""
    merge_history = merge_loop(P)
    merge_history.sort(key=lambda item: item[1], reverse=True)
    clusters: list[frozenset[int]] = []
    for union, d_ij in merge_history:
        if d_ij <= alpha and all(not (union & c) for c in clusters):
            clusters.append(union)  # add C_i u C_j to the set of clusters
    return clusters


def merge_loop(P: np.ndarray) -> list[tuple[frozenset[int], float]]:
    """The stack loop of Algorithm 1: every merge (C_i u C_j, d_ij) in the order it happens."""
    m = P.shape[0]
    A = list(range(m))  # "Set C_i <- {i}, for all i in A"
    C = {i: {i} for i in A}
    diff = P[:, None, :].astype(np.float64) - P[None, :, :].astype(np.float64)
    d = np.einsum("ijk,ijk->ij", diff, diff)  # d_ij <- ||P_i - P_j||_2^2
    merge_history: list[tuple[frozenset[int], float]] = []
    stack: list[int] = []
    while len(A) > 1:
        stack.append(A[0])  # put first pin from A (without removing it) to the stack
        while len(stack) > 0:
            i = stack[-1]
            others = [j for j in A if j != i]
            nearest = min(d[i, j] for j in others)
            J = [j for j in others if d[i, j] == nearest]
            merged = False
            if len(stack) >= 2:
                j = stack[-2]
                if j in J:
                    stack.pop()
                    stack.pop()
                    merge_history.append((frozenset(C[i] | C[j]), float(d[i, j])))
                    A.remove(j)
                    n_i, n_j = len(C[i]), len(C[j])
                    for k in A:
                        if k != i:
                            n_k = len(C[k])
                            # Eq. 1, the Lance-Williams update for Ward
                            d[i, k] = d[k, i] = ((n_i + n_k) * d[i, k] + (n_j + n_k) * d[j, k] - n_k * d[i, j]) / (
                                n_i + n_j + n_k
                            )
                    C[i] = C[i] | C[j]
                    merged = True
            if not merged:
                stack.append(J[0])  # push first element of J in the stack
    return merge_history
