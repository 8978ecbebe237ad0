"""Users whose window did not change keep the day before's interests: the tables must equal a
full re-clustering of every user, over several days, with users aging out, the per-user cap
biting, a pin's embedding changing, and whenever the day before cannot be trusted (other
parameters, rewritten behind its lineage, missing)."""

from datetime import date, timedelta

import dagster as dg

from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.resources import ClusteringEngine

from ..support import DAY, WINDOW, make_resources, materializations, materialize_history

DAYS = [DAY - timedelta(days=k) for k in (3, 2, 1, 0)]
CAP = 6  # actions per user: the cap bites for most users, so an action entering pushes one out


def interests(resources: dict, day: date) -> dict:
    result = dg.materialize(
        all_assets,
        selection=["action_windows", "user_clusters", "user_medoids"],
        resources=resources,
        partition_key=day.isoformat(),
    )
    return {k: v.value for k, v in materializations(result, "user_clusters")[-1].metadata.items()}


def tables(resources: dict, day: date) -> tuple[list, list]:
    import duckdb

    with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
        clusters = conn.execute(
            "SELECT user_id, cluster_id, kind, merge_cost, n_pins, pin_ids FROM user_clusters "
            "WHERE partition_date = ? ORDER BY user_id, cluster_id",
            [day],
        ).fetchall()
        medoids = conn.execute(
            "SELECT user_id, cluster_id, medoid_pin_id, importance, size, n_actions, kind FROM user_medoids "
            "WHERE partition_date = ? ORDER BY user_id, cluster_id",
            [day],
        ).fetchall()
    return clusters, medoids


def assert_same(reused: tuple[list, list], full: tuple[list, list]) -> None:
    assert reused[0] == full[0]  # clusters: identical
    assert len(reused[1]) == len(full[1])
    for a, b in zip(reused[1], full[1]):  # medoids: identical, importance within rounding
        assert a[:3] == b[:3] and a[4:] == b[4:]
        assert abs(a[3] - b[3]) <= 1e-12 * max(abs(b[3]), 1.0), (a, b)


def build(root, reuse: bool) -> dict:
    resources = make_resources(root, ClusteringEngine(workers=1, reuse_unchanged_users=reuse), max_actions_per_user=CAP)
    assert materialize_history(resources, DAY, days=WINDOW + len(DAYS)).success
    return resources


def windows(resources: dict, day: date) -> None:
    assert dg.materialize(
        all_assets, selection=["action_windows"], resources=resources, partition_key=day.isoformat()
    ).success


def change_an_embedding(resources: list[dict], day: date) -> int:
    """Give a pin of an otherwise unchanged user (window of ``day`` equal to the day before's)
    another pin's embedding, in every warehouse alike; returns that user."""
    import duckdb

    before = day - timedelta(days=1)
    with duckdb.connect(resources[0]["duckdb"].database, read_only=True) as conn:
        user, pin = conn.execute(
            """
            SELECT user_id, min(pin_id) FROM action_windows WHERE partition_date = ? AND user_id NOT IN (
                SELECT user_id FROM (
                    (SELECT user_id, pin_id, action, ts FROM action_windows WHERE partition_date = ?
                     EXCEPT ALL SELECT user_id, pin_id, action, ts FROM action_windows WHERE partition_date = ?)
                    UNION ALL
                    (SELECT user_id, pin_id, action, ts FROM action_windows WHERE partition_date = ?
                     EXCEPT ALL SELECT user_id, pin_id, action, ts FROM action_windows WHERE partition_date = ?)))
            GROUP BY user_id ORDER BY user_id LIMIT 1
            """,
            [day, day, before, before, day],
        ).fetchone()
    for r in resources:
        with duckdb.connect(r["duckdb"].database) as conn:
            conn.execute(
                "UPDATE pins SET embedding = (SELECT embedding FROM pins q WHERE q.pin_id = "
                "(SELECT min(pin_id) FROM pins WHERE pin_id > ?)) WHERE pin_id = ?",
                [pin, pin],
            )
    return int(user)


def test_reused_days_equal_a_full_reclustering(tmp_path):
    import duckdb

    reused, full = build(tmp_path / "reuse", True), build(tmp_path / "full", False)
    kept = 0
    for number, day in enumerate(DAYS):
        if number == 2:  # a pin's embedding changes: its users are clustered again, whatever their window
            windows(reused, day)
            windows(full, day)
            moved = change_an_embedding([reused, full], day)
        meta = interests(reused, day)
        reference = interests(full, day)
        assert reference["users_reclustered"] == reference["users"]
        if number == 0:  # no day before: every user
            assert meta["interests_reused_from"].startswith("none")
        else:
            assert meta["interests_reused_from"] == (day - timedelta(days=1)).isoformat()
            kept += meta["users"] - meta["users_reclustered"]
        assert meta["users"] == reference["users"]
        assert_same(tables(reused, day), tables(full, day))
        if number == 2:
            with duckdb.connect(reused["duckdb"].database, read_only=True) as conn:
                changed = conn.execute(
                    "SELECT user_id FROM interest_changed_users WHERE partition_date = ?", [day]
                ).fetchall()
            assert (moved,) in changed
    assert kept > 0  # some users' windows did not change

    with duckdb.connect(reused["duckdb"].database, read_only=True) as conn:
        aged_out = conn.execute(
            "SELECT count(DISTINCT user_id) FROM action_windows WHERE partition_date = ? "
            "AND user_id NOT IN (SELECT user_id FROM action_windows WHERE partition_date = ?)",
            [DAYS[-2], DAYS[-1]],
        ).fetchall()[0][0]
        capped = conn.execute(
            "SELECT count(*) FROM (SELECT user_id FROM action_windows WHERE partition_date = ? "
            "GROUP BY user_id HAVING count(*) = ?)",
            [DAYS[-1], CAP],
        ).fetchall()[0][0]
    assert aged_out > 0 and capped > 0  # the cases the reuse must get right were there


def test_a_day_before_that_cannot_be_trusted_is_not_reused(tmp_path):
    import duckdb

    resources = build(tmp_path / "w", True)
    for day in DAYS[:2]:
        interests(resources, day)
    first, second = DAYS[0], DAYS[1]
    expected = tables(resources, second)
    database = resources["duckdb"].database

    # the day before was built with other parameters (its lineage says so): every user clustered
    with duckdb.connect(database) as conn:
        conn.execute(
            "UPDATE lineage SET inputs = replace(inputs, '\"alpha\": ', '\"alpha\": 9') "
            "WHERE asset = 'user_clusters' AND partition_date = ?",
            [first],
        )
    meta = interests(resources, second)
    assert meta["interests_reused_from"].startswith("none") and meta["users_reclustered"] == meta["users"]
    assert_same(tables(resources, second), expected)

    # rebuilt, then its rows changed behind the lineage's back: its content hash no longer matches
    interests(resources, first)
    with duckdb.connect(database) as conn:
        conn.execute("UPDATE user_medoids SET importance = importance * 2 WHERE partition_date = ?", [first])
    meta = interests(resources, second)
    assert meta["interests_reused_from"].startswith("none")
    assert_same(tables(resources, second), expected)

    # the day before never materialized
    with duckdb.connect(database) as conn:
        conn.execute(
            "DELETE FROM lineage WHERE asset IN ('user_clusters', 'user_medoids') AND partition_date = ?", [first]
        )
    meta = interests(resources, second)
    assert meta["interests_reused_from"].startswith("none")
    assert_same(tables(resources, second), expected)
