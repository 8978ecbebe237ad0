"""How a request's retrieval budget is spent across a user's medoids.

- ``sampled`` (the paper, section 4): draw ``e`` medoids by importance, floor(budget / e) each.
  A budget smaller than ``e`` (floor 0) goes one pin each to the most important of the drawn
  medoids, so any budget of 1 or more yields pins (``sampled_shares``).
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

import math

import numpy as np

POLICIES = ("sampled", "proportional")
PROPORTIONAL_FLOOR = 10
PROPORTIONAL_CAP_SHARE = 0.5


def sample_medoids(importance: np.ndarray, n: int, rng: np.random.Generator | int) -> np.ndarray:
    """Indices of up to ``n`` clusters drawn without replacement, proportionally to importance,
    in the order drawn. ``rng``: a generator, or an int seed that fixes the draw.

    Successive sampling (each draw picks among the clusters not yet drawn with probability
    proportional to their importance), done in one step with exponential clocks: cluster i rings
    at E_i / importance_i with E_i ~ Exp(1), and the first ``n`` to ring are the draws, in order.
    The first clock is cluster i's with probability importance_i / sum, and by memorylessness the
    rest race again among the others: the distribution of numpy's ``choice(replace=False, p=...)``
    at one vector draw, with no generator built per request.
    """
    importance = _checked(importance)
    if importance.size == 0 or n <= 0:
        return np.empty(0, dtype=np.int64)
    if isinstance(rng, np.random.Generator):
        exponentials = rng.standard_exponential(importance.size)
    else:
        exponentials = seeded_exponentials(rng, importance.size)
    return np.argsort(exponentials / importance)[:n]


def seeded_exponentials(seed: int, n: int) -> np.ndarray:
    """``n`` Exp(1) variates fixed by ``seed`` (0 <= seed < 2**64): splitmix64 (Steele, Lea and
    Flood, 2014) of the seed's sequence, as uniforms in (0, 1), through -log. About 20 times
    cheaper than seeding a numpy generator, which hashes its seed (``SeedSequence``)."""
    z = np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2**64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    uniform = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return -np.log(uniform)


def sampled_shares(importance: np.ndarray, budget: int) -> np.ndarray:
    """Pins to fetch for each drawn medoid (``importance`` of the drawn, in draw order):
    floor(budget / e) each, the paper's rule; when that is 0 (a budget below e), one each to
    the ``budget`` most important of them (ties: the earlier drawn) and 0 to the rest."""
    e = len(importance)
    if e == 0 or budget <= 0:
        return np.zeros(e, dtype=np.int64)
    if budget >= e:
        return np.full(e, budget // e, dtype=np.int64)
    shares = np.zeros(e, dtype=np.int64)
    shares[np.argsort(-np.asarray(importance, dtype=np.float64), kind="stable")[:budget]] = 1
    return shares


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
    rounded = np.minimum(np.floor(share).astype(np.int64), cap)
    base = rounded.tolist()  # at most budget // floor (40) medoids: plain ints from here on
    spare = budget - sum(base)
    if spare > 0:  # largest remainders first, never above the cap
        for i in np.argsort(-(share - rounded), kind="stable").tolist():
            if spare == 0:
                break
            if base[i] < cap:
                base[i] += 1
                spare -= 1
    while spare < 0:  # the floors overshot: take from the largest shares (the first of equals)
        base[base.index(max(base))] -= 1
        spare += 1
    shares[queried] = base
    return shares


def _checked(importance: np.ndarray) -> np.ndarray:
    importance = np.asarray(importance, dtype=np.float64)
    # two reductions, not two masks: this runs on every request (NaN fails the first, inf the second)
    if importance.size and not (importance.min() > 0 and math.isfinite(importance.sum())):
        raise ValueError("importances must be finite and positive")
    return importance
