"""Small summaries that make asset metadata and the demo tell the story."""

from __future__ import annotations

import numpy as np
import pandas as pd


def distribution(values: np.ndarray | pd.Series) -> dict[str, float]:
    """min / p50 / p90 / p99 / max / mean of a numeric sample (empty -> zeros)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {k: 0.0 for k in ("min", "p50", "p90", "p99", "max", "mean")}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"min": float(v.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(v.max()), "mean": round(float(v.mean()), 3)}


def histogram_markdown(values: np.ndarray | pd.Series, edges: list[int], label: str) -> str:
    """A markdown table of counts per bucket [edges[i], edges[i+1])."""
    v = np.asarray(values)
    rows = [f"| {label} | users |", "|---|---|"]
    bounds = list(edges) + [np.inf]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        count = int(((v >= lo) & (v < hi)).sum())
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


def representative_user(counts: pd.Series) -> object:
    """A user whose cluster count is the 90th percentile: rich enough to show, not an outlier."""
    if counts.empty:
        return None
    target = np.percentile(counts.to_numpy(), 90)
    return (counts - target).abs().sort_values(kind="stable").index[0]
