"""Every setting of a deployment, read once from the environment and validated.

Each field is the environment variable ``PINNERSAGE_<FIELD>`` (upper case), or a line of the
``.env`` file in the folder a command runs from (the file Dagster's own processes read; the
environment wins). ``settings()`` reads them once per process; definitions, the CLI and the
service all take their settings from it, so a value means the same everywhere. An unknown value
fails at once naming the variable and what it allows; an unknown ``PINNERSAGE_*`` name is warned
about (a typo would otherwise be silently ignored). Every folder defaults to a place under
``PINNERSAGE_DATA_ROOT``, so one variable moves a whole deployment. Nothing is created on disk here.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .provenance import SourceIdentity, files_identity, synthetic_identity
from .warehouse import duckdb_size_bytes

PREFIX = "PINNERSAGE_"
# variables the product reads that are not deployment settings: the serve command's own
# hand-over to its worker processes (serving.app)
INTERNAL = {"PINNERSAGE_SERVICE_SETTINGS"}
# where each folder goes under PINNERSAGE_DATA_ROOT when it is not set itself
PATH_DEFAULTS = {
    "duckdb_path": "pinnersage.duckdb",
    "index_root": "pin_index",
    "serving_root": "serving",
    "exchange_root": "exchange",
    "events_root": "events",
    "reports_root": "reports",
    "impressions_root": "impressions",
}
ENV_FILE = ".env"


class SettingsError(ValueError):
    """A setting has a value the product cannot use; the message names the variable."""


class Settings(BaseModel):
    """The deployment: where data comes from, where everything is kept, and overrides of the
    model's parameters for every run (``params``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["synthetic", "files"] = Field(
        "synthetic",
        description="'synthetic' (the built-in world) or 'files' (your own logs: actions_path)",
        json_schema_extra={"read_by": "the source resource (pins, raw_actions), every command"},
    )
    actions_path: str | None = Field(
        None,
        description="your actions: a Parquet/CSV file, glob or folder, or per-day files with '{date}'",
        json_schema_extra={"read_by": "raw_actions, demo, evaluate"},
    )
    pins_path: str | None = Field(
        None,
        description="your pins file(s); without it, embeddings are learned",
        json_schema_extra={"read_by": "pins, raw_actions"},
    )
    actions_columns: str = Field(
        "",
        description="your names for the action columns, e.g. 'pin_id=item_id'",
        json_schema_extra={"read_by": "raw_actions"},
    )
    start_date: date = Field(
        date(2026, 1, 1),
        description="the first daily partition (and day 0 of the synthetic world)",
        json_schema_extra={"read_by": "the partitions, the synthetic world"},
    )
    synthetic_users: int = Field(
        2_000, ge=1, description="users of the synthetic world", json_schema_extra={"read_by": "the synthetic source"}
    )
    synthetic_pins: int = Field(
        20_000,
        ge=1_000,
        description="pins of the synthetic world",
        json_schema_extra={"read_by": "the synthetic source"},
    )
    synthetic_seed: int = Field(
        7, description="the synthetic world's seed", json_schema_extra={"read_by": "the synthetic source"}
    )
    synthetic_preset: Literal["realistic", "clean"] = Field(
        "realistic", description="the synthetic world's preset", json_schema_extra={"read_by": "the synthetic source"}
    )
    data_root: str = Field(
        "data",
        description="the folder every path below defaults to a place in; one per source keeps them apart",
        json_schema_extra={"read_by": "the defaults of the paths below"},
    )
    duckdb_path: str = Field(
        "", description="the warehouse file", json_schema_extra={"read_by": "every asset, summary, calibrate"}
    )
    duckdb_memory_limit: str = Field(
        "1GB",
        description="DuckDB's memory_limit for every warehouse connection; past it DuckDB evicts cached blocks "
        "and spills big joins and sorts to disk, so a step's memory stays its own arrays' (e.g. '4GB')",
        json_schema_extra={"read_by": "every asset"},
    )
    index_root: str = Field(
        "",
        description="pin_index builds and the pool graph",
        json_schema_extra={"read_by": "candidate_pool, pin_index, serving_snapshot, summary"},
    )
    serving_root: str = Field(
        "",
        description="serving snapshots",
        json_schema_extra={"read_by": "serving_snapshot, serve, recommend, interests"},
    )
    exchange_root: str = Field(
        "",
        description="the per-user pass's Parquet exchange",
        json_schema_extra={"read_by": "user_clusters (the clustering engine)"},
    )
    events_root: str = Field(
        "", description="the service's event log", json_schema_extra={"read_by": "serve, raw_actions"}
    )
    reports_root: str = Field(
        "",
        description="offline evaluation and experiment reports",
        json_schema_extra={"read_by": "offline_evaluation, experiment_report, evaluate"},
    )
    impressions_root: str = Field(
        "",
        description="what the service showed under an experiment (one JSON Lines file per day)",
        json_schema_extra={"read_by": "serve, experiment_report"},
    )
    experiment_path: str | None = Field(
        None,
        description="an online experiment (YAML: name, salt, arms, start, end) the service runs",
        json_schema_extra={"read_by": "serve, experiment_report"},
    )
    ingest_service_events: bool = Field(
        True,
        description="raw_actions takes the service's events too",
        json_schema_extra={"read_by": "raw_actions"},
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON overrides of the model's parameters for every run, e.g. '{\"alpha\": 1.2}'",
        json_schema_extra={"read_by": "the params resource: every asset, evaluate, calibrate"},
    )

    @model_validator(mode="after")
    def _paths_under_data_root(self) -> Settings:
        for name, default in PATH_DEFAULTS.items():
            if not getattr(self, name):
                object.__setattr__(self, name, str(Path(self.data_root) / default))
        return self

    @field_validator("duckdb_memory_limit")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if duckdb_size_bytes(value) is None:
            raise ValueError("a size DuckDB reads, a number and a unit, e.g. '1GB' or '512MiB'")
        return value.strip()

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
        """From ``environ``; by default the process's environment over the ``.env`` file."""
        if environ is None:
            environ = {**_env_file(Path(ENV_FILE)), **os.environ}
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

    def synthetic_world(self):
        """The synthetic world these settings name (the synthetic source's)."""
        from .core.synthetic import SyntheticWorld

        return SyntheticWorld(
            seed=self.synthetic_seed,
            n_users=self.synthetic_users,
            n_pins=self.synthetic_pins,
            preset=self.synthetic_preset,
            epoch=self.start_date,
        )

    def source_identity(self) -> SourceIdentity:
        """What defines this deployment's data (``provenance``); the source resource gives the same."""
        if self.source == "files":
            return files_identity(
                actions_path=self.actions_path or "", pins_path=self.pins_path, actions_columns=self.actions_columns
            )
        from .core.synthetic import SyntheticWorld  # the world's own defaults for what is not a setting

        return synthetic_identity(
            seed=self.synthetic_seed,
            users=self.synthetic_users,
            pins=self.synthetic_pins,
            preset=self.synthetic_preset,
            epoch=self.start_date.isoformat(),
            dim=SyntheticWorld.dim,
            dirty_share=SyntheticWorld.dirty_share,
        )


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def _env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if k.startswith(PREFIX) and v is not None}


def configuration_table() -> str:
    """The Configuration table of docs/operations.md, generated from the fields above."""
    rows = ["| variable | default | what it sets | read by |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name in PATH_DEFAULTS:
            default = f"`$PINNERSAGE_DATA_ROOT/{PATH_DEFAULTS[name]}`"
        elif field.default_factory is not None or field.default in (None, ""):
            default = "(none)"
        else:
            default = f"`{field.default}`"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        rows.append(f"| `{env_name(name)}` | {default} | {field.description} | {extra.get('read_by', '')} |")
    return "\n".join(rows)


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
