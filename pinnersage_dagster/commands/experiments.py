"""``pinnersage experiment-report``: materialize an experiment's daily report and print it."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from ..settings import settings
from . import UserError
from .pipeline import Runner


def newest_served_day() -> date:
    from ..serving.store import SnapshotManager

    published = SnapshotManager(Path(settings().serving_root)).published()
    if not published:
        raise UserError(f"no serving snapshot in {settings().serving_root}: run `pinnersage demo` first")
    return date.fromisoformat(published[0][0])


def experiment_report(day: date, experiment_path: str) -> str:
    """The report of the traffic served from snapshot ``day`` (asset ``experiment_report`` and its
    sample-ratio check, in one run the UI shows), as Markdown."""
    from ..assets.experiment import report_root

    runner = Runner(steps=1)
    result = runner.assets(
        f"experiment_report for partition {day} (the traffic its snapshot served)",
        ["experiment_report"],
        partition_key=day.isoformat(),
        ops={"experiment_report": {"config": {"experiment_path": experiment_path}}},
    )
    checks = [
        f"check {e.check_name}: {'passed' if e.passed else 'FAILED'} (p = {e.metadata['srm_p_value'].value:.3g})"
        for e in result.get_asset_check_evaluations()
        if "srm_p_value" in e.metadata
    ]
    return "\n".join([*checks, "", (Path(report_root()) / day.isoformat() / "report.md").read_text()])
