"""Small summaries that make asset metadata and the demo tell the story."""

from __future__ import annotations

import itertools

import dagster as dg
import numpy as np
import pandas as pd

from .warehouse import Table


def table_schema(table: Table) -> dg.TableSchema:
    """A warehouse table's columns for the UI, from its one declaration (``warehouse.TABLES``)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                c.name, c.type.lower(), c.description, constraints=dg.TableColumnConstraints(nullable=not c.required)
            )
            for c in table.columns
        ]
    )


def distribution(values: np.ndarray | pd.Series) -> dict[str, float]:
    """min / p50 / p90 / p99 / max / mean of a numeric sample (empty -> zeros)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {k: 0.0 for k in ("min", "p50", "p90", "p99", "max", "mean")}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {
        "min": float(v.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(v.max()),
        "mean": round(float(v.mean()), 3),
    }


def distribution_of_counts(values: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """``distribution`` of a sample given as distinct sorted ``values`` and how often each occurs,
    without expanding it (one row per user would grow with the number of users)."""
    values, counts = np.asarray(values, dtype=np.float64), np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return distribution(np.empty(0))
    ends = np.cumsum(counts)

    def at(rank: np.ndarray) -> np.ndarray:  # the value of the rank-th smallest element (0-based)
        return values[np.searchsorted(ends, rank, side="right")]

    position = np.array([0.5, 0.9, 0.99]) * (total - 1)  # numpy's default 'linear' percentile
    low, high = np.floor(position).astype(np.int64), np.ceil(position).astype(np.int64)
    p50, p90, p99 = at(low) + (at(high) - at(low)) * (position - low)
    return {
        "min": float(values[0]),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(values[-1]),
        "mean": round(float((values * counts).sum() / total), 3),
    }


def histogram_markdown_of_counts(values: np.ndarray, counts: np.ndarray, edges: list[int], label: str) -> str:
    """``histogram_markdown`` of a sample given as values and how often each occurs."""
    v, c = np.asarray(values), np.asarray(counts)
    rows = [f"| {label} | users |", "|---|---|"]
    bounds = list(edges) + [np.inf]
    for lo, hi in itertools.pairwise(bounds):
        count = int(c[(v >= lo) & (v < hi)].sum())
        name = f"{lo}" if hi == lo + 1 else (f"{lo}+" if hi == np.inf else f"{lo}-{int(hi) - 1}")
        rows.append(f"| {name} | {count} |")
    return "\n".join(rows)


def frame_markdown(frame: pd.DataFrame, max_rows: int = 12) -> str:
    """A markdown table of the first rows of a frame (no extra dependency)."""
    head = frame.head(max_rows)
    lines = ["| " + " | ".join(map(str, head.columns)) + " |", "|" + "---|" * len(head.columns)]
    for row in head.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if len(frame) > max_rows:
        lines.append(f"| ... {len(frame) - max_rows} more rows |" + " |" * (len(head.columns) - 1))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, np.ndarray)):
        items = list(value)
        shown = ", ".join(map(str, items[:6]))
        return f"[{shown}{', ...' if len(items) > 6 else ''}] ({len(items)})"
    return str(value)
