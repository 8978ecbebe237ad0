"""Every setting of a deployment, read once from the environment and validated.

Each field is the environment variable ``PINNERSAGE_<FIELD>`` (upper case). ``settings()``
reads them once per process; definitions, the CLI and the service all take their settings
from it, so a value means the same everywhere. An unknown value fails at once naming the
variable and what it allows; an unknown ``PINNERSAGE_*`` name is warned about (a typo would
otherwise be silently ignored). Nothing is created on disk here.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from datetime import date
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PREFIX = "PINNERSAGE_"
# variables the product reads that are not deployment settings: the serve command's own
# hand-over to its worker processes (serving.app)
INTERNAL = {"PINNERSAGE_SERVICE_SETTINGS"}


class SettingsError(ValueError):
    """A setting has a value the product cannot use; the message names the variable."""


class Settings(BaseModel):
    """The deployment: where data comes from, where everything is kept, and overrides of the
    model's parameters for every run (``params``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["synthetic", "files"] = Field(
        "synthetic", description="'synthetic' (the built-in world) or 'files' (your own logs: actions_path)"
    )
    actions_path: str | None = Field(
        None, description="your actions: a Parquet/CSV file, glob or folder, or per-day files with '{date}'"
    )
    pins_path: str | None = Field(None, description="your pins file(s); without it, embeddings are learned")
    actions_columns: str = Field("", description="your names for the action columns, e.g. 'pin_id=item_id'")
    start_date: date = Field(date(2026, 1, 1), description="the first daily partition")
    synthetic_users: int = Field(2_000, ge=1, description="users of the synthetic world")
    synthetic_pins: int = Field(20_000, ge=1_000, description="pins of the synthetic world")
    synthetic_seed: int = Field(7, description="the synthetic world's seed")
    synthetic_preset: Literal["realistic", "clean"] = Field("realistic", description="the synthetic world's preset")
    duckdb_path: str = Field("data/pinnersage.duckdb", description="the warehouse file")
    index_root: str = Field("data/pin_index", description="pin_index builds and the pool graph")
    serving_root: str = Field("data/serving", description="serving snapshots")
    exchange_root: str = Field("data/exchange", description="the per-user pass's Parquet exchange")
    events_root: str = Field("data/events", description="the service's event log")
    reports_root: str = Field("data/reports", description="offline evaluation reports")
    ingest_service_events: bool = Field(True, description="raw_actions takes the service's events too")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON overrides of the model's parameters for every run, e.g. '{\"alpha\": 1.2}'",
    )

    @field_validator("params", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError('a JSON object of parameter names and values, e.g. {"alpha": 1.2}')
        return value

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values, unknown = {}, []
        for name, value in environ.items():
            if not name.startswith(PREFIX) or name in INTERNAL:
                continue
            field = name[len(PREFIX) :].lower()
            if field in cls.model_fields:
                values[field] = value
            else:
                unknown.append(name)
        if unknown:
            known = ", ".join(env_name(f) for f in cls.model_fields)
            warnings.warn(
                f"unknown setting(s) {', '.join(sorted(unknown))} ignored; the settings are: {known}", stacklevel=2
            )
        try:
            settings = cls(**values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None
        settings.check()
        return settings

    def check(self) -> None:
        """What fields cannot say alone: the model's parameters, and what a source needs."""
        if self.source == "files" and not self.actions_path:
            raise SettingsError(
                "PINNERSAGE_SOURCE=files needs PINNERSAGE_ACTIONS_PATH (your actions file, glob or folder)"
            )
        if self.params:
            from .config import PinnerSageParams

            try:
                PinnerSageParams(**self.params)
            except (ValidationError, TypeError) as exc:
                detail = _explain(exc) if isinstance(exc, ValidationError) else str(exc)
                raise SettingsError(f"PINNERSAGE_PARAMS: {detail}") from None


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def _explain(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"])
        name = env_name(field) if field in Settings.model_fields else field
        allowed = error.get("ctx", {}).get("expected")
        parts.append(f"{name}={error.get('input')!r}: {error['msg']}" + (f" (allowed: {allowed})" if allowed else ""))
    return "; ".join(parts)


@cache
def settings() -> Settings:
    """This process's settings, read once."""
    return Settings.from_environ()
