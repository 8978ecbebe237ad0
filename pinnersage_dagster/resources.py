"""Resources: the warehouse, the index store, and the data source (synthetic or files)."""

from __future__ import annotations

import glob
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Literal

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource
from pydantic import Field

from .action_log import ActionLog, Span
from .config import PinnerSageParams
from .core.contract import RawPins
from .core.synthetic import SyntheticWorld, generate_pins, generate_population
from .engines import PassRunner, pass_runner
from .provenance import SourceIdentity, files_identity, synthetic_identity
from .readers import (
    parse_column_names,
    partition_file,
    pin_files_have_embeddings,
    read_action_files,
    read_pin_files,
    read_pin_ids,
    synthetic_raw_actions,
    synthetic_raw_pins,
)
from .settings import Settings

_DEFAULTS = Settings()
DEFAULT_DATABASE = _DEFAULTS.duckdb_path
DEFAULT_INDEX_ROOT = _DEFAULTS.index_root
DEFAULT_SERVING_ROOT = _DEFAULTS.serving_root
DEFAULT_EXCHANGE_ROOT = _DEFAULTS.exchange_root
DEFAULT_EVENTS_ROOT = _DEFAULTS.events_root  # the service's durable event log, one JSON Lines file per UTC day


class Warehouse(DuckDBResource):
    """The DuckDB warehouse (resource key ``duckdb``): Dagster's resource, but a connection is
    closed when its block raises too (a failed guard must not leave the file open in a process
    that goes on: the CLI's in-process runs, the tests)."""

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.database != ":memory:":
            Path(self.database).parent.mkdir(parents=True, exist_ok=True)  # DuckDB creates the file, not its folder
        with super().get_connection() as conn:
            try:
                yield conn
            finally:
                conn.close()


class DataSource(dg.ConfigurableResource):
    """Where pins and action events come from. Implementations: synthetic world, or files."""

    @abstractmethod
    def read_pins(self) -> RawPins | None:
        """The pin rows, or None when there is no pins file (the catalog is the pins seen in actions)."""

    @abstractmethod
    def read_actions(self, span: Span) -> Iterator[tuple[date, pd.DataFrame]]:
        """Raw action rows of each day of ``span``, in the shape ``core.contract.validate_actions`` takes."""

    @abstractmethod
    def known_pins(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The pin ids actions may refer to (sorted) and when each was created (NaT: always
        existed); None when any id is a pin (no pins file)."""

    @abstractmethod
    def newest_day(self, now: pd.Timestamp) -> date | None:
        """The newest UTC day the source holds actions of (not after ``now``)."""

    @abstractmethod
    def identity(self) -> SourceIdentity:
        """What defines this source's data (``provenance``): the warehouse records it."""

    @property
    def learns_embeddings(self) -> bool:
        """True when the source gives no embeddings and ``pin_embeddings`` learns them from the log."""
        return False

    def pin_truth(self) -> pd.DataFrame | None:
        return None

    def release_memory(self) -> None:
        """Forget what the source keeps between calls (the pins asset calls it once the catalog
        is validated: later steps of an in-process run must not carry it)."""

    def interest_truth(self) -> pd.DataFrame | None:
        return None

    @property
    def expected_dim(self) -> int | None:
        return None


class SyntheticSource(DataSource):
    """The built-in deterministic synthetic world (the embedded default)."""

    seed: int = Field(default=7, description="Everything is a function of this seed.")
    n_users: int = Field(default=2_000, ge=1)
    n_pins: int = Field(default=20_000, ge=1_000)
    dim: int = Field(default=256, ge=8)
    dirty_share: float = Field(default=0.001, ge=0, le=0.5, description="Share of planted faulty action rows.")
    epoch: str = Field(default="2026-01-01", description="Day 0 of the synthetic timeline (YYYY-MM-DD).")
    preset: Literal["realistic", "clean"] = Field(
        default="realistic",
        description="'realistic' (overlapping topics, accidental actions, skewed popularity, heavy users with many "
        "interests) or 'clean' (separated topics: fast tests with a crisp truth).",
    )

    @property
    def world(self) -> SyntheticWorld:
        return SyntheticWorld(
            seed=self.seed,
            n_users=self.n_users,
            n_pins=self.n_pins,
            dim=self.dim,
            dirty_share=self.dirty_share,
            epoch=date.fromisoformat(self.epoch),
            preset=self.preset,
        )

    def read_pins(self) -> RawPins:
        return synthetic_raw_pins(self.world, generate_pins(self.world))

    def read_actions(self, span: Span) -> Iterator[tuple[date, pd.DataFrame]]:
        for day in span.days:
            yield day, synthetic_raw_actions(self.world, day)

    def known_pins(self) -> tuple[np.ndarray, np.ndarray]:
        catalog = generate_pins(self.world)
        order = np.argsort(catalog.pin_id, kind="stable")
        return catalog.pin_id[order], catalog.created_at[order]

    def newest_day(self, now: pd.Timestamp) -> date:
        return (now - pd.Timedelta(days=1)).date()  # the world has actions on every day

    def identity(self) -> SourceIdentity:
        return synthetic_identity(
            seed=self.seed,
            users=self.n_users,
            pins=self.n_pins,
            preset=self.preset,
            epoch=self.epoch,
            dim=self.dim,
            dirty_share=self.dirty_share,
        )

    def pin_truth(self) -> pd.DataFrame:
        return generate_pins(self.world).truth()

    def release_memory(self) -> None:
        generate_pins.cache_clear()  # the world's catalog: 1 GiB at 1M pins

    def interest_truth(self) -> pd.DataFrame:
        return generate_population(self.world).truth(self.world.epoch)

    @property
    def expected_dim(self) -> int:
        return self.dim


class FileSource(DataSource):
    """Your own data, per the data contract (docs/own-data.md)."""

    pins_path: str | None = Field(
        default=None,
        description="A Parquet/CSV file or glob with pin_id[, embedding, quality, created_at]. Without it, or "
        "without an embedding column, embeddings are learned from the log (pin_embeddings).",
    )
    actions_path: str = Field(
        description="user_id, pin_id, action, ts rows: one Parquet/CSV file, a glob or a folder covering any "
        "span of days, or per-day files where '{date}' is replaced by YYYY-MM-DD."
    )
    actions_columns: str = Field(
        default="",
        description="Your names for the action columns, e.g. 'pin_id=item_id,ts=timestamp'.",
    )
    embedding_dim: int | None = Field(default=None, description="Expected dimension; default: the most common one.")

    @property
    def column_names(self) -> dict[str, str]:
        return parse_column_names(self.actions_columns)

    @property
    def per_day_files(self) -> bool:
        return "{date}" in self.actions_path

    def read_pins(self) -> RawPins | None:
        return read_pin_files(self.pins_path) if self.pins_path else None

    def read_actions(self, span: Span) -> Iterator[tuple[date, pd.DataFrame]]:
        if not self.per_day_files:
            yield from ActionLog(self.actions_path, tuple(self.column_names.items())).read(span)
            return
        for day in span.days:  # a missing day file fails the run, naming it
            yield day, read_action_files(partition_file(self.actions_path, day), self.column_names)

    def known_pins(self) -> tuple[np.ndarray, np.ndarray] | None:
        return read_pin_ids(self.pins_path) if self.pins_path else None

    def identity(self) -> SourceIdentity:
        return files_identity(
            actions_path=self.actions_path, pins_path=self.pins_path, actions_columns=self.actions_columns
        )

    def newest_day(self, now: pd.Timestamp) -> date | None:
        if not self.per_day_files:
            return ActionLog(self.actions_path, tuple(self.column_names.items())).newest_day(now)
        days = []
        for path in glob.glob(self.actions_path.replace("{date}", "*")):
            prefix, suffix = self.actions_path.split("{date}", 1)
            try:
                days.append(date.fromisoformat(path[len(prefix) : len(path) - len(suffix)]))
            except ValueError:
                continue
        return max((d for d in days if pd.Timestamp(d) <= now), default=None)

    @property
    def learns_embeddings(self) -> bool:
        return not self.pins_path or not pin_files_have_embeddings(self.pins_path)

    @property
    def expected_dim(self) -> int | None:
        return self.embedding_dim


class PartitionedArtifacts(dg.ConfigurableResource):
    """A directory with one published artifact (``core.artifacts``) per daily partition."""

    root: str

    def partition_dir(self, partition: str) -> Path:
        path = Path(self.root) / partition
        path.mkdir(parents=True, exist_ok=True)
        return path


class IndexStore(PartitionedArtifacts):
    """Where ``pin_index`` publishes one HNSW index per day, beside the pool graph that
    ``candidate_pool`` maintains and every day's index starts from."""

    root: str = DEFAULT_INDEX_ROOT

    def pool_graph_dir(self) -> Path:
        return self.partition_dir("pool_graph")


class ServingStore(PartitionedArtifacts):
    """Where ``serving_snapshot`` publishes one serving snapshot per day."""

    root: str = DEFAULT_SERVING_ROOT


class ExchangeStore(dg.ConfigurableResource):
    """Where the per-user pass exchanges a day's inputs and results as Parquet.

    ``root`` is a local path, or a folder every Spark executor and this process can reach
    (a shared file system, or an object-store URI such as ``s3://bucket/pinnersage/exchange``
    read and written by DuckDB's httpfs extension and by Spark's Hadoop file systems).
    Each run writes under ``<root>/<partition>/<run id>/`` and removes it (and a local
    partition folder left empty) once its results are in the warehouse; on an object store, a
    lifecycle rule removes what a killed run left.
    """

    root: str = DEFAULT_EXCHANGE_ROOT

    def run_uri(self, partition: str, run_id: str) -> str:
        """The run's folder; a local root is made absolute, as Spark resolves paths on its own."""
        root = str(Path(self.root.removeprefix("file://")).resolve()) if self.is_local else self.root.rstrip("/")
        return f"{root}/{partition}/{run_id}"

    @property
    def is_local(self) -> bool:
        return "://" not in self.root or self.root.startswith("file://")


class ClusteringEngine(dg.ConfigurableResource):
    """Where the per-user pass runs (``engines``): ``local`` worker processes sharing the day's
    embeddings, or ``spark`` (needs the 'spark' extra and Java; docs/performance.md, 'Spark')."""

    kind: Literal["local", "spark"] = Field(default="local", description="'local' or 'spark'.")
    spark_master: str = Field(default="local[2]", description="Spark master URL when kind is 'spark'.")
    workers: int = Field(default=0, ge=0, description="Local worker processes; 0: one per core, 1: in-process.")
    batch_rows: int = Field(
        default=200_000,
        ge=1,
        description="Distinct (user, pin) rows read and clustered at once; bounds memory whatever the number of users.",
    )
    reuse_unchanged_users: bool = Field(
        default=True,
        description="Keep the day before's interests (importance decayed by a day) for users whose window did not "
        "change, when that day was built from the same catalog and parameters; false: cluster every user.",
    )

    @contextmanager
    def runner(self) -> Iterator[PassRunner]:
        with pass_runner(
            self.kind, spark_master=self.spark_master, workers=self.workers, batch_rows=self.batch_rows
        ) as run:
            yield run


class EventLogStore(dg.ConfigurableResource):
    """The recommendation service's durable event log (``serving.event_log``): one JSON Lines
    file per UTC day, which ``raw_actions`` claims into the warehouse exactly once
    (``service_events``; ``ingest`` false: raw_actions takes the source's rows alone)."""

    root: str = DEFAULT_EVENTS_ROOT
    ingest: bool = True


def build_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources for a deployment's settings (default: read from the environment now)."""
    settings = settings or Settings.from_environ()
    if settings.source == "files":
        # no pins file: the catalog is the pins seen in actions, with embeddings learned from the log
        source: DataSource = FileSource(
            actions_path=settings.actions_path or "",
            actions_columns=settings.actions_columns,
            pins_path=settings.pins_path,
        )
    else:
        source = SyntheticSource(
            n_users=settings.synthetic_users,
            n_pins=settings.synthetic_pins,
            seed=settings.synthetic_seed,
            preset=settings.synthetic_preset,
            epoch=settings.start_date.isoformat(),
        )
    return {
        "duckdb": Warehouse(
            database=settings.duckdb_path, connection_config={"memory_limit": settings.duckdb_memory_limit}
        ),
        "index_store": IndexStore(root=settings.index_root),
        "serving_store": ServingStore(root=settings.serving_root),
        "exchange": ExchangeStore(root=settings.exchange_root),
        "event_log": EventLogStore(root=settings.events_root, ingest=settings.ingest_service_events),
        "source": source,
        "engine": ClusteringEngine(),
        "params": PinnerSageParams(**settings.params),
    }
