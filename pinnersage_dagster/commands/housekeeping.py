"""Removing what a deployment made: the warehouse and the folders its settings name."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..settings import Settings
from . import UserError


def clean(settings: Settings) -> list[str]:
    """Remove the warehouse (and its write-ahead log) and the index, serving, exchange, event-log,
    report and impression folders the settings name; returns what was removed. Inputs (your logs, the
    committed examples) are never among them."""
    targets = [
        Path(settings.duckdb_path),
        Path(settings.duckdb_path + ".wal"),
        *(Path(p) for p in (settings.index_root, settings.serving_root, settings.exchange_root)),
        *(Path(p) for p in (settings.events_root, settings.reports_root, settings.impressions_root)),
    ]
    cwd = Path.cwd().resolve()
    inputs = {Path(p).resolve() for p in (settings.actions_path, settings.pins_path, settings.experiment_path) if p}
    for target in targets:
        resolved = target.resolve()
        if resolved == Path(resolved.anchor) or resolved in (cwd, *cwd.parents, Path.home()):
            raise UserError(f"refusing to remove {target}: it holds more than this deployment's data")
        if any(resolved == i or resolved in i.parents for i in inputs):
            raise UserError(f"refusing to remove {target}: your input data is inside it")
    removed = []
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            continue
        removed.append(str(target))
    return removed
