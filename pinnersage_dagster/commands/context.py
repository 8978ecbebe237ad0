"""What every command says first and checks first: the source it works from, the warehouse or
folder it reads and writes, and the day(s); and that those were built from this source."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from ..provenance import SourceMismatchError, check_folder, check_warehouse
from ..settings import Settings
from . import UserError


def first_line(
    command: str, settings: Settings, *, days: str | None = None, warehouse: bool = True, place: str | None = None
) -> str:
    """``pinnersage <command> · source … · warehouse … · day(s) …``: one line, before any work."""
    parts = [f"pinnersage {command}", f"source: {settings.source_identity().label}"]
    if warehouse:
        parts.append(f"warehouse: {settings.duckdb_path}")
    if place:
        parts.append(place)
    if days:
        parts.append(days)
    return " · ".join(parts)


def span(first: object, last: object) -> str:
    return f"day {last}" if first == last else f"days {first} .. {last}"


def check_source(settings: Settings, *, warehouse: bool = True, folders: Sequence[str] = ()) -> None:
    """Refuse, as one line, a warehouse or folder built from another source than the settings'."""
    current = settings.source_identity()
    try:
        if warehouse:
            check_warehouse(settings.duckdb_path, current)
        for folder in folders:
            check_folder(folder, current)
    except SourceMismatchError as exc:
        raise UserError(str(exc)) from None


def progress(step: str) -> Callable[[str], None]:
    """A progress printer for work outside a run, in the runs' format (``loggers``)."""
    started = time.perf_counter()

    def say(message: str) -> None:
        from ..loggers import progress_line  # Dagster's import only once a command reports progress

        sys.stdout.write(progress_line(time.perf_counter() - started, step, message))
        sys.stdout.flush()

    return say
