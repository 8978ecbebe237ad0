"""Per-user work on every core: a pool of worker processes and a matrix they share.

``SharedMatrix`` holds the run's embedding matrix once, in shared memory; tasks carry only
ids and row numbers, and each worker maps the matrix once per run, not once per task.
``UserPool`` splits a batch of users into chunks of similar Ward cost (sum of m^2) and runs
them in spawned workers (safe inside any host process) with one BLAS thread each, so two
workers do not oversubscribe two cores. ``workers <= 1`` runs in this process.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory
from typing import TypeVar

import numpy as np
import pyarrow as pa

from ..core.user_pass import represent_users

BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
T = TypeVar("T")


class SharedMatrix:
    """A float32 (rows, dim) matrix in shared memory, filled by its creator. Context manager:
    the segment is unlinked on exit, so a failed run leaves nothing behind in /dev/shm."""

    def __init__(self, rows: int, dim: int) -> None:
        self.shape = (rows, dim)
        self._memory = SharedMemory(create=True, size=max(rows * dim * 4, 1))
        self.array = np.ndarray(self.shape, np.float32, buffer=self._memory.buf)

    @property
    def name(self) -> str:
        return self._memory.name

    def __enter__(self) -> SharedMatrix:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.array
        self._memory.close()
        self._memory.unlink()


class UserPool:
    """Worker processes for per-user work. Use as a context manager."""

    def __init__(self, workers: int, chunks_per_worker: int = 4) -> None:
        self.workers = max(1, workers)
        self.chunks_per_worker = chunks_per_worker
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> UserPool:
        if self.workers > 1:
            saved = {k: os.environ.get(k) for k in BLAS_THREADS}
            os.environ.update({k: "1" for k in BLAS_THREADS})
            try:
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=get_context("spawn"),
                    initializer=_exit_with_parent,
                    initargs=(os.getpid(),),
                )
                # each submit spawns a worker now, with this env; they boot (import numpy, scipy, ...)
                # while the caller plans and reads the day instead of before it
                for worker in range(self.workers):
                    self._pool.submit(_noop, worker)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def map_users(
        self, fn: Callable[..., T], matrix: SharedMatrix, user_ids: np.ndarray, *columns: np.ndarray, **kwargs: object
    ) -> Callable[[], list[T]]:
        """Start ``fn(matrix, user_ids, *columns, **kwargs)`` on chunks of whole users (rows sorted
        by user; ``columns[0]`` are pin ids) in the workers; returns a function that waits for the
        chunks' results, in order, so the caller can read the next batch meanwhile. ``fn`` must be
        a module-level function (it is sent to the workers by name)."""
        if self._pool is None or len(user_ids) == 0:
            result = [fn(matrix.array, user_ids, *columns, **kwargs)]
            return lambda: result
        call: Callable[..., T] = _call_shared
        futures: list[Future] = [
            self._pool.submit(call, fn, matrix.name, matrix.shape, user_ids[a:b], *[c[a:b] for c in columns], **kwargs)
            for a, b in self._chunks(user_ids, columns[0])
        ]
        return lambda: [f.result() for f in futures]

    def represent(
        self,
        user_ids: np.ndarray,
        pin_ids: np.ndarray,
        ts_us: np.ndarray,
        pin_rows: np.ndarray,
        matrix: SharedMatrix,
        *,
        alpha: float,
        decay_lambda: float,
        now_us: int,
    ) -> Callable[[], pa.Table]:
        """``core.user_pass.represent_users`` on a batch of actions (sorted by user, pin, ts) whose
        ``pin_rows`` index ``matrix``; returns a function that waits for the result."""
        wait = self.map_users(
            _represent,
            matrix,
            user_ids,
            pin_ids,
            ts_us,
            pin_rows,
            alpha=alpha,
            decay_lambda=decay_lambda,
            now_us=now_us,
        )
        return lambda: pa.concat_tables(wait())

    def _chunks(self, user_ids: np.ndarray, pin_ids: np.ndarray) -> list[tuple[int, int]]:
        """Row ranges of whole users, of similar Ward cost: sum of (distinct pins)^2 + a per-user overhead."""
        new_user = np.r_[True, user_ids[1:] != user_ids[:-1]]
        new_pin = new_user | np.r_[True, pin_ids[1:] != pin_ids[:-1]]
        starts = np.flatnonzero(new_user)
        distinct = np.add.reduceat(new_pin.astype(np.int64), starts)
        cost = np.cumsum(distinct.astype(np.float64) ** 2 + 64.0)
        pieces = min(len(starts), self.workers * self.chunks_per_worker)
        cuts = np.searchsorted(cost, np.linspace(0, cost[-1], pieces + 1)[1:-1], side="right")
        bounds = np.unique(np.r_[0, cuts, len(starts)])
        edges = np.r_[starts, len(user_ids)]
        return [(int(edges[a]), int(edges[b])) for a, b in itertools.pairwise(bounds) if b > a]


def _noop(_: int) -> None:
    return None


def _exit_with_parent(parent: int) -> None:
    """A worker outlives a SIGKILLed run otherwise: it blocks forever on a queue it holds open itself."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_attached: dict[str, tuple[SharedMemory, np.ndarray]] = {}


def _shared(name: str, shape: tuple[int, int]) -> np.ndarray:
    """The matrix ``name``, mapped once per worker and run (the previous run's is released)."""
    if name not in _attached:
        for key in list(_attached):
            memory, array = _attached.pop(key)
            del array  # the mapping can only close once no array uses it
            memory.close()
        memory = SharedMemory(name=name)
        _attached[name] = (memory, np.ndarray(shape, np.float32, buffer=memory.buf))
    return _attached[name][1]


def _call_shared(fn: Callable[..., T], name: str, shape: tuple[int, int], *columns: np.ndarray, **kwargs: object) -> T:
    return fn(_shared(name, shape), *columns, **kwargs)


def _represent(matrix: np.ndarray, user_ids, pin_ids, ts_us, pin_rows, **settings) -> pa.Table:
    return represent_users(user_ids, pin_ids, ts_us, pin_rows, matrix, **settings)
