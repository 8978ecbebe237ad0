"""The summary of a materialized partition, as ``make demo`` prints it."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import numpy as np

from ..core.artifacts import ArtifactIntegrityError, read_manifest as read_artifact
from ..core.hnsw import read_index_manifest
from ..reporting import distribution, frame_markdown
from ..settings import Settings, settings as current_settings
from ..warehouse import table_exists
from . import UserError


def materialized_days(database: str, asset: str = "user_medoids") -> list[date]:
    """The days ``asset`` was materialized for (its lineage), oldest first."""
    if not Path(database).exists():
        raise UserError(f"there is no warehouse at {database}: run `pinnersage demo` first")
    with duckdb.connect(database, read_only=True) as conn:
        if not table_exists(conn, "lineage"):
            return []
        rows = conn.execute(
            "SELECT DISTINCT partition_date FROM lineage WHERE asset = ? AND partition_date IS NOT NULL ORDER BY 1",
            [asset],
        ).fetchall()
    return [r[0] for r in rows]


def summary_day(requested: date | None, database: str) -> date:
    """The day to summarize: the one asked for if it was materialized, else the newest that was."""
    days = materialized_days(database)
    if not days:
        raise UserError(f"no day has been materialized in {database}: run `pinnersage demo`")
    if requested is None:
        return days[-1]
    if requested not in days:
        held = f"{days[0]} .. {days[-1]}" if len(days) > 1 else str(days[0])
        raise UserError(
            f"{requested} was never materialized in {database} (it holds {held}): "
            f"run `pinnersage demo --date {requested} --days 1`"
        )
    return requested


def summary(day: date, settings: Settings | None = None) -> str:
    """What partition ``day`` holds: window, clusters, catalog, index, snapshot, an example user."""
    settings = settings or current_settings()
    database, index_root = settings.duckdb_path, settings.index_root
    with duckdb.connect(database, read_only=True) as conn:
        one = lambda sql: conn.execute(sql, [day]).fetchall()[0][0]
        users = one("SELECT count(DISTINCT user_id) FROM action_windows WHERE partition_date = ?")
        actions = one("SELECT count(*) FROM action_windows WHERE partition_date = ?")
        quarantined = conn.execute(
            "SELECT count(*) FROM raw_actions_quarantine WHERE partition_date BETWEEN ? - INTERVAL 89 DAY AND ?",
            [day, day],
        ).fetchall()[0][0]
        per_user = (
            conn.execute("SELECT count(*) AS n FROM user_clusters WHERE partition_date = ? GROUP BY user_id", [day])
            .df()["n"]
            .to_numpy()
        )
        catalog = conn.execute("SELECT count(*) FROM pins").fetchall()[0][0]
        pool = conn.execute("SELECT count(*) FROM candidate_pool").fetchall()[0][0]
        medoids = conn.execute(
            "SELECT user_id, count(*) AS n FROM user_medoids WHERE partition_date = ? GROUP BY user_id ORDER BY n DESC, user_id",
            [day],
        ).df()
        user = int(medoids["user_id"].iloc[min(len(medoids) - 1, len(medoids) // 10)]) if len(medoids) else None
        interests = conn.execute(
            """
            SELECT m.cluster_id, m.medoid_pin_id, round(m.importance, 3) AS importance, m.size AS pins,
                   m.n_actions AS actions, m.kind, t.topic AS true_topic
            FROM user_medoids m LEFT JOIN synthetic_pin_truth t ON t.pin_id = m.medoid_pin_id
            WHERE m.partition_date = ? AND m.user_id = ? ORDER BY m.importance DESC
            """,
            [day, user],
        ).df()
        if not conn.execute("SELECT count(*) FROM synthetic_pin_truth").fetchall()[0][0]:
            interests = interests.drop(columns=["true_topic"])  # your own data has no planted topics
    try:
        manifest = read_index_manifest(Path(index_root) / day.isoformat())
        index_line = f"{manifest.count} pins, d={manifest.dimension}, M={manifest.M}, ef={manifest.ef}, build {manifest.build_id}"
    except ArtifactIntegrityError as exc:
        index_line = f"not available ({exc})"
    try:
        serving = read_artifact(Path(settings.serving_root) / day.isoformat())
        serving_line = (
            f"{serving['users']} users, {serving['clusters']} interests, build {serving['build_id']} (pinnersage serve)"
        )
    except ArtifactIntegrityError as exc:
        serving_line = f"not available ({exc})"
    d = distribution(per_user)
    counts = np.bincount(np.minimum(per_user, 11).astype(int), minlength=12)[1:] if per_user.size else np.zeros(11, int)
    buckets = ", ".join(f"{k}:{c}" for k, c in zip([*map(str, range(1, 11)), "11+"], counts))
    return "\n".join(
        [
            f"PinnerSage summary for partition {day}",
            f"  users with actions in the 90-day window : {users}",
            f"  actions in the window (deduplicated, capped): {actions}   quarantined rows in window: {quarantined}",
            f"  clusters per user: p50 {d['p50']:.0f}, p90 {d['p90']:.0f}, p99 {d['p99']:.0f}, max {d['max']:.0f}, mean {d['mean']}",
            f"  clusters per user (count: users): {buckets}",
            f"  catalog pins: {catalog}   candidate pool: {pool}",
            f"  pin index: {index_line}",
            f"  serving snapshot: {serving_line}",
            f"  interests of user {user} (medoid pins by importance):",
            frame_markdown(interests, max_rows=15),
        ]
    )
