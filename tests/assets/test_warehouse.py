"""Partition writes replace exactly their window, and a failed write leaves the old partition."""

from datetime import date

import duckdb
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
