"""Which data a warehouse and its folders were built from (no Dagster import).

A deployment's *source* is the synthetic world (its seed, size and preset) or your own files
(their paths and column names). The warehouse records the source it was built from the first
time it is written (table ``warehouse_source``), and every folder beside it (index builds,
serving snapshots, the service's event log, reports) records it in ``SOURCE.json`` when
something is first published there. Anything that finds another source than its own refuses
with one line naming both and the two ways forward, so a warehouse built from the synthetic
world never answers for your own data, or the reverse.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

STAMP = "SOURCE.json"


@dataclass(frozen=True)
class SourceIdentity:
    """What defines a source's data; two sources with equal fields give equal data."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps({"kind": self.kind, **self.fields}, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """One line a person recognizes: 'synthetic (seed 7, 2000 users, ...)' or 'files (path)'."""
        f = self.fields
        if self.kind == "synthetic":
            return f"synthetic (seed {f['seed']}, {f['users']} users, {f['pins']} pins, {f['preset']})"
        pins = f"pins {_shown(f['pins_path'])}" if f.get("pins_path") else "embeddings learned"
        return f"files ({_shown(f['actions_path'])}; {pins})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "fields": self.fields, "fingerprint": self.fingerprint, "label": self.label}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceIdentity:
        return cls(kind=str(data["kind"]), fields=dict(data.get("fields") or {}))


def synthetic_identity(
    *, seed: int, users: int, pins: int, preset: str, epoch: str, dim: int, dirty_share: float
) -> SourceIdentity:
    return SourceIdentity(
        "synthetic",
        {
            "seed": seed,
            "users": users,
            "pins": pins,
            "preset": preset,
            "epoch": epoch,
            "dim": dim,
            "dirty_share": dirty_share,
        },
    )


def files_identity(*, actions_path: str, pins_path: str | None, actions_columns: str) -> SourceIdentity:
    """Paths as absolute paths, so the same files named from another folder are the same source."""
    return SourceIdentity(
        "files",
        {
            "actions_path": _absolute(actions_path),
            "pins_path": _absolute(pins_path) if pins_path else None,
            "actions_columns": actions_columns,
        },
    )


def _shown(path: str) -> str:
    """A path as a person in the current folder would type it."""
    if "://" in path or not os.path.isabs(path):
        return path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


class SourceMismatchError(RuntimeError):
    """A warehouse or folder was built from another source than the one this process uses."""

    def __init__(self, place: str, built_from: SourceIdentity, current: SourceIdentity) -> None:
        self.place, self.built_from, self.current = place, built_from, current
        super().__init__(
            f"{place} was built from {built_from.label}, not from this source, {current.label}: "
            "run `pinnersage clean` to start over with this source, or set PINNERSAGE_DATA_ROOT "
            "to another folder (e.g. data/own) to keep both"
        )


def folder_source(root: str | Path) -> SourceIdentity | None:
    """The source a folder records, or None (nothing published there yet)."""
    path = Path(root) / STAMP
    try:
        return SourceIdentity.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"{path} cannot be read ({exc}); remove it if the folder is yours") from exc


def check_folder(root: str | Path, current: SourceIdentity) -> None:
    """Refuse a folder that records another source; a folder that records none passes."""
    recorded = folder_source(root)
    if recorded is not None and recorded.fingerprint != current.fingerprint:
        raise SourceMismatchError(str(root), recorded, current)


def stamp_folder(root: str | Path, current: SourceIdentity) -> None:
    """Record ``current`` in a folder about to receive its first artifact; refuse another source's."""
    check_folder(root, current)
    path = Path(root) / STAMP
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{STAMP}.{os.getpid()}")
    partial.write_text(json.dumps(current.to_json(), indent=1))
    os.replace(partial, path)


def warehouse_source(conn: duckdb.DuckDBPyConnection) -> SourceIdentity | None:
    """The source a warehouse records (table ``warehouse_source``), or None."""
    present = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'warehouse_source'"
    ).fetchall()[0][0]
    if not present:
        return None
    row = conn.execute("SELECT identity FROM warehouse_source LIMIT 1").fetchall()
    return SourceIdentity.from_json(json.loads(row[0][0])) if row else None


def check_warehouse(database: str, current: SourceIdentity) -> None:
    """Refuse a warehouse file that records another source. A missing file passes; so does one
    another process is writing (the run itself checks before it writes)."""
    import duckdb

    if database == ":memory:" or not Path(database).exists():
        return
    try:
        conn = duckdb.connect(database, read_only=True)
    except duckdb.IOException:
        return  # locked by a running writer
    try:
        recorded = warehouse_source(conn)
    finally:
        conn.close()
    if recorded is not None and recorded.fingerprint != current.fingerprint:
        raise SourceMismatchError(database, recorded, current)
