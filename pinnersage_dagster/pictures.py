"""Small PNG pictures for asset metadata, inlined as Markdown so the Dagster UI shows them."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import dagster as dg
import numpy as np


def _png(draw: Callable, size: tuple[float, float] = (5.5, 3.4)) -> bytes:
    # imported here: matplotlib costs every asset process ~0.7 s of imports otherwise
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def bars(values: np.ndarray, counts: np.ndarray, *, title: str, xlabel: str, ylabel: str, log: bool = False) -> bytes:
    def draw(ax) -> None:
        ax.bar(values, counts, width=0.8 if len(values) < 60 else 1.0, color="#3b75af")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if log:
            ax.set_yscale("log")

    return _png(draw)


def histogram(sample: np.ndarray, *, title: str, xlabel: str, bins: int = 40, log: bool = False) -> bytes:
    def draw(ax) -> None:
        ax.hist(sample, bins=bins, color="#3b75af")
        ax.set(title=title, xlabel=xlabel, ylabel="count")
        if log:
            ax.set_yscale("log")

    return _png(draw)


def spectrum(singular_values: np.ndarray) -> bytes:
    def draw(ax) -> None:
        ax.plot(np.arange(1, len(singular_values) + 1), singular_values, marker=".")
        ax.set(title="singular values of the PPMI matrix", xlabel="component", ylabel="singular value")

    return _png(draw)


def clusters_2d(points: np.ndarray, cluster: np.ndarray, medoid: np.ndarray, *, title: str) -> bytes:
    """Pins projected on their first two principal axes, coloured by cluster; medoids as stars."""
    centred = points - points.mean(axis=0)
    axes = np.linalg.svd(centred, full_matrices=False)[2][:2] if len(points) > 1 else np.eye(2, points.shape[1])
    xy = centred @ axes.T

    def draw(ax) -> None:
        ax.scatter(xy[:, 0], xy[:, 1], c=cluster, cmap="tab20", s=18, alpha=0.8)
        ax.scatter(
            xy[medoid, 0],
            xy[medoid, 1],
            c=cluster[medoid],
            cmap="tab20",
            s=220,
            marker="*",
            edgecolors="black",
            linewidths=0.8,
        )
        ax.set(title=title, xlabel="principal axis 1", ylabel="principal axis 2")

    return _png(draw, size=(5.5, 4.2))


def lift_intervals(lifts: dict[str, dict[str, dict]], *, title: str) -> bytes | None:
    """Each arm's lift (volume, propensity) with its 95% interval, against the control; None if
    no lift could be computed."""
    rows = [
        (f"{arm} · {metric}", v["lift"], v["low"], v["high"])
        for arm, metrics in lifts.items()
        for metric, v in metrics.items()
        if v["lift"] is not None
    ]
    if not rows:
        return None

    def draw(ax) -> None:
        labels, lift, low, high = zip(*rows)
        y = np.arange(len(rows))
        centre = np.array(lift) * 100
        errors = np.array([centre - np.array(low) * 100, np.array(high) * 100 - centre])
        ax.errorbar(centre, y, xerr=errors, fmt="o", color="#3b75af", capsize=4)
        ax.axvline(0, color="#888", linewidth=1)
        ax.set_yticks(y, labels)
        ax.set(title=title, xlabel="lift over the control (%), 95% interval")

    return _png(draw, size=(6.5, 0.6 * len(rows) + 1.4))
