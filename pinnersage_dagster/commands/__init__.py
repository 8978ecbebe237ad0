"""What the ``pinnersage`` command does, one module per kind of work; ``cli.py`` only parses the
command line, prints each command's first line and turns these errors into exit codes.

- ``context``: the first line (source, warehouse, days) and the source check every command makes
- ``pipeline``: run the graph (the demo: a history load, then the daily job for some days)
- ``summary``: what a materialized partition holds
- ``tuning``: the offline evaluation and alpha calibration
- ``users``: a user's recommendations and interests from the newest snapshot
- ``housekeeping``: removing what a deployment made (``pinnersage clean``)
"""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """Something the user can fix (a day never materialized, another source's warehouse, no
    snapshot): one line, exit code 2."""


@dataclass
class RunFailed(Exception):
    """A Dagster run of the command failed: the failing step and its message first, the run to
    open in the UI, the full trace only when asked (``--verbose``)."""

    step: str
    message: str
    run_id: str
    trace: str

    def __str__(self) -> str:
        return f"step {self.step} failed: {self.message}"
