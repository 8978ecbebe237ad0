"""Online experiments (the paper's section 5.2, Table 3): arms, stable assignment, attribution of
engagements to what was shown, and the per-arm report with lifts against the control.

An experiment file (YAML)::

    name: policies-2026-12
    salt: 3f9a1c
    arms: {decay_average: 1, sampled: 1, proportional: 1}
    start: 2026-12-01      # optional, inclusive
    end: 2026-12-31        # optional, inclusive

A user's arm is a pure function of ``(salt, user_id)``: the first 8 bytes of
``sha256(f"{salt}:{user_id}")`` pick one of 10,000 buckets, split among the arms by weight in the
file's order. Nothing here depends on a process, a clock or a worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ARMS = ("decay_average", "sampled", "proportional")
CONTROL = "decay_average"
BUCKETS = 10_000
ATTRIBUTION = pd.Timedelta(hours=24)
CLOCK_TOLERANCE = pd.Timedelta(seconds=1)  # an event's ts may be rounded down to the second


class ExperimentError(ValueError):
    """An experiment file the service cannot run; the message names the file and the field."""


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[tuple[str, int], ...]  # (arm, weight) in the file's order
    start: date | None = None
    end: date | None = None

    @property
    def weights(self) -> dict[str, int]:
        return dict(self.arms)

    def active(self, day: date) -> bool:
        return (self.start is None or self.start <= day) and (self.end is None or day <= self.end)

    def bucket(self, user_id: int) -> int:
        digest = hashlib.sha256(f"{self.salt}:{int(user_id)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def arm(self, user_id: int) -> str:
        return self._arm_of_bucket(self.bucket(user_id))

    def _arm_of_bucket(self, bucket: int) -> str:
        total = sum(w for _, w in self.arms)
        edge = 0
        for name, weight in self.arms:
            edge += weight
            if bucket < edge * BUCKETS // total:
                return name
        return self.arms[-1][0]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "salt": self.salt,
            "arms": self.weights,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
        }


def parse_experiment(fields: Any, where: str = "the experiment") -> Experiment:
    """Validate an experiment's fields; every problem names ``where`` and the field."""
    if not isinstance(fields, dict):
        raise ExperimentError(f"{where}: expected a mapping with name, salt and arms")
    unknown = sorted(set(fields) - {"name", "salt", "arms", "start", "end"})
    if unknown:
        raise ExperimentError(f"{where}: unknown field(s) {unknown}; expected name, salt, arms, start, end")
    for key in ("name", "salt"):
        value = fields.get(key)
        if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
            raise ExperimentError(f"{where}: {key} must be a non-empty string, got {value!r}")
    arms = fields.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise ExperimentError(f"{where}: arms must map at least one arm to a weight, got {arms!r}")
    for arm, weight in arms.items():
        if arm not in ARMS:
            raise ExperimentError(f"{where}: arms: unknown arm {arm!r}; expected one of {', '.join(ARMS)}")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ExperimentError(f"{where}: arms.{arm}: the weight must be a positive integer, got {weight!r}")
    bounds = {}
    for key in ("start", "end"):
        value = fields.get(key)
        if value is None or isinstance(value, date):
            bounds[key] = value
            continue
        try:
            bounds[key] = date.fromisoformat(str(value))
        except ValueError:
            raise ExperimentError(f"{where}: {key} must be a date (YYYY-MM-DD), got {value!r}") from None
    if bounds["start"] and bounds["end"] and bounds["start"] > bounds["end"]:
        raise ExperimentError(f"{where}: start {bounds['start']} is after end {bounds['end']}")
    return Experiment(
        name=str(fields["name"]),
        salt=str(fields["salt"]),
        arms=tuple((str(a), int(w)) for a, w in arms.items()),
        start=bounds["start"],
        end=bounds["end"],
    )


def load_experiment(path: str | Path) -> Experiment:
    import yaml

    try:
        fields = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{path}: cannot be read as YAML: {exc}") from None
    return parse_experiment(fields, where=str(path))


# --- the report -----------------------------------------------------------------------------------


def attribute(impressions: pd.DataFrame, engagements: pd.DataFrame) -> pd.DataFrame:
    """One row per exposed user: ``arm``, ``cold_start``, ``impressions``, ``served`` (pins shown),
    ``engagements`` (the user's actions from their first impression on, up to 24 hours after their
    last), ``served_engagements`` (those on a pin served to them in the 24 hours before the action).

    ``impressions``: user_id, arm, ts, cold_start, pin_ids (a list per impression).
    ``engagements``: user_id, pin_id, ts (distinct events)."""
    columns = ["user_id", "arm", "cold_start", "impressions", "served", "engagements", "served_engagements"]
    if impressions.empty:
        kinds = {"arm": object, "cold_start": bool}
        return pd.DataFrame({c: pd.Series(dtype=kinds.get(c, "int64")) for c in columns})
    engagements = engagements.astype({"user_id": "int64", "pin_id": "int64"}).assign(
        ts=pd.to_datetime(engagements["ts"])
    )
    shown = impressions.assign(served=impressions["pin_ids"].map(len), ts=pd.to_datetime(impressions["ts"]))
    users = shown.groupby("user_id").agg(
        arm=("arm", "first"),
        cold_start=("cold_start", "all"),
        impressions=("ts", "size"),
        served=("served", "sum"),
        first=("ts", "min"),
        last=("ts", "max"),
    )
    counted = engagements.merge(users[["first", "last"]].reset_index(), on="user_id")
    counted = counted[
        (counted["ts"] >= counted["first"] - CLOCK_TOLERANCE) & (counted["ts"] < counted["last"] + ATTRIBUTION)
    ]
    users["engagements"] = counted.groupby("user_id").size().reindex(users.index, fill_value=0)
    # an engagement on a pin served to the user in the 24 hours before it
    served = shown[["user_id", "ts", "pin_ids"]].explode("pin_ids").rename(columns={"pin_ids": "pin_id", "ts": "shown"})
    served["pin_id"] = served["pin_id"].astype("int64")
    pairs = counted[["user_id", "pin_id", "ts"]].reset_index(drop=True).reset_index(names="event")
    matched = pairs.merge(served, on=["user_id", "pin_id"])
    matched = matched[
        (matched["shown"] <= matched["ts"] + CLOCK_TOLERANCE) & (matched["ts"] < matched["shown"] + ATTRIBUTION)
    ]
    on_served = matched.drop_duplicates("event").groupby("user_id").size()
    users["served_engagements"] = on_served.reindex(users.index, fill_value=0)
    return users.reset_index()[columns]


def arm_summary(users: pd.DataFrame) -> dict[str, float | int]:
    exposed = len(users)
    return {
        "exposed_users": exposed,
        "impressions": int(users["impressions"].sum()),
        "engaged_users": int((users["engagements"] > 0).sum()),
        "engagements": int(users["engagements"].sum()),
        "served_engagements": int(users["served_engagements"].sum()),
        "served_pins": int(users["served"].sum()),
        "volume": float(users["engagements"].mean()) if exposed else 0.0,
        "propensity": float((users["engagements"] > 0).mean()) if exposed else 0.0,
        "served_ctr": float(users["served_engagements"].sum() / users["served"].sum())
        if users["served"].sum()
        else 0.0,
    }


def lift_interval(
    treatment: np.ndarray, control: np.ndarray, *, resamples: int = 1_000, seed: int = 0
) -> dict[str, float | None]:
    """mean(treatment) / mean(control) - 1 with a 95% percentile bootstrap interval, users resampled
    within each arm (the arms are independent samples of users)."""
    treatment, control = np.asarray(treatment, float), np.asarray(control, float)
    if not treatment.size or not control.size or control.mean() == 0:
        return {"lift": None, "low": None, "high": None}
    rng = np.random.default_rng(seed)
    t = treatment[rng.integers(0, treatment.size, (resamples, treatment.size))].mean(axis=1)
    c = control[rng.integers(0, control.size, (resamples, control.size))].mean(axis=1)
    ratios = t[c > 0] / c[c > 0] - 1
    low, high = np.percentile(ratios, [2.5, 97.5]) if ratios.size else (np.nan, np.nan)
    return {"lift": float(treatment.mean() / control.mean() - 1), "low": float(low), "high": float(high)}


def srm_p_value(exposed: dict[str, int], weights: dict[str, int]) -> float:
    """Chi-square goodness of fit of exposed users per arm against the weights (sample ratio mismatch)."""
    from scipy.stats import chisquare

    observed = np.array([exposed.get(arm, 0) for arm in weights], dtype=float)
    if observed.sum() == 0 or len(weights) < 2:
        return 1.0
    share = np.array(list(weights.values()), dtype=float) / sum(weights.values())
    return float(chisquare(observed, observed.sum() * share).pvalue)


def experiment_report(
    experiment: Experiment, partition: str, impressions: pd.DataFrame, engagements: pd.DataFrame, **counts: int
) -> dict[str, Any]:
    """The report of the traffic served from snapshot ``partition``: per arm (users with interests;
    cold-start users apart), lifts of every arm against the control, and the SRM p-value."""
    users = attribute(impressions, engagements)
    arms: dict[str, Any] = {}
    for arm, _ in experiment.arms:
        mine = users[users["arm"] == arm]
        arms[arm] = {**arm_summary(mine[~mine["cold_start"]]), "cold_start": arm_summary(mine[mine["cold_start"]])}
    lifts: dict[str, Any] = {}
    control = users[(users["arm"] == CONTROL) & ~users["cold_start"]]
    for arm, _ in experiment.arms:
        if arm == CONTROL or CONTROL not in experiment.weights:
            continue
        mine = users[(users["arm"] == arm) & ~users["cold_start"]]
        lifts[arm] = {
            "volume": lift_interval(mine["engagements"], control["engagements"]),
            "propensity": lift_interval(mine["engagements"] > 0, control["engagements"] > 0),
        }
    exposed = {arm: int((users["arm"] == arm).sum()) for arm in experiment.weights}
    return {
        "experiment": experiment.to_json(),
        "partition": partition,
        "arms": arms,
        "lifts": lifts,
        "srm_p_value": srm_p_value(exposed, experiment.weights),
        "exposed_users_all": exposed,
        **counts,
    }
