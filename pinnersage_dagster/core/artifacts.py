"""Atomically published, checksummed file artifacts (the HNSW index, the serving snapshot).

Layout of one artifact partition::

    <partition_dir>/manifest.json           # the published pointer, replaced atomically
    <partition_dir>/builds/<build_id>/...   # the files of one build, never modified once written

A build is written aside, every file is fsynced and hashed, an optional verifier reads it
back, and only then does ``os.replace`` swap the manifest in. A reader follows the manifest
and checks the hashes, so it sees a complete build or refuses it, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"


class ArtifactIntegrityError(RuntimeError):
    """A published artifact is missing, unreadable, or does not match its manifest."""


def publish(
    partition_dir: Path,
    write: Callable[[Path], dict[str, Any] | tuple[dict[str, Any], dict[str, tuple[Path, str]]]],
    verify: Callable[[Path, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Write a build with ``write(build_dir) -> manifest fields``, verify it, publish it.

    ``write`` may also return ``{name: (published file, its sha256)}``: immutable files of
    other published builds, hard-linked into this one with the checksum they were published
    with, so each file is hashed once in its life, not once per build that shares it.
    """
    build_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    build_dir = partition_dir / "builds" / build_id
    build_dir.mkdir(parents=True)
    written = write(build_dir)
    fields, linked = written if isinstance(written, tuple) else (written, {})
    files = {}
    for path in sorted(build_dir.iterdir()):
        fsync(path)
        files[path.name] = sha256(path)
    for name, (source, checksum) in linked.items():
        link_or_copy(source, build_dir / name)
        files[name] = checksum
    fsync_dir(build_dir)  # the directory entries (hard links included) are durable too
    manifest = {
        **fields,
        "build_id": build_id,
        "files": files,
        "built_at": datetime.now(UTC).isoformat(),
    }
    if verify is not None:
        verify(build_dir, manifest)  # refuse to publish what cannot be read back
    tmp = partition_dir / f".{MANIFEST}.{build_id}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    fsync(tmp)
    os.replace(tmp, partition_dir / MANIFEST)
    _remove_stale_builds(partition_dir, keep=build_id)
    return manifest


def read_manifest(partition_dir: Path) -> dict[str, Any]:
    path = partition_dir / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"nothing published: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactIntegrityError(f"unreadable manifest {path}: {exc}") from exc


def verified_build(partition_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The published build directory and its manifest, after checking every file's sha256."""
    manifest = read_manifest(partition_dir)
    try:
        build_dir = partition_dir / "builds" / manifest["build_id"]
        files = manifest["files"]
    except KeyError as exc:
        raise ArtifactIntegrityError(f"manifest in {partition_dir} lacks {exc}") from None
    check_files(build_dir, files)
    return build_dir, manifest


def check_files(build_dir: Path, files: dict[str, str]) -> None:
    for name, expected in files.items():
        check_file(build_dir / name, expected)


def check_file(path: Path, expected: str | None) -> None:
    """``path`` exists and has the sha256 its manifest recorded."""
    if not path.is_file():
        raise ArtifactIntegrityError(f"{path} is missing")
    if sha256(path) != expected:
        raise ArtifactIntegrityError(f"{path} does not match the checksum in its manifest")


def link_or_copy(source: Path, target: Path) -> None:
    """Share an immutable published file without copying it when the filesystem allows."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _remove_stale_builds(partition_dir: Path, keep: str) -> None:
    for build in (partition_dir / "builds").iterdir():
        if build.name != keep:
            shutil.rmtree(build, ignore_errors=True)
    for tmp in partition_dir.glob(f".{MANIFEST}.*.tmp"):
        tmp.unlink(missing_ok=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_npy_rows(path: Path, blocks: Iterable[np.ndarray], shape: tuple[int, ...], dtype: np.dtype | type) -> None:
    """Write the ``.npy`` file of an array of ``shape`` from its row blocks, in order, without ever
    holding the whole array (written through the page cache, so the pages are not the writer's
    resident memory as a mapped file's would be). Fails if the blocks do not fill ``shape``."""
    with NpyRows(path, shape, dtype) as out:
        for block in blocks:
            out.write(block)


class NpyRows:
    """A ``.npy`` file of ``shape`` written a row block at a time (``save_npy_rows``), for writers
    that fill several files in one pass; closing checks that the blocks filled ``shape``."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        self.path, self.shape, self.dtype, self.rows = path, tuple(shape), np.dtype(dtype), 0
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        self._out = path.open("wb")
        np.lib.format.write_array_header_1_0(self._out, header)

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + len(block) > self.shape[0]:
            raise ValueError(
                f"{self.path.name}: a block of shape {block.shape} does not fit {self.shape} at row {self.rows}"
            )
        self._out.write(block.data)
        self.rows += len(block)

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._out.close()
        if kind is None and self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.rows} rows written, {self.shape[0]} expected")
