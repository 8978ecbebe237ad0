"""Asset checks: facts that must hold for every partition before its output is served.

Each check evaluates every day of its run (one day for a daily run, several for a range
run) with an ``evaluate_*`` function that takes a DuckDB connection, so tests can run
the same logic on deliberately corrupted tables.
"""

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np
from dagster_duckdb import DuckDBResource

from . import guards
from .assets.constants import DUCKDB_POOL
from .assets.experiment import experiment_report, report_root
from .assets.index import pin_index
from .assets.interests import user_clusters, user_medoids
from .config import PinnerSageParams
from .core.artifacts import ArtifactIntegrityError
from .core.hnsw import live_pin_ids, pin_ids_checksum, read_index_manifest
from .partitions import daily_partitions, partition_days
from .resources import IndexStore
from .warehouse import POOL_IDS_AT_SQL

Evaluation = tuple[bool, dict[str, Any]]


def evaluate_every_active_user_has_a_cluster(conn: duckdb.DuckDBPyConnection, day: date) -> Evaluation:
    missing = conn.execute(
        """
        SELECT DISTINCT user_id FROM action_windows WHERE partition_date = $day
        EXCEPT SELECT DISTINCT user_id FROM user_clusters WHERE partition_date = $day
        ORDER BY user_id
        """,
        {"day": day},
    ).fetchall()
    return not missing, {"users_without_cluster": len(missing), "examples": [int(r[0]) for r in missing[:10]]}


def evaluate_clusters_per_user_within_bounds(
    conn: duckdb.DuckDBPyConnection, day: date, max_clusters: int
) -> Evaluation:
    ((over, most, undersized),) = conn.execute(
        """
        WITH per_user AS (SELECT user_id, count(*) AS n FROM user_clusters WHERE partition_date = $day GROUP BY user_id)
        SELECT (SELECT count(*) FROM per_user WHERE n > $max), (SELECT coalesce(max(n), 0) FROM per_user),
               (SELECT count(*) FROM user_clusters WHERE partition_date = $day
                  AND ((kind = 'ward' AND n_pins < 2) OR n_pins <> len(pin_ids) OR n_pins < 1))
        """,
        {"day": day, "max": max_clusters},
    ).fetchall()
    return over == 0 and undersized == 0, {
        "users_over_bound": int(over),
        "max_clusters_per_user": int(most),
        "bound": max_clusters,
        "malformed_clusters": int(undersized),
    }


def evaluate_medoid_is_cluster_member(conn: duckdb.DuckDBPyConnection, day: date) -> Evaluation:
    ((not_member, not_acted, orphan),) = conn.execute(
        """
        WITH m AS (SELECT * FROM user_medoids WHERE partition_date = $day),
             c AS (SELECT * FROM user_clusters WHERE partition_date = $day)
        SELECT
          (SELECT count(*) FROM m LEFT JOIN c USING (user_id, cluster_id)
             WHERE c.pin_ids IS NULL OR NOT list_contains(c.pin_ids, m.medoid_pin_id)),
          (SELECT count(*) FROM m WHERE NOT EXISTS (
             SELECT 1 FROM action_windows w WHERE w.partition_date = $day
               AND w.user_id = m.user_id AND w.pin_id = m.medoid_pin_id)),
          (SELECT count(*) FROM c ANTI JOIN m USING (user_id, cluster_id))
        """,
        {"day": day},
    ).fetchall()
    return not_member == 0 and not_acted == 0 and orphan == 0, {
        "medoids_not_in_their_cluster": int(not_member),
        "medoids_not_among_user_actions": int(not_acted),
        "clusters_without_medoid": int(orphan),
    }


def evaluate_importance_is_finite_and_positive(conn: duckdb.DuckDBPyConnection, day: date) -> Evaluation:
    values = conn.execute("SELECT importance FROM user_medoids WHERE partition_date = ?", [day]).df()["importance"]
    bad = ~(np.isfinite(values.to_numpy()) & (values.to_numpy() > 0))
    return not bad.any(), {"medoids": len(values), "bad_importances": int(bad.sum())}


def evaluate_pin_index_matches_candidate_pool(
    conn: duckdb.DuckDBPyConnection, day: date, partition_dir: Path
) -> Evaluation:
    pool = conn.execute(POOL_IDS_AT_SQL, [day + timedelta(days=1)]).df()
    try:
        manifest = read_index_manifest(partition_dir)
        indexed = live_pin_ids(partition_dir)  # verifies the build's checksums
    except ArtifactIntegrityError as exc:
        return False, {"error": str(exc)}
    metadata = {
        "index_count": manifest.count,
        "pool_count": len(pool),
        "source_partition": manifest.source_partition,
        "checksums_verified": True,
    }
    pool_checksum = pin_ids_checksum(pool["pin_id"].to_numpy())
    same_set = manifest.pin_ids_sha256 == pool_checksum == pin_ids_checksum(indexed)
    current = _built_from_current_catalog(conn, day, manifest.build_id)
    metadata["built_from"] = current or "the current catalog and candidate pool"
    return same_set and manifest.source_partition == day.isoformat() and current is None, metadata


def _built_from_current_catalog(conn: duckdb.DuckDBPyConnection, day: date, build_id: str) -> str | None:
    """None if the index of ``day`` is the recorded build of the current pool of the current
    catalog; else what is stale (a pool equal to a stale catalog would pass the id comparison)."""
    index, pool, catalog = (
        guards.get(conn, "pin_index", day),
        guards.get(conn, "candidate_pool"),
        guards.get(conn, "pins"),
    )
    if index is None or pool is None or catalog is None:
        return "no lineage recorded for the index, the pool or the catalog"
    if index.version != build_id:
        return f"the index on disk is build {build_id}, the recorded one {index.version}"
    if pool.inputs.get("pins") != catalog.version:
        return "candidate_pool was built from another version of the catalog: materialize candidate_pool"
    if index.inputs.get("candidate_pool") != pool.version:
        return "the index was built from another candidate_pool: materialize pin_index"
    return None


SRM_ALPHA = 0.001


def evaluate_experiment_sample_ratio(report: dict) -> Evaluation:
    """Exposed users per arm against the weights (chi-square): a split that skewed means the
    assignment or the logging is broken, and no lift can be trusted."""
    p = float(report["srm_p_value"])
    return p >= SRM_ALPHA, {
        "srm_p_value": p,
        "exposed_users": report.get("exposed_users_all", {}),
        "weights": report["experiment"]["arms"],
    }


def _evaluate_days(
    context: dg.AssetCheckExecutionContext, evaluate: Callable[[date], Evaluation], warn: bool = False
) -> dg.AssetCheckResult:
    results = {day.isoformat(): evaluate(day) for day in partition_days(context)}
    passed = all(ok for ok, _ in results.values())
    if len(results) == 1:
        metadata = next(iter(results.values()))[1]
    else:
        metadata = {"days": len(results), "failed_days": [d for d, (ok, _) in results.items() if not ok][:20]}
    severity = dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR
    return dg.AssetCheckResult(passed=passed, severity=severity, metadata=metadata)


@dg.asset_check(asset=user_clusters.key, partitions_def=daily_partitions, pool=DUCKDB_POOL)
def every_active_user_has_a_cluster(
    context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource
) -> dg.AssetCheckResult:
    """Every user in the day's window has at least one cluster (Ward or singleton fallback)."""
    with duckdb.get_connection() as conn:
        return _evaluate_days(context, lambda day: evaluate_every_active_user_has_a_cluster(conn, day))


@dg.asset_check(asset=user_clusters.key, partitions_def=daily_partitions, pool=DUCKDB_POOL)
def clusters_per_user_within_bounds(
    context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource, params: PinnerSageParams
) -> dg.AssetCheckResult:
    """No user has more than ``max_clusters_per_user`` clusters; Ward clusters have >= 2 pins."""
    with duckdb.get_connection() as conn:
        return _evaluate_days(
            context,
            lambda day: evaluate_clusters_per_user_within_bounds(conn, day, params.max_clusters_per_user),
            warn=True,
        )


@dg.asset_check(asset=user_medoids.key, partitions_def=daily_partitions, pool=DUCKDB_POOL, blocking=True)
def medoid_is_cluster_member(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    """Each medoid is a member of its own cluster and one of the user's action pins in the window;
    every cluster has a medoid. Blocking: nothing downstream serves a bad medoid table."""
    with duckdb.get_connection() as conn:
        return _evaluate_days(context, lambda day: evaluate_medoid_is_cluster_member(conn, day))


@dg.asset_check(asset=user_medoids.key, partitions_def=daily_partitions, pool=DUCKDB_POOL)
def importance_is_finite_and_positive(
    context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource
) -> dg.AssetCheckResult:
    """Every importance score is a finite number > 0."""
    with duckdb.get_connection() as conn:
        return _evaluate_days(context, lambda day: evaluate_importance_is_finite_and_positive(conn, day))


@dg.asset_check(asset=pin_index, partitions_def=daily_partitions, pool=DUCKDB_POOL, blocking=True)
def pin_index_matches_candidate_pool(
    context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource, index_store: IndexStore
) -> dg.AssetCheckResult:
    """The published index verifies against its manifest's checksums and holds exactly the
    candidate pool pins that existed at the end of its day."""
    with duckdb.get_connection() as conn:
        return _evaluate_days(
            context,
            lambda day: evaluate_pin_index_matches_candidate_pool(
                conn, day, index_store.partition_dir(day.isoformat())
            ),
        )


@dg.asset_check(asset=experiment_report, partitions_def=daily_partitions)
def experiment_sample_ratio(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Sample ratio mismatch: exposed users per arm must fit the weights (fails below p = 0.001)."""

    def evaluate(day: date) -> Evaluation:
        path = Path(report_root()) / day.isoformat() / "report.json"
        try:
            return evaluate_experiment_sample_ratio(json.loads(path.read_text()))
        except FileNotFoundError:
            return False, {"missing": str(path)}

    return _evaluate_days(context, evaluate)


all_checks = [
    every_active_user_has_a_cluster,
    clusters_per_user_within_bounds,
    medoid_is_cluster_member,
    importance_is_finite_and_positive,
    pin_index_matches_candidate_pool,
    experiment_sample_ratio,
]
