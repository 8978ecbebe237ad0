"""Partition writes replace exactly their window, and a failed write leaves the old partition."""

from datetime import date

import duckdb
import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.warehouse import ensure_tables, replace_partitions


def actions(day: date, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "partition_date": day,
            "user_id": range(n),
            "pin_id": range(n),
            "action": "click",
            "ts": pd.Timestamp(day) + pd.to_timedelta(range(n), unit="s"),
        }
    )


def test_replace_partitions_is_idempotent_and_atomic(tmp_path):
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_tables(conn)
    d1, d2 = date(2026, 5, 1), date(2026, 5, 2)
    replace_partitions(conn, "raw_actions", actions(d1, 3), d1, d1)
    replace_partitions(conn, "raw_actions", actions(d2, 4), d2, d2)
    replace_partitions(conn, "raw_actions", actions(d1, 2), d1, d1)  # re-run of d1: replaced, d2 untouched
    counts = dict(conn.execute("SELECT partition_date, count(*) FROM raw_actions GROUP BY 1").fetchall())
    assert counts == {d1: 2, d2: 4}

    broken = actions(d1, 5).drop(columns=["ts"])
    with pytest.raises(duckdb.Error):
        replace_partitions(conn, "raw_actions", broken, d1, d1)
    counts = dict(conn.execute("SELECT partition_date, count(*) FROM raw_actions GROUP BY 1").fetchall())
    assert counts == {d1: 2, d2: 4}  # the failed write rolled back its delete too


@pytest.mark.parametrize("shuffled", [False, True])
def test_the_catalog_is_stored_in_pin_id_order_in_slices(tmp_path, monkeypatch, shuffled):
    """An unsorted catalog goes in by slices of its pin id order (no whole copy of its matrix)."""
    import numpy as np

    from pinnersage_dagster import warehouse

    monkeypatch.setattr(warehouse, "PIN_WRITE_ROWS", 64)
    rng = np.random.default_rng(1)
    ids = np.arange(300, dtype=np.int64) * 7 - 100
    if shuffled:
        ids = rng.permutation(ids)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    accepted = pd.DataFrame(
        {"pin_id": ids, "quality": rng.uniform(0, 1, 300), "created_at": pd.Timestamp("2026-01-01")}
    )
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_tables(conn)
    warehouse.write_pins(conn, accepted, x)
    stored = conn.execute("SELECT pin_id, embedding, quality FROM pins").fetchnumpy()  # physical order
    order = np.argsort(ids)
    assert stored["pin_id"].tolist() == ids[order].tolist()
    np.testing.assert_array_equal(np.vstack(stored["embedding"]), x[order])
    np.testing.assert_array_equal(stored["quality"], accepted["quality"].to_numpy()[order])


def test_an_empty_catalog_is_written_as_an_empty_table(tmp_path):
    import numpy as np

    from pinnersage_dagster.warehouse import write_pins

    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_tables(conn)
    empty = pd.DataFrame({"pin_id": np.empty(0, np.int64), "quality": np.empty(0), "created_at": pd.to_datetime([])})
    write_pins(conn, empty, np.empty((0, 8), np.float32))
    assert conn.execute("SELECT count(*) FROM pins").fetchall()[0][0] == 0


@pytest.mark.parametrize(("configured", "during"), [("1GB", "244.1 MiB"), ("100MB", "95.3 MiB"), ("-1", "16383.9 PiB")])
def test_the_catalog_write_runs_in_a_small_buffer_pool_and_restores_the_operators(
    tmp_path, monkeypatch, configured, during
):
    """DuckDB caches the blocks it writes up to its memory limit: the catalog write lowers the
    limit (never raises it) and gives the operator's back, also when the write fails. No limit
    ('-1') shows as a size DuckDB cannot read back, so it is left as it is."""
    import numpy as np

    from pinnersage_dagster import warehouse

    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    conn.execute(f"SET memory_limit = '{configured}'")
    ensure_tables(conn)

    def limit() -> float | None:
        return warehouse.duckdb_size_bytes(conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])

    before = limit() or 0.0
    seen = []
    insert = warehouse._insert

    def spy(conn, *args):
        seen.append(conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
        insert(conn, *args)

    monkeypatch.setattr(warehouse, "_insert", spy)
    accepted = pd.DataFrame({"pin_id": np.arange(5), "quality": 0.5, "created_at": pd.Timestamp("2026-01-01")})
    warehouse.write_pins(conn, accepted, np.ones((5, 4), np.float32))
    assert seen == [during]
    assert (limit() or 0.0) == pytest.approx(before, rel=1e-3)
    with pytest.raises(ValueError):
        warehouse.write_pins(conn, accepted, np.ones((4, 4), np.float32))  # misaligned: the insert fails
    assert (limit() or 0.0) == pytest.approx(before, rel=1e-3)


def test_embeddings_stream_into_place_in_any_order_and_a_changed_catalog_fails(tmp_path):
    """fill_embeddings takes rows in DuckDB's scan order (no ORDER BY) and scatters each chunk to
    the row of its pin; a pin missing, unplanned or returned twice is a catalog that changed."""
    from pinnersage_dagster.warehouse import fill_embeddings

    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(10_000, size=500, replace=False)).astype(np.int64)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    order = rng.permutation(500)  # stored out of id order, so the scan is too
    conn.register("src", pd.DataFrame({"pin_id": ids[order], "embedding": list(x[order])}))
    conn.execute("CREATE TABLE pins AS SELECT pin_id, embedding::FLOAT[8] AS embedding FROM src")
    for chunk in (7, 64, 1_000):
        out = np.full_like(x, np.nan)
        fill_embeddings(conn, "SELECT pin_id, embedding FROM pins", [], ids, out, chunk_rows=chunk)
        assert np.array_equal(out, x)
    # a sorted scan is copied run by run: the same result
    out = np.full_like(x, np.nan)
    fill_embeddings(conn, "SELECT pin_id, embedding FROM pins ORDER BY pin_id", [], ids, out, chunk_rows=50)
    assert np.array_equal(out, x)

    def fails(sql: str, planned: np.ndarray) -> None:
        with pytest.raises(RuntimeError, match="catalog changed"):
            fill_embeddings(conn, sql, [], planned, np.empty((len(planned), 8), np.float32), chunk_rows=64)

    fails("SELECT pin_id, embedding FROM pins", ids[1:])  # a row for a pin not planned
    without = f"SELECT pin_id, embedding FROM pins WHERE pin_id != {ids[3]}"
    fails(without, ids)  # a pin without a row
    # as many rows as pins, but one pin twice and one never
    fails(f"{without} UNION ALL SELECT pin_id, embedding FROM pins WHERE pin_id = {ids[5]}", ids)
    fails("SELECT pin_id, embedding FROM pins", np.empty(0, np.int64))

    # by ids: a subset of the catalog, in any order of the scan; a planned pin the catalog lacks fails
    from pinnersage_dagster.warehouse import fill_embeddings_of

    some = np.sort(rng.choice(ids, size=120, replace=False))
    out = np.full((len(some), 8), np.nan, np.float32)
    fill_embeddings_of(conn, some, out, chunk_rows=16)
    assert np.array_equal(out, x[np.searchsorted(ids, some)])
    with pytest.raises(RuntimeError, match="catalog changed"):
        fill_embeddings_of(conn, np.sort(np.r_[some, 10_001]), np.empty((121, 8), np.float32), chunk_rows=16)
    # the ids' view is gone afterwards, even after a failure
    assert not conn.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'wanted_pin_ids'").fetchall()[0][0]
