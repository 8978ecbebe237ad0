"""Run loggers: Dagster's console logger (the default, what the UI's runs use) and ``progress``,
which the ``pinnersage`` command selects for its runs: each message an asset logs, as one line
with the step and the seconds since the run started, and nothing of Dagster's own events (the
run's full log stays in the instance, for the UI)."""

from __future__ import annotations

import logging
import sys
import time

import dagster as dg

# the attribute Dagster's log manager puts its metadata under on every record (DagsterLogRecordMetadata)
METADATA = "dagster_meta"


def progress_line(elapsed: float, step: str, message: str) -> str:
    """One progress line: the seconds since the start, the step, its message."""
    return f"      {elapsed:5.0f}s  {step}: {message}\n"


class _StepMessages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, METADATA, None) or {}
        if meta.get("dagster_event") is not None:
            return  # the framework's events: in the run's log, not on the terminal
        elapsed = time.perf_counter() - self.started
        step = meta.get("step_key") or "run"
        sys.stdout.write(progress_line(elapsed, step, meta.get("orig_message", record.getMessage())))
        sys.stdout.flush()


@dg.logger(
    config_schema={},
    description="The messages assets log, one line each with the elapsed seconds (the pinnersage command).",
)
def progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("pinnersage.progress", level=logging.INFO)
    logger.addHandler(_StepMessages())
    return logger


LOGGERS = {"console": dg.colored_console_logger, "progress": progress_logger}
# the run config that selects it
PROGRESS: dict[str, dict] = {"loggers": {"progress": {}}}
