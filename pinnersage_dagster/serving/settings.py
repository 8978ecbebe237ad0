"""The service's settings, in one place.

Two kinds, kept apart on purpose:

- **What the model's batch decided** (``ServingParams``): how many medoids to sample, the
  retrieval policy, the budget, how many same-day events count online. They are fields of the
  ``params`` resource, and ``serving_snapshot`` publishes them with each snapshot, so a
  launchpad or ``PINNERSAGE_PARAMS`` override of the run that published a snapshot is what the
  service serves with.
- **How this process serves** (``ServiceSettings``): where the snapshots and the event log are,
  how often to look for a newer snapshot, limits, an optional policy override. They come from
  the deployment's settings (``settings.py``) and the ``serve`` command's flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..settings import Settings

Policy = Literal["sampled", "proportional", "decay_average"]


@dataclass(frozen=True)
class ServerLimits:
    """What a slow or hostile client may hold (``serving.server``); docs/reliability.md, 'Slow clients'."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    limit_concurrency: int = 1_000

    def validate(self) -> str | None:
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                return f"--{name.replace('_', '-')}: must be > 0 seconds, got {getattr(self, name)}"
        if self.limit_concurrency < 1:
            return f"--limit-concurrency: must be at least 1, got {self.limit_concurrency}"
        return None


@dataclass(frozen=True)
class ServingParams:
    """The model's serving parameters as a snapshot was published with (the ``params`` defaults
    for a snapshot published without them)."""

    sampled_medoids: int = 3
    retrieval_policy: Policy = "sampled"
    retrieval_budget: int = 400
    online_recent_actions: int = 20

    @classmethod
    def from_manifest(cls, section: dict[str, Any] | None) -> ServingParams:
        known = {k: v for k, v in (section or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ServiceSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    serving_root: str = Field(default_factory=lambda: Settings().serving_root)
    events_root: str | None = Field(
        default_factory=lambda: Settings().events_root,
        description="None: accepted events live in this process only (tests of the model)",
    )
    experiment_path: str | None = Field(None, description="an experiment file (core.experiment): arms by user")
    impressions_root: str = Field(
        default_factory=lambda: Settings().impressions_root, description="where an experiment's impressions go"
    )
    refresh_seconds: float = Field(30.0, gt=0, description="how often to look for a newer snapshot")
    policy: Policy | None = Field(
        None, description="override of the snapshot's retrieval_policy for requests that name none"
    )
    max_budget: int = Field(400, ge=1, description="the largest budget a request may ask for")
    cache_entries: int = Field(200_000, ge=1, description="medoids whose neighbours are cached")
    online_max_users: int = Field(1_000_000, ge=1, description="users whose same-day events are held (LRU)")
    exclusion_margin: int = Field(
        64, ge=0, description="extra neighbours per medoid so exclusion rarely shortens lists"
    )
    future_tolerance_seconds: float = Field(300.0, ge=0, description="clock skew allowed on an event's ts")
    header_timeout: float = Field(ServerLimits.header_timeout, gt=0)
    body_timeout: float = Field(ServerLimits.body_timeout, gt=0)
    keep_alive_timeout: float = Field(ServerLimits.keep_alive_timeout, gt=0)
    limit_concurrency: int = Field(ServerLimits.limit_concurrency, ge=1)

    @classmethod
    def of(cls, settings: Settings, **overrides: Any) -> ServiceSettings:
        """The deployment's settings, with the command's overrides (None: not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(
            **{
                "serving_root": settings.serving_root,
                "events_root": settings.events_root,
                "experiment_path": settings.experiment_path,
                "impressions_root": settings.impressions_root,
                **given,
            }
        )

    @property
    def limits(self) -> ServerLimits:
        return ServerLimits(self.header_timeout, self.body_timeout, self.keep_alive_timeout, self.limit_concurrency)
