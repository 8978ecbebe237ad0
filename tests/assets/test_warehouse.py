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
