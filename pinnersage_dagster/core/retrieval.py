"""How a request's retrieval budget is spent across a user's medoids.

- ``sampled`` (the paper, section 4): draw ``e`` medoids by importance, floor(budget / e) each.
- ``proportional`` (ours): every medoid gets a share of the budget proportional to its
  importance, with a floor and a cap:
  * floor ``PROPORTIONAL_FLOOR`` = 10 pins: a medoid's first neighbours are the ones worth a
    query; a share below 10 buys little and still costs a whole ANN query, so when the budget
    cannot give every medoid 10, only the most important budget // 10 medoids are queried
    (at most 40 queries for the paper's budget of 400);
  * cap ``PROPORTIONAL_CAP`` = half the budget: one dominant interest never takes the whole
    list, so a user with two interests or more always sees at least two.
  Shares are rounded by largest remainder, so they sum to the budget exactly when the cap
  allows (never more).
"""

from __future__ import annotations

import numpy as np

POLICIES = ("sampled", "proportional")
PROPORTIONAL_FLOOR = 10
PROPORTIONAL_CAP_SHARE = 0.5


def sample_medoids(importance: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to ``n`` clusters drawn without replacement, proportionally to importance.

    Successive sampling: each draw picks among the clusters not yet drawn with probability
    proportional to their importance (numpy's ``choice(replace=False, p=...)``).
    """
    importance = _checked(importance)
    if importance.size == 0 or n <= 0:
        return np.empty(0, dtype=np.int64)
    n = min(n, importance.size)
    return rng.choice(importance.size, size=n, replace=False, p=importance / importance.sum())


def per_medoid_budget(budget: int, sampled: int) -> int:
    """The paper's floor(400 / e) neighbours per sampled embedding."""
    return budget // sampled if sampled else 0


def proportional_budget(
    importance: np.ndarray, budget: int, *, floor: int = PROPORTIONAL_FLOOR, cap_share: float = PROPORTIONAL_CAP_SHARE
) -> np.ndarray:
    """Pins to fetch per medoid (aligned with ``importance``; 0 = not queried), sum <= budget."""
    importance = _checked(importance)
    shares = np.zeros(importance.size, dtype=np.int64)
    if importance.size == 0 or budget <= 0:
        return shares
    floor = max(1, min(floor, budget))
    cap = max(floor, int(budget * cap_share)) if importance.size > 1 else budget
    # the most important medoids that can all get the floor (ties: the lower index first)
    order = np.lexsort((np.arange(importance.size), -importance))
    queried = order[: max(1, budget // floor)]
    weights = importance[queried]
    share = np.zeros(queried.size)
    free, open_ = float(budget), np.ones(queried.size, dtype=bool)
    while open_.any():  # water-filling: a capped medoid's excess goes to the others, by importance
        share[open_] = free * weights[open_] / weights[open_].sum()
        over = open_ & (share > cap)
        if not over.any():
            break
        share[over] = cap
        open_ &= ~over
        free = budget - share[~open_].sum()
    share = np.maximum(share, floor)
    base = np.floor(share).astype(np.int64)
    base = np.minimum(base, cap)
    spare = budget - base.sum()
    if spare > 0:  # largest remainders first, never above the cap
        room = np.argsort(-(share - base), kind="stable")
        for i in room:
            if spare == 0:
                break
            if base[i] < cap:
                base[i] += 1
                spare -= 1
    while base.sum() > budget:  # the floors overshot: take from the largest shares
        base[np.argmax(base)] -= 1
    shares[queried] = base
    return shares


def _checked(importance: np.ndarray) -> np.ndarray:
    importance = np.asarray(importance, dtype=np.float64)
    if np.any(~np.isfinite(importance)) or np.any(importance <= 0):
        raise ValueError("importances must be finite and positive")
    return importance
