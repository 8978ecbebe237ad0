"""``pinnersage simulate``: synthetic users against a running service, so an experiment's whole
loop (assignment, impressions, engagements, the daily report) runs on the embedded default.

What the simulator assumes: each user looks at the first ``items`` pins of one answer and engages
with each independently, with probability ``ENGAGE`` times the share of the user's true interest
weight (among interests alive today in the synthetic world) on the pin's topic, plus ``ACCIDENT``
for any pin; an engagement is a repin (30%) or a click, posted to ``/v1/events`` at once. It
knows nothing of the arms: the arm only changes which pins it is shown.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit

import numpy as np

from ..core.synthetic import SyntheticWorld, generate_pins, generate_population
from . import UserError

ENGAGE = 0.2  # per on-topic item a few percent for a user of several interests, as feeds see
ACCIDENT = 0.002
ITEMS = 20


@dataclass
class Truth:
    """Each user's alive interest weight per topic, and each pin's topic."""

    weights: dict[int, dict[int, float]]
    pin_topic: dict[int, int]


def truth(world: SyntheticWorld, day_index: int) -> Truth:
    population, pins = generate_population(world), generate_pins(world)
    alive = (population.interest_start <= day_index) & (day_index < population.interest_end)
    weights: dict[int, dict[int, float]] = {}
    for user, topic, weight in zip(
        population.interest_user[alive], population.interest_topic[alive], population.interest_weight[alive]
    ):
        weights.setdefault(int(population.user_id[user]), {})[int(topic)] = float(weight)
    for user, topics in weights.items():
        total = sum(topics.values())
        weights[user] = {t: w / total for t, w in topics.items()}
    return Truth(weights, dict(zip(pins.pin_id.tolist(), pins.topic.tolist())))


class Client:
    """One keep-alive HTTP connection to the service."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise UserError(f"--url: expected http://host:port, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if payload else {}
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=payload, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.connection.close()
                if attempt == 2:
                    raise UserError(f"the service at http://{self.host}:{self.port} did not answer: {exc}") from None
        if response.status != 200:
            raise UserError(f"{method} {path}: {response.status} {data[:200].decode(errors='replace')}")
        return json.loads(data)


def simulate(world: SyntheticWorld, url: str, users: int, seed: int, items: int = ITEMS) -> str:
    """The users' true interests are those of the day the service's snapshot serves (the day
    after its partition); each request fixes its medoid sampling from ``seed`` and the user, so a
    run against the same snapshot is repeatable."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.arange(1, world.n_users + 1), size=min(users, world.n_users), replace=False)
    client = Client(url)
    partition = client.call("GET", "/health")["snapshot"]
    if partition is None:
        raise UserError(f"the service at {url} has no snapshot yet: materialize serving_snapshot first")
    served_on = date.fromisoformat(partition["partition"]) + timedelta(days=1)
    known = truth(world, (served_on - world.epoch).days)
    summary: dict[str, dict[str, int]] = {}
    started = time.perf_counter()
    for user in chosen.tolist():
        answer = client.call("GET", f"/v1/users/{user}/recommendations?seed={seed * 1_000_003 + user}")
        arm = (answer.get("experiment") or {}).get("arm") or f"(no experiment: {answer['policy']})"
        row = summary.setdefault(arm, {"users": 0, "cold_start": 0, "engaged_users": 0, "engagements": 0})
        row["users"] += 1
        row["cold_start"] += answer["source"] == "popular"
        interests = known.weights.get(user, {})
        shown = [item["pin_id"] for item in answer["items"][:items]]
        match = np.array([interests.get(known.pin_topic.get(p, -1), 0.0) for p in shown])
        engaged = [p for p, m in zip(shown, match) if rng.random() < ENGAGE * m + ACCIDENT]
        if engaged:
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            events = [
                {"user_id": user, "pin_id": p, "action": "repin" if rng.random() < 0.3 else "click", "ts": now}
                for p in engaged
            ]
            accepted = client.call("POST", "/v1/events", {"events": events})["accepted"]
            row["engaged_users"] += accepted > 0
            row["engagements"] += accepted
    lines = [
        f"simulated {len(chosen)} users against {url} in {time.perf_counter() - started:.0f}s, their interests "
        f"of {served_on} (first {items} items seen; engage with probability {ENGAGE} x interest share + {ACCIDENT})",
        "",
        "| arm | users | cold start | engaged users | engagements | volume | propensity |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, row in sorted(summary.items()):
        n = row["users"]
        lines.append(
            f"| {arm} | {n} | {row['cold_start']} | {row['engaged_users']} | {row['engagements']} | "
            f"{row['engagements'] / n:.3f} | {row['engaged_users'] / n:.3f} |"
        )
    return "\n".join(lines)
