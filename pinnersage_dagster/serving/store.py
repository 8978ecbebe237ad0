"""Which snapshot is served: the newest published one that loads, swapped in without a pause."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.artifacts import ArtifactIntegrityError, read_manifest
from ..core.retention import clear_in_use, days, mark_in_use
from .snapshot import ServingSnapshot, load_snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    partition: str
    build_id: str
    error: str


class SnapshotManager:
    """Holds the served snapshot and replaces it when a newer one is published.

    A request reads ``current`` once and uses that object throughout, so medoids and index
    always come from one snapshot; the swap is a single reference assignment. A snapshot
    that fails to load is refused (and remembered, so it is not retried until republished);
    the one already served keeps serving.
    """

    def __init__(self, root: Path, on_swap: Callable[[ServingSnapshot], None] | None = None) -> None:
        self.root = Path(root)
        self.current: ServingSnapshot | None = None
        self.refusals: dict[tuple[str, str], Refusal] = {}
        self.on_swap = on_swap
        self._ignored: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def published(self) -> list[tuple[str, str]]:
        """(partition, build_id) of every published snapshot, newest partition first: only real
        days (``core.retention.days``: named as a day, not after today, with a manifest) whose
        manifest names that day; anything else is logged and ignored."""
        found: list[tuple[str, str]] = []
        ignored: dict[str, str] = {}
        real = days(self.root, ignored=ignored)
        for name, why in ignored.items():
            if name not in self._ignored:
                self._ignored.add(name)
                log.warning("ignoring %s: %s", self.root / name, why)
        for day, directory in sorted(real.items(), reverse=True):
            try:
                manifest = read_manifest(directory)
                if manifest.get("partition") != day.isoformat():
                    raise KeyError(f"manifest names partition {manifest.get('partition')!r}")
                found.append((day.isoformat(), manifest["build_id"]))
            except (ArtifactIntegrityError, KeyError, TypeError, AttributeError) as exc:
                if directory.name not in self._ignored:
                    self._ignored.add(directory.name)
                    log.warning("ignoring %s: %s", directory, exc)
        return found

    def refresh(self) -> bool:
        """Load the newest published snapshot if it is newer than the served one. True if swapped."""
        with self._lock:
            for partition, build_id in self.published():
                current = self.current
                if current is not None and (partition, build_id) == (current.partition, current.version):
                    return False
                if current is not None and partition < current.partition:
                    return False
                if (partition, build_id) in self.refusals:
                    if current is not None:
                        return False
                    continue  # nothing served yet: fall back to an older snapshot
                try:
                    snapshot = load_snapshot(self.root / partition)
                except ArtifactIntegrityError as exc:
                    self.refusals[(partition, build_id)] = Refusal(partition, build_id, str(exc))
                    log.error("refused snapshot %s (%s): %s", partition, build_id, exc)
                    if current is not None:
                        return False
                    continue
                self.current = snapshot
                self._mark()
                log.info("serving snapshot %s (%s)", partition, build_id)
                if self.on_swap is not None:
                    self.on_swap(snapshot)
                return True
            return False

    def start(self, interval_seconds: float = 30.0) -> None:
        """Poll for new snapshots in a background thread."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.refresh()
                    self._mark()  # the heartbeat retention reads: this snapshot is still served
                except Exception:  # never let the poller die
                    log.exception("snapshot refresh failed")

        self._thread = threading.Thread(target=loop, name="snapshot-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        clear_in_use(self.root)

    def _mark(self) -> None:
        """Tell retention (``core.retention``) which partition this process serves."""
        if self.current is not None:
            try:
                mark_in_use(self.root, self.current.partition)
            except OSError as exc:  # a read-only serving root: serving goes on, retention can't see us
                log.warning("cannot mark the served snapshot in use: %s", exc)
