"""Each asset check passes on a good partition and fails on deliberately corrupted data."""

from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.checks import (
    all_checks,
    evaluate_clusters_per_user_within_bounds,
    evaluate_every_active_user_has_a_cluster,
    evaluate_importance_is_finite_and_positive,
    evaluate_medoid_is_cluster_member,
    evaluate_pin_index_matches_candidate_pool,
)
from pinnersage_dagster.resources import ClusteringEngine

from ..support import DAY, check_results


def index_dir(graph) -> Path:
    return Path(graph.resources["index_store"].root) / DAY.isoformat()


def a_user(conn) -> int:
    return conn.execute("SELECT min(user_id) FROM user_clusters WHERE kind = 'ward'").fetchone()[0]


def test_all_checks_pass_on_the_materialized_day(graph):
    with graph.connect(read_only=True) as conn:
        assert evaluate_every_active_user_has_a_cluster(conn, DAY)[0]
        assert evaluate_clusters_per_user_within_bounds(conn, DAY, 150)[0]
        assert evaluate_medoid_is_cluster_member(conn, DAY)[0]
        assert evaluate_importance_is_finite_and_positive(conn, DAY)[0]
        assert evaluate_pin_index_matches_candidate_pool(conn, DAY, index_dir(graph))[0]


def test_a_user_without_clusters_fails(graph_copy):
    with graph_copy.connect() as conn:
        user = a_user(conn)
        conn.execute("DELETE FROM user_clusters WHERE user_id = ?", [user])
        passed, metadata = evaluate_every_active_user_has_a_cluster(conn, DAY)
    assert not passed and metadata["users_without_cluster"] == 1 and metadata["examples"] == [user]


def test_too_many_clusters_or_a_one_pin_ward_cluster_fails(graph_copy):
    with graph_copy.connect() as conn:
        assert not evaluate_clusters_per_user_within_bounds(conn, DAY, max_clusters=1)[0]
        conn.execute(
            "UPDATE user_clusters SET n_pins = 1, pin_ids = [pin_ids[1]] WHERE user_id = ? AND cluster_id = 0",
            [a_user(conn)],
        )
        passed, metadata = evaluate_clusters_per_user_within_bounds(conn, DAY, max_clusters=150)
    assert not passed and metadata["malformed_clusters"] == 1


@pytest.mark.parametrize(
    "corruption, field",
    [
        # a pin of another cluster of the same user: an action pin, but not a member
        (
            "UPDATE user_medoids m SET medoid_pin_id = (SELECT c.pin_ids[1] FROM user_clusters c WHERE c.user_id = m.user_id "
            "AND c.cluster_id <> m.cluster_id LIMIT 1) WHERE (user_id, cluster_id) = (SELECT (user_id, cluster_id) FROM "
            "user_clusters c1 WHERE EXISTS (SELECT 1 FROM user_clusters c2 WHERE c2.user_id = c1.user_id AND c2.cluster_id <> c1.cluster_id) LIMIT 1)",
            "medoids_not_in_their_cluster",
        ),
        # a pin the user never acted on, slipped into both the cluster and the medoid table
        (
            "UPDATE user_clusters SET pin_ids = list_append(pin_ids, -5) WHERE cluster_id = 0 AND user_id = (SELECT min(user_id) FROM user_clusters); "
            "UPDATE user_medoids SET medoid_pin_id = -5 WHERE cluster_id = 0 AND user_id = (SELECT min(user_id) FROM user_clusters)",
            "medoids_not_among_user_actions",
        ),
        (
            "DELETE FROM user_medoids WHERE cluster_id = 0 AND user_id = (SELECT min(user_id) FROM user_medoids)",
            "clusters_without_medoid",
        ),
    ],
)
def test_a_medoid_outside_its_cluster_or_the_window_fails(graph_copy, corruption, field):
    with graph_copy.connect() as conn:
        conn.execute(corruption)
        passed, metadata = evaluate_medoid_is_cluster_member(conn, DAY)
    assert not passed and metadata[field] >= 1


@pytest.mark.parametrize("value", ["'NaN'", "'Infinity'", "0", "-1"])
def test_a_non_finite_or_non_positive_importance_fails(graph_copy, value):
    with graph_copy.connect() as conn:
        conn.execute(
            f"UPDATE user_medoids SET importance = {value} WHERE cluster_id = 0 AND user_id = (SELECT min(user_id) FROM user_medoids)"
        )
        passed, metadata = evaluate_importance_is_finite_and_positive(conn, DAY)
    assert not passed and metadata["bad_importances"] == 1


def test_an_index_that_disagrees_with_its_pool_or_its_checksums_fails(graph_copy):
    with graph_copy.connect() as conn:
        conn.execute("DELETE FROM candidate_pool WHERE pin_id = (SELECT min(pin_id) FROM candidate_pool)")
        passed, metadata = evaluate_pin_index_matches_candidate_pool(conn, DAY, index_dir(graph_copy))
    assert not passed and metadata["pool_count"] == metadata["index_count"] - 1

    manifest = index_dir(graph_copy) / "manifest.json"
    build = next((index_dir(graph_copy) / "builds").iterdir()) / "pin_ids.npy"
    build.write_bytes(build.read_bytes()[:-8])
    with graph_copy.connect() as conn:
        passed, metadata = evaluate_pin_index_matches_candidate_pool(conn, DAY, index_dir(graph_copy))
    assert not passed and "checksum" in metadata["error"]
    manifest.unlink()
    with graph_copy.connect() as conn:
        assert not evaluate_pin_index_matches_candidate_pool(conn, DAY, index_dir(graph_copy))[0]


def test_blocking_medoid_check_fails_the_run_in_dagster(graph_copy, monkeypatch):
    # a faulty per-user pass: one cluster's medoid becomes a pin outside the user's window
    import pinnersage_dagster.engines.workers as workers

    honest = workers.represent_users

    def faulty(*args, **kwargs):
        table = honest(*args, **kwargs)
        medoids = table.column("medoid_pin_id").to_numpy().copy()
        first = table.column("cluster_id").to_numpy() == table.column("cluster_id").to_numpy()[0]
        medoids[first & (table.column("user_id").to_numpy() == table.column("user_id").to_numpy()[0])] = -12345
        return table.set_column(table.schema.get_field_index("medoid_pin_id"), "medoid_pin_id", pa.array(medoids))

    monkeypatch.setattr(workers, "represent_users", faulty)
    result = dg.materialize(
        [*all_assets, *all_checks],
        selection=dg.AssetSelection.assets("user_medoids").required_multi_asset_neighbors()
        | dg.AssetSelection.assets("serving_snapshot"),
        resources={**graph_copy.resources, "engine": ClusteringEngine(workers=1)},
        partition_key=DAY.isoformat(),
        raise_on_error=False,
    )
    assert check_results(result)["medoid_is_cluster_member"] is False
    assert not result.success  # blocking: the run fails, nothing downstream is served
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "medoid_is_cluster_member" in failure.step_key
    assert not result.asset_materializations_for_node("serving_snapshot")
