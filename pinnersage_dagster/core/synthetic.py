"""A deterministic synthetic world: pins in a topic hierarchy, users with drifting interests.

Everything is a pure function of ``SyntheticWorld`` (the seed included), and the events of
any day are generated independently of every other day, so one partition can be
(re)generated alone and a backfill reproduces exactly what a daily run produced.

- **Pins.** ``n_categories x topics_per_category`` topics. A pin's embedding is
  ``normalize(sqrt(.3) c + sqrt(.5) t + sqrt(.2) z)``: its category centre ``c``, its topic
  centre ``t`` and its own noise direction ``z`` (all random unit vectors in d=256), so pins
  of one topic have cosine ~0.8, of one category ~0.3, otherwise ~0. Topic popularity is
  Zipf-like. ``duplicate_share`` of pins are planted near-duplicates (cosine 0.975-0.995
  to an original, created after it); ``low_quality_share`` get a quality score below 0.2,
  the rest 0.3-1.0. Pins are created over the year before and after ``epoch``.
- **Users.** A heavy-tailed number of interests (topics; median 3, capped at 60) and of
  activity (log-normal events/day: ~40 actions in 90 days at the median, ~1,300 at p99).
  Half of a user's interests are lifelong, the others live 2-16 weeks: interests drift.
- **Events.** Each day, each user makes Poisson(rate) actions; each picks an interest
  alive that day (by weight), then a pin of that topic created before the action; ``repin`` 30%,
  ``click`` 70%, at a uniform time of day. ``dirty_share`` of a day's rows are planted
  faults (an exact duplicate row, or a pin id not in the catalog) for the quarantine.
- **Ground truth.** Each pin's category, topic, ``duplicate_of`` and ``low_quality`` flag,
  and each user's interests with their weights and lifetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

import numpy as np
import pandas as pd

CATEGORY_WEIGHT, TOPIC_WEIGHT, NOISE_WEIGHT = 0.3, 0.5, 0.2
LIFELONG = 1_000_000  # an interest "end day" that never comes
_CHUNK = 100_000
UNKNOWN_PIN_ID = -1  # planted fault: a pin id that no catalog holds


@dataclass(frozen=True)
class SyntheticWorld:
    """``preset``: 'realistic' (the default: overlapping topics, accidents, skewed pin
    popularity, interests that grow with activity) or 'clean' (separated topics, every action
    on an interest: fast tests whose expectations need a crisp truth)."""

    seed: int = 7
    n_users: int = 2_000
    n_pins: int = 20_000
    dim: int = 256
    n_categories: int = 16
    topics_per_category: int = 12
    duplicate_share: float = 0.04
    low_quality_share: float = 0.06
    dirty_share: float = 0.001
    epoch: date = date(2026, 1, 1)
    preset: str = "realistic"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown synthetic preset {self.preset!r}; expected one of {sorted(PRESETS)}")

    @property
    def n_topics(self) -> int:
        return self.n_categories * self.topics_per_category

    @property
    def realism(self) -> Realism:
        return PRESETS[self.preset]


@dataclass(frozen=True)
class Realism:
    """What makes a world as hard as real logs (see the module docstring)."""

    noise_range: tuple[float, float]  # a pin's share of its own noise direction, uniform in this range
    neighbour_cosine: float  # cosine between the centres of adjacent topics of a category (0: independent)
    accident_share: float  # events on a random pin outside the user's interests
    pin_skew: float  # pin popularity within a topic: index = floor(available * u ** pin_skew); 1 = uniform
    interests_per_activity: float  # interests grow as (rate / median rate) ** this; 0 = independent
    max_interests: int


PRESETS = {
    "clean": Realism(
        noise_range=(0.2, 0.2),
        neighbour_cosine=0.0,
        accident_share=0.0,
        pin_skew=1.0,
        interests_per_activity=0.0,
        max_interests=60,
    ),
    "realistic": Realism(
        noise_range=(0.15, 0.6),
        neighbour_cosine=0.6,
        accident_share=0.08,
        pin_skew=2.5,
        interests_per_activity=0.9,
        max_interests=150,
    ),
}
MEDIAN_RATE = 0.45  # actions per day of the median user


@dataclass(frozen=True)
class PinCatalog:
    pin_id: np.ndarray
    embedding: np.ndarray  # float32, unit rows
    quality: np.ndarray
    created_at: np.ndarray  # datetime64[us]
    category: np.ndarray
    topic: np.ndarray
    duplicate_of: np.ndarray  # pin id of the original, -1 if none
    low_quality: np.ndarray

    def truth(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "pin_id": self.pin_id,
                "category": self.category,
                "topic": self.topic,
                "duplicate_of": self.duplicate_of,
                "low_quality": self.low_quality,
            }
        )


@dataclass(frozen=True)
class Population:
    user_id: np.ndarray  # one per user
    rate: np.ndarray  # expected actions per day
    interest_user: np.ndarray  # one row per (user, interest), sorted by user
    interest_topic: np.ndarray
    interest_weight: np.ndarray
    interest_start: np.ndarray  # day index, inclusive
    interest_end: np.ndarray  # day index, exclusive

    def truth(self, epoch: date) -> pd.DataFrame:
        origin = np.datetime64(epoch, "D")
        end = np.where(self.interest_end >= LIFELONG, np.datetime64("NaT"), origin + self.interest_end)
        start = np.where(self.interest_start <= -LIFELONG, np.datetime64("NaT"), origin + self.interest_start)
        return pd.DataFrame(
            {
                "user_id": self.interest_user,
                "topic": self.interest_topic,
                "weight": self.interest_weight,
                "start_date": start,
                "end_date": end,
            }
        )


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def topic_popularity(world: SyntheticWorld) -> np.ndarray:
    rng = np.random.default_rng([world.seed, 0])
    weights = 1.0 / np.arange(1, world.n_topics + 1) ** 0.8
    return rng.permutation(weights / weights.sum())


@lru_cache(maxsize=4)
def generate_pins(world: SyntheticWorld) -> PinCatalog:
    rng = np.random.default_rng([world.seed, 1])
    real = world.realism
    d = world.dim
    categories = _unit(rng.standard_normal((world.n_categories, d)))
    topics = _unit(rng.standard_normal((world.n_topics, d)))
    if real.neighbour_cosine:  # each topic leans on the previous one of its category: neighbours overlap
        c = real.neighbour_cosine
        for t in range(world.n_topics):
            if t % world.topics_per_category:
                topics[t] = _unit((c * topics[t - 1] + np.sqrt(1 - c * c) * topics[t])[None])[0]
    n_dup = round(world.duplicate_share * world.n_pins)
    n_base = world.n_pins - n_dup

    topic = rng.choice(world.n_topics, size=n_base, p=topic_popularity(world))
    # every topic gets at least one old pin, so every interest has something to act on
    topic[: world.n_topics] = np.arange(world.n_topics)
    category = topic // world.topics_per_category
    # a pin's own noise share: one value (clean), or spread like real embeddings (realistic)
    low, high = real.noise_range
    noise = np.full(n_base, low) if low == high else np.random.default_rng([world.seed, 11]).uniform(low, high, n_base)
    signal = (1.0 - noise) / (CATEGORY_WEIGHT + TOPIC_WEIGHT)
    embedding = np.empty((world.n_pins, d), dtype=np.float32)  # the originals, then their copies: no vstack
    base = embedding[:n_base]
    for start in range(0, n_base, _CHUNK):  # chunks keep the float64 temporaries small at 1M pins
        end = min(start + _CHUNK, n_base)
        part = slice(start, end)
        base[start:end] = _unit(
            np.sqrt(CATEGORY_WEIGHT * signal[part])[:, None] * categories[category[part]]
            + np.sqrt(TOPIC_WEIGHT * signal[part])[:, None] * topics[topic[part]]
            + np.sqrt(noise[part])[:, None] * _unit(rng.standard_normal((end - start, d)))
        )
    created_days = rng.uniform(-365, 365, size=n_base)
    created_days[: world.n_topics] = rng.uniform(-365, -200, size=world.n_topics)

    original = rng.integers(0, n_base, size=n_dup)
    eps = rng.uniform(0.1, 0.2, size=n_dup)  # cosine 1/sqrt(1+eps^2): 0.98-0.995
    copies = embedding[n_base:]
    for start in range(0, n_dup, _CHUNK):
        end = min(start + _CHUNK, n_dup)
        noise = _unit(rng.standard_normal((end - start, d)))
        copies[start:end] = _unit(base[original[start:end]] + eps[start:end, None] * noise)
    copy_created = created_days[original] + rng.uniform(0, 60, size=n_dup)

    del base, copies
    all_topic = np.r_[topic, topic[original]]
    all_created = np.r_[created_days, copy_created]
    pin_id = 100_000 + rng.permutation(world.n_pins).astype(np.int64)
    duplicate_of = np.r_[np.full(n_base, -1, dtype=np.int64), pin_id[original]]

    low_quality = np.zeros(world.n_pins, dtype=bool)
    low_quality[rng.choice(world.n_pins, size=round(world.low_quality_share * world.n_pins), replace=False)] = True
    quality = np.where(low_quality, rng.uniform(0.0, 0.2, world.n_pins), 0.3 + 0.7 * rng.beta(4, 2, world.n_pins))

    origin = np.datetime64(world.epoch, "us")
    created_at = origin + (all_created * 86_400e6).astype("timedelta64[us]")
    return PinCatalog(
        pin_id=pin_id,
        embedding=embedding,
        quality=quality,
        created_at=created_at,
        category=all_topic // world.topics_per_category,
        topic=all_topic,
        duplicate_of=duplicate_of,
        low_quality=low_quality,
    )


@lru_cache(maxsize=4)
def generate_population(world: SyntheticWorld) -> Population:
    rng = np.random.default_rng([world.seed, 2])
    real = world.realism
    n = world.n_users
    rate = np.minimum(rng.lognormal(np.log(MEDIAN_RATE), 1.45, size=n), 60.0)
    n_interests = np.clip(1 + np.floor(rng.lognormal(np.log(3.0), 0.8, size=n)), 1, 60).astype(np.int64)
    if real.interests_per_activity:  # heavy users have many interests, light users a few
        spread = np.random.default_rng([world.seed, 12]).lognormal(np.log(4.0), 0.35, size=n)
        grown = spread * np.maximum(rate / MEDIAN_RATE, 0.5) ** real.interests_per_activity
        n_interests = np.clip(np.round(grown), 1, min(real.max_interests, world.n_topics)).astype(np.int64)
    popularity = topic_popularity(world)
    users, topics, weights, starts, ends = [], [], [], [], []
    for u in range(n):
        k = int(n_interests[u])
        chosen = rng.choice(world.n_topics, size=k, replace=False, p=popularity)
        weight = rng.dirichlet(np.ones(k))
        lifelong = rng.random(k) < 0.5
        lifelong[0] = True  # at least one interest is always alive
        start = rng.integers(-120, 730, size=k)
        end = start + rng.integers(14, 120, size=k)
        users.append(np.full(k, u, dtype=np.int64))
        topics.append(chosen)
        weights.append(weight)
        starts.append(np.where(lifelong, -LIFELONG, start))
        ends.append(np.where(lifelong, LIFELONG, end))
    return Population(
        user_id=np.arange(1, n + 1, dtype=np.int64),
        rate=rate,
        interest_user=np.concatenate(users),
        interest_topic=np.concatenate(topics),
        interest_weight=np.concatenate(weights),
        interest_start=np.concatenate(starts),
        interest_end=np.concatenate(ends),
    )


@lru_cache(maxsize=4)
def _pins_by_topic(world: SyntheticWorld) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pins sorted by (topic, creation time), with each topic's offset into that order."""
    pins = generate_pins(world)
    created_days = (pins.created_at - np.datetime64(world.epoch, "us")) / np.timedelta64(1, "D")
    order = np.lexsort((created_days, pins.topic))
    offsets = np.searchsorted(pins.topic[order], np.arange(world.n_topics + 1))
    return order, offsets, created_days[order]


def generate_day_actions(world: SyntheticWorld, day: date) -> pd.DataFrame:
    """All action events of one UTC day: ``user_id, pin_id, action, ts`` (ts tz-naive UTC)."""
    k = (day - world.epoch).days
    pins = generate_pins(world)
    population = generate_population(world)
    order, offsets, created_sorted = _pins_by_topic(world)
    rng = np.random.default_rng([world.seed, 3, k + 10_000_000])

    counts = rng.poisson(population.rate)
    event_user = np.repeat(np.arange(world.n_users), counts)

    alive = (population.interest_start <= k) & (k < population.interest_end)
    weight = population.interest_weight * alive
    cumulative = np.cumsum(weight)
    seg_start = np.searchsorted(population.interest_user, np.arange(world.n_users))
    seg_end = np.searchsorted(population.interest_user, np.arange(world.n_users), side="right")
    before = np.where(seg_start > 0, cumulative[np.maximum(seg_start - 1, 0)], 0.0)
    total = cumulative[seg_end - 1] - before
    draw = before[event_user] + rng.random(event_user.size) * total[event_user]
    interest = np.minimum(np.searchsorted(cumulative, draw, side="right"), seg_end[event_user] - 1)
    topic = population.interest_topic[interest]

    # a pin of that topic already created by the end of the day (and by the action's time: below)
    available = np.array(
        [np.searchsorted(created_sorted[offsets[t] : offsets[t + 1]], k + 1) for t in range(world.n_topics)]
    )
    real = world.realism
    n_avail = available[topic]
    has_pin = n_avail > 0
    u = rng.random(topic.size)
    if real.pin_skew != 1.0:  # a few pins of a topic draw most of its actions
        u = u**real.pin_skew
    pick = offsets[topic] + np.floor(u * n_avail).astype(np.int64)
    accident = drawn = created = None
    if real.accident_share:  # accidental actions: any pin already created, outside the user's interests
        extra = np.random.default_rng([world.seed, 13, k + 10_000_000])
        accident = extra.random(topic.size) < real.accident_share
        created = np.flatnonzero(created_sorted < k + 1)
        if created.size:
            drawn = extra.integers(0, created.size, topic.size)

    start = datetime.combine(day, datetime.min.time())
    seconds = rng.integers(0, 86_400, size=topic.size)
    # a pin created later on the action's own day is drawn again, with the same random number,
    # among the pins created by the action's time (a few in ten thousand actions)
    at = k + seconds / 86_400
    late = np.flatnonzero(created_sorted[np.minimum(pick, len(order) - 1)] > at)
    for i in late:
        created_by_then = int(np.searchsorted(created_sorted[offsets[topic[i]] : offsets[topic[i] + 1]], at[i]))
        if created_by_then:
            pick[i] = offsets[topic[i]] + int(u[i] * created_by_then)
        else:
            has_pin[i] = False
    pin_id = pins.pin_id[order[np.minimum(pick, len(order) - 1)]]
    if drawn is not None and created is not None and accident is not None:
        chosen = created[drawn]
        for i in np.flatnonzero(accident & (created_sorted[chosen] > at)):
            eligible = created[created_sorted[created] < at[i]]
            chosen[i] = eligible[int(drawn[i] / created.size * eligible.size)] if eligible.size else chosen[i]
        pin_id = np.where(accident, pins.pin_id[order[chosen]], pin_id)
    frame = pd.DataFrame(
        {
            "user_id": population.user_id[event_user],
            "pin_id": pin_id,
            "action": np.where(rng.random(topic.size) < 0.3, "repin", "click"),
            "ts": pd.Timestamp(start) + pd.to_timedelta(seconds, unit="s"),
        }
    )[has_pin]
    frame = _plant_faults(frame, rng, world.dirty_share)
    return frame.sort_values(["ts", "user_id"], kind="stable").reset_index(drop=True)


def _plant_faults(frame: pd.DataFrame, rng: np.random.Generator, share: float) -> pd.DataFrame:
    n_faults = rng.binomial(len(frame), share) if len(frame) else 0
    if n_faults == 0:
        return frame
    rows = rng.choice(len(frame), size=n_faults, replace=False)
    duplicates = frame.iloc[rows[: n_faults // 2]]
    unknown = frame.iloc[rows[n_faults // 2 :]].assign(pin_id=UNKNOWN_PIN_ID)
    return pd.concat([frame, duplicates, unknown], ignore_index=True)


def day_range(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
