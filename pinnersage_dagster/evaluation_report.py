"""Load an offline-evaluation split from the warehouse, and render its report (markdown + PNG)."""

from __future__ import annotations

import io
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from .core.evaluation import Users
from .core.hnsw import load_index
from .core.offline import BASELINE, BOOTSTRAP_RESAMPLES, METRICS, PINNERSAGE, PROPORTIONAL, OfflineReport

SEARCH_TEXT = {
    "index": "the product's HNSW index of the day before the split (the refined candidate pool)",
    "exact": "exact search over the whole catalog",
}
from .warehouse import embedding_matrix, query_arrow

HISTORY_SQL = "SELECT user_id, pin_id, ts FROM action_windows WHERE partition_date = ? ORDER BY user_id, ts, pin_id"
TEST_SQL = """
    SELECT DISTINCT user_id, pin_id FROM raw_actions
    WHERE partition_date BETWEEN $first AND $last AND ts >= $first AND ts < $last + INTERVAL 1 DAY
    ORDER BY user_id, pin_id
"""


def load_split(
    conn: duckdb.DuckDBPyConnection,
    split_day: date,
    horizon_days: int,
    min_train_actions: int,
    max_users: int,
    seed: int,
) -> Users:
    """History = action_windows of d-1; test = distinct pins acted on in [d, d + horizon)."""
    history = conn.execute(HISTORY_SQL, [split_day - timedelta(days=1)]).df()
    test = conn.execute(TEST_SQL, {"first": split_day, "last": split_day + timedelta(days=horizon_days - 1)}).df()
    catalog = query_arrow(conn, "SELECT pin_id, embedding FROM pins ORDER BY pin_id")
    counts = history.groupby("user_id").size()
    eligible = np.intersect1d(counts[counts >= min_train_actions].index.to_numpy(), test["user_id"].unique())
    if len(eligible) > max_users:
        eligible = np.sort(np.random.default_rng(seed).choice(eligible, max_users, replace=False))
    if len(eligible) == 0:
        raise ValueError(
            f"no user has >= {min_train_actions} actions before {split_day} and one in the {horizon_days} days from it"
        )
    history = history[history["user_id"].isin(eligible)].reset_index(drop=True)
    test = test[test["user_id"].isin(eligible)].reset_index(drop=True)
    ids = catalog.column("pin_id").to_numpy()
    test = test[np.isin(test["pin_id"].to_numpy(), ids)].reset_index(drop=True)
    return Users(
        history=history, test=test, catalog_ids=ids, catalog_x=embedding_matrix(catalog), now=pd.Timestamp(split_day)
    )


def index_search(index_dir: Path):
    """``search(queries, k)`` over the published pin_index of a day."""
    index, pin_ids, manifest = load_index(index_dir)

    def search(queries: np.ndarray, k: int) -> np.ndarray:
        k = min(k, manifest.count)
        index.set_ef(max(200, k))
        labels, _ = index.knn_query(np.ascontiguousarray(queries, dtype=np.float32), k=k)
        return pin_ids[labels]

    return search


def curve_png(report: OfflineReport) -> bytes:
    # imported here: matplotlib costs every daily asset process ~0.7 s of imports otherwise
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
    curve = report.curve
    ax.plot(curve["diversity_lift"] * 100, curve["relevance_lift"] * 100, marker="o")
    labelled = {1, 2, 3, 4, int(curve["e"].max())}  # the tail bunches up: label its end only
    for e, x, y in zip(curve["e"], curve["diversity_lift"] * 100, curve["relevance_lift"] * 100):
        if e not in labelled:
            continue
        ax.annotate(f"e={e}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("diversity lift over last pin (%)")
    ax.set_ylabel("relevance lift over last pin (%)")
    ax.set_title("PinnerSage: diversity vs relevance (Figure 7)")
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x * 100:+.0f}%"


def _lift(row: pd.Series, key: str) -> str:
    """A lift with its 95% bootstrap interval, e.g. '+12% [+9, +15]'."""
    lift, lo, hi = row[f"{key}_lift"], row.get(f"{key}_lift_lo", np.nan), row.get(f"{key}_lift_hi", np.nan)
    if not np.isfinite(lo):
        return _pct(lift)
    return f"{_pct(lift)} [{lo * 100:+.0f}, {hi * 100:+.0f}]"


def _value(mean: float, std: float) -> str:
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std else "")


def _metric_rows(t: pd.DataFrame, columns: list[tuple[str, str]], suffix: str) -> list[str]:
    head = "| model | " + " | ".join(f"{label} | lift [95% CI]" for label, _ in columns) + " |"
    lines = [head, "|---|" + "---|---|" * len(columns)]
    for name, row in t.iterrows():
        cells = []
        for _, metric in columns:
            key = f"{metric}{suffix}"
            cells.append(f"{_value(row[key], row[f'{key}_std'])} | {_lift(row, key)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _policy_lines(report: OfflineReport) -> list[str]:
    if report.policy is None:
        return ["(not run)"]
    row = report.policy.iloc[0]
    lines = ["| metric | macro lift [95% CI] | micro lift [95% CI] |", "|---|---|---|"]
    for metric in ("relevance", "recall", "r_precision", "reciprocal_rank", "diversity"):
        lines.append(f"| {metric} | {_lift(row, metric)} | {_lift(row, metric + '_micro')} |")
    return lines


def render_markdown(
    report: OfflineReport, split_day: date, horizon_days: int, source: str, image_name: str, search: str = "index"
) -> str:
    t = report.table
    retrieval_columns = [
        (f"Rel. (cos ≥ {report.threshold:.2f})", "relevance"),
        (f"Rel. (cos ≥ {report.calibrated:.3f}, calibrated)", "relevance_calibrated"),
        ("Recall", "recall"),
    ]
    ranking_columns = [
        ("R-Prec.", "r_precision"),
        ("Rec. Rank (first action)", "reciprocal_rank"),
        ("Rec. Rank (all actions)", "reciprocal_rank_all"),
        ("Diversity", "diversity"),
    ]
    retrieval, ranking = _metric_rows(t, retrieval_columns, ""), _metric_rows(t, ranking_columns, "")
    micro = _metric_rows(t, retrieval_columns + ranking_columns[:3], "_micro")
    queries = ["| model | ANN queries per user |", "|---|---|"] + [
        f"| {name} | {row.ann_queries:.2f} |" for name, row in t.iterrows()
    ]
    sweep = report.alpha_sweep.copy()
    sweep_lines = ["| " + " | ".join(sweep.columns) + " |", "|" + "---|" * len(sweep.columns)]
    for _, r in sweep.iterrows():
        sweep_lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.tolist()) + " |")
    curve_lines = ["| e | relevance | lift | diversity | lift |", "|---|---|---|---|---|"]
    for _, r in report.curve.iterrows():
        curve_lines.append(
            f"| {int(r.e)} | {r.relevance:.3f} | {_pct(r.relevance_lift)} | {r.diversity:.3f} | {_pct(r.diversity_lift)} |"
        )
    recovery = ""
    if report.recovery:
        recovery = (
            f"\nCluster recovery against the planted interests at alpha = {report.alpha:g}: mean per-user adjusted Rand "
            f"index {report.recovery['adjusted_rand_index']:.3f}, purity {report.recovery['purity']:.3f}.\n"
        )
    return "\n".join(
        [
            f"# Offline evaluation, split day {split_day}",
            "",
            f"Data: {source}. Retrieval: {SEARCH_TEXT[search]}. "
            f"History: the `action_windows` partition of {split_day - timedelta(days=1)}; test: distinct "
            f"pins acted on in [{split_day}, {split_day + timedelta(days=horizon_days)}). {report.users} users; models that "
            f"sample are averaged over {report.seeds} seeds (mean ± standard deviation). Lifts are relative to "
            f"the last-pin model, as in the paper's Tables 4 and 5. PinnerSage runs at alpha = {report.alpha:g} and "
            f"importance decay λ = {report.decay_lambda:g} per day. The calibrated relevance threshold "
            f"{report.calibrated:.3f} is the cosine that 1% of random pin pairs exceed.",
            "",
            "## Retrieval (Table 4)",
            "",
            *retrieval,
            "",
            "## Ranking and diversity (Table 5)",
            "",
            *ranking,
            "",
            "## Per action (micro averages)",
            "",
            "The same metrics with each user weighted by their number of test actions, so heavy users count more.",
            "",
            *micro,
            "",
            "## Retrieval policies",
            "",
            f"`{PROPORTIONAL}` against `{PINNERSAGE}` (the paper's 3 sampled medoids), paired per user:",
            "",
            *_policy_lines(report),
            "",
            "## Cost",
            "",
            *queries,
            "",
            "## Diversity and relevance by number of sampled embeddings (Figure 7)",
            "",
            f"![diversity-relevance curve]({image_name})",
            "",
            *curve_lines,
            "",
            f"## Alpha sweep (PinnerSage, medoid, λ = {report.decay_lambda:g}, 3 sampled embeddings)",
            "",
            *sweep_lines,
            recovery,
            "## Choices",
            "",
            "Macro (per user) and micro (per action) averages; lifts carry a 95% paired bootstrap interval over users "
            f"({BOOTSTRAP_RESAMPLES} resamples). Test pins include repeats of history pins and recommendations are not "
            "filtered by history; last pin is the latest action, ties broken by the highest pin id; 20 random catalog "
            "pins per test pin stand in for impressions, never a pin the user acted on; ties rank actions after "
            "impressions; reciprocal rank is given for the first action and over all actions; T_now is the "
            f"split day's start; `{PROPORTIONAL}` spends the 400 pins over every medoid in proportion to importance "
            "(floor 10, cap 200; `pinnersage_dagster/core/retrieval.py`); K-means uses k = min(5, pins) with k-means++ seeding; complete linkage is cut where "
            "every pair has squared distance <= alpha, with the same singleton fallback as Ward; the centroid variant "
            "uses the normalised mean. See `pinnersage_dagster/core/evaluation.py`.",
            "",
            f"Baseline row: `{BASELINE}`. Metrics: {', '.join(METRICS)}.",
        ]
    )


def report_json(
    report: OfflineReport, split_day: date, horizon_days: int, search: str, source: str, min_train_actions: int
) -> dict:
    """``report.json``: the settings and, per model by its report name, every metric (macro and
    ``_micro``) with the seeds' standard deviation and the lift over last pin with its interval."""
    models = {}
    for name, row in report.table.iterrows():
        entry: dict[str, object] = {"seeds": int(row.seeds), "ann_queries_per_user": round(float(row.ann_queries), 4)}
        for metric in METRICS:
            for key in (metric, f"{metric}_micro"):
                entry[key] = {
                    "mean": _number(row[key]),
                    "std": _number(row[f"{key}_std"]),
                    "lift": _number(row[f"{key}_lift"]),
                    "lift_ci95": [
                        _number(row.get(f"{key}_lift_lo", np.nan)),
                        _number(row.get(f"{key}_lift_hi", np.nan)),
                    ],
                }
        models[str(name)] = entry
    return {
        "settings": {
            "split_day": split_day.isoformat(),
            "horizon_days": horizon_days,
            "alpha": report.alpha,
            "decay_lambda": report.decay_lambda,
            "search": search,
            "users": report.users,
            "seeds": report.seeds,
            "min_train_actions": min_train_actions,
            "relevance_threshold": report.threshold,
            "calibrated_threshold": round(report.calibrated, 6),
            "source": source,
            "baseline": BASELINE,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        },
        "models": models,
        "policy_comparison": _policy_json(report),
        "alpha_sweep": _records(report.alpha_sweep),
        "curve": _records(report.curve),
        "recovery": {k: _number(v) for k, v in report.recovery.items()} if report.recovery else None,
    }


def _records(frame: pd.DataFrame) -> list[dict[str, object]]:
    """A table as JSON rows (numbers rounded as in report.md's tables)."""
    return [
        {
            str(k): (
                _number(float(v))
                if isinstance(v, (float, np.floating))
                else (int(v) if isinstance(v, (int, np.integer)) else v)
            )
            for k, v in row.items()
        }
        for row in frame.to_dict("records")
    ]


def _policy_json(report: OfflineReport) -> dict | None:
    """The proportional policy's lifts over the paper's sampling, per metric, with intervals."""
    if report.policy is None:
        return None
    row = report.policy.iloc[0]
    out: dict[str, object] = {"model": PROPORTIONAL, "baseline": PINNERSAGE}
    for metric in METRICS:
        for key in (metric, f"{metric}_micro"):
            out[key] = {
                "lift": _number(row[f"{key}_lift"]),
                "lift_ci95": [_number(row[f"{key}_lift_lo"]), _number(row[f"{key}_lift_hi"])],
            }
    return out


def _number(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)
