"""Bringing your own interaction log: one file or folder over any span, embeddings learned from
the log, the CLI's tuning flags (the walk-through of docs/own-data.md runs in
tests/deployment/test_readme.py)."""

from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.action_log import ActionLog, Span
from pinnersage_dagster.assets import all_assets
from pinnersage_dagster.cli import main as cli_main
from pinnersage_dagster.core.contract import ContractError
from pinnersage_dagster.core.embeddings import TooFewPins, learn_embeddings
from pinnersage_dagster.partitions import daily_partitions
from pinnersage_dagster.resources import FileSource

from ..support import make_resources, materializations, range_tags

FIRST = daily_partitions.start.date()
NEWEST = daily_partitions.get_last_partition_window().start.date()
NOW = pd.Timestamp.now(tz="UTC").tz_localize(None)
D1, D2 = date(2026, 3, 1), date(2026, 3, 2)

# one log, every accepted way of writing ts, and the rows no day would otherwise see
LOG = """user_id,item_id,action,ts
1,10,click,2026-03-01T08:00:00Z
1,11,repin,1772438400
2,10,click,1772438400000
2,11,click,2026-03-02T23:30:00+01:00
3,12,click,2026-03-02 10:00:00
3,12,click,2025-12-31T23:00:00Z
4,13,click,garbage
4,13,click,2099-01-01T00:00:00Z
u5,13,click,2026-03-01T09:00:00Z
5.0,13,click,2026-03-01T09:30:00Z
"""


def span(*days: date) -> Span:
    return Span(days=list(days), first_partition=FIRST, newest_partition=NEWEST, now=NOW)


def rows_by_day(log: ActionLog, *days: date) -> dict[date, list[int]]:
    return {day: frame["row_number"].tolist() for day, frame in log.read(span(*days))}


def write_log(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    return path


def test_a_spanning_log_gives_each_day_its_rows_by_ts(tmp_path):
    log = ActionLog(str(write_log(tmp_path)), (("pin_id", "item_id"),))
    got = rows_by_day(log, FIRST, D1, D2, date(2026, 3, 3), NEWEST)
    # epoch seconds and milliseconds, an offset that moves the row to the next UTC day, naive UTC
    assert got[D1] == [1, 9, 10]
    assert got[D2] == [2, 3, 4, 5]  # 2026-03-02T23:30+01:00 is 22:30 UTC, still March 2
    assert got[date(2026, 3, 3)] == []
    assert got[FIRST] == [6, 7]  # before the first partition, and a ts that does not parse
    assert got[NEWEST] == [8]  # in the future
    assert log.newest_day(NOW) == D2


def test_the_offset_row_lands_on_its_utc_day(tmp_path):
    frames = dict(ActionLog(str(write_log(tmp_path)), (("pin_id", "item_id"),)).read(span(D2)))
    row = frames[D2].set_index("row_number").loc[4]
    assert row["ts"] == pd.Timestamp("2026-03-02 22:30:00")


def test_parquet_files_and_hive_folders_read_like_the_csv(tmp_path):
    frame = pd.read_csv(write_log(tmp_path), dtype=str)
    folder = tmp_path / "hive"
    # a text key in the folder names: ts decides the day, not the folder
    for key, part in (("monday", frame.iloc[:5]), ("2026-03-02", frame.iloc[5:])):
        (folder / f"day={key}").mkdir(parents=True)
        part.to_parquet(folder / f"day={key}" / "part-0.parquet", index=False)
    days = (FIRST, D1, D2, NEWEST)
    csv = {
        d: f.drop(columns="source").reset_index(drop=True)
        for d, f in ActionLog(str(tmp_path / "log.csv"), (("pin_id", "item_id"),)).read(span(*days))
    }
    hive = {d: f for d, f in ActionLog(str(folder), (("pin_id", "item_id"),)).read(span(*days))}
    for day in days:
        assert sorted(hive[day]["raw_ts"]) == sorted(csv[day]["raw_ts"]), day
    typed = tmp_path / "typed.parquet"  # a native timestamp column: the day filter is pushed into the scan
    pd.DataFrame(
        {
            "user_id": [1, 2],
            "pin_id": [10, 11],
            "action": ["click", "repin"],
            "ts": pd.to_datetime(["2026-03-01 08:00", "2026-03-02 08:00"]),
        }
    ).to_parquet(typed)
    assert {d: len(f) for d, f in ActionLog(str(typed)).read(span(D1, D2))} == {D1: 1, D2: 1}


def test_a_log_that_mixes_formats_or_misses_a_column_fails_naming_it(tmp_path):
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.csv").write_text(LOG)
    pd.DataFrame({"user_id": [1]}).to_parquet(tmp_path / "mixed" / "b.parquet")
    with pytest.raises(ContractError, match="mixes Parquet and CSV"):
        list(ActionLog(str(tmp_path / "mixed")).read(span(D1)))
    with pytest.raises(ContractError, match=r"log.csv: missing required column\(s\) \['pin_id'\]"):
        list(ActionLog(str(write_log(tmp_path))).read(span(D1)))  # item_id without the mapping


def own_log_resources(tmp_path: Path, actions: Path, pins: Path | None = None, **params) -> dict:
    resources = make_resources(tmp_path, embedding_dim=4, **params)
    resources["source"] = FileSource(
        actions_path=str(actions), actions_columns="pin_id=item_id", **({"pins_path": str(pins)} if pins else {})
    )
    return resources


def test_raw_actions_over_a_spanning_log_keeps_the_identity_and_empty_days(tmp_path):
    resources = own_log_resources(tmp_path, write_log(tmp_path))
    result = dg.materialize(
        all_assets, selection=["raw_actions"], resources=resources, tags=range_tags(D1, date(2026, 3, 4))
    )
    meta = materializations(result, "raw_actions")[0].metadata
    assert meta["rows_read"].value == meta["dagster/row_count"].value + meta["rows_quarantined"].value
    assert meta["empty_days"].value == 2  # March 3 and 4 have no rows: empty partitions, not a failure
    assert meta["quarantine_reasons"].value == {"invalid_user_id": 1}  # 'u5'; '5.0' is user 5
    for day in (FIRST, NEWEST):
        dg.materialize(all_assets, selection=["raw_actions"], resources=resources, partition_key=day.isoformat())
    with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
        reasons = dict(conn.execute("SELECT reason, count(*) FROM raw_actions_quarantine GROUP BY reason").fetchall())
        read = conn.execute("SELECT count(*) FROM raw_actions").fetchall()[0][0]
    assert reasons == {"invalid_user_id": 1, "ts_before_first_partition": 1, "unparseable_ts": 1, "ts_in_future": 1}
    assert read + sum(reasons.values()) == len(LOG.strip().splitlines()) - 1  # every row of the log, once


def test_learned_embeddings_are_deterministic_and_name_their_limits():
    rng = np.random.default_rng(3)
    users, pins = [], []
    for user in range(200):
        theme = user % 10
        for item in rng.choice(20, size=6, replace=False):
            users.append(user)
            pins.append(theme * 20 + item)
    users.append(999)
    pins.append(5000)  # acted on once
    first = learn_embeddings(np.array(users), np.array(pins), dim=8, min_users=2)
    again = learn_embeddings(np.array(users)[::-1], np.array(pins)[::-1], dim=8, min_users=2)
    assert np.array_equal(first.embedding, again.embedding) and np.array_equal(first.pin_id, again.pin_id)
    assert np.allclose(np.linalg.norm(first.embedding, axis=1), 1, atol=1e-5)
    assert first.excluded.set_index("pin_id").loc[5000, "reason"] == "too_few_users"
    theme = first.pin_id // 20
    cos = first.embedding @ first.embedding.T
    same = theme[:, None] == theme[None, :]
    assert cos[same].mean() > 0.8 > 0.2 > cos[~same].mean()  # pins of a theme end up together
    with pytest.raises(TooFewPins, match="needs at least 512 pins"):
        learn_embeddings(np.array(users), np.array(pins), dim=256, min_users=2)


def theme_log(path: Path, first: date, days: int, extra: list[str] = ()) -> Path:
    rng = np.random.default_rng(4)
    lines = ["user_id,item_id,action,ts"]
    for user in range(60):
        for k in range(12):
            day = first + timedelta(days=int(rng.integers(0, days)))
            lines.append(f"{user},{(user % 4) * 10 + int(rng.integers(0, 10))},click,{day}T{k:02d}:00:00Z")
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def test_pin_embeddings_learn_only_from_days_before_the_partition(tmp_path):
    day = date(2026, 3, 10)
    log = theme_log(
        tmp_path / "log.csv", date(2026, 3, 1), 9, extra=[f"{u},777,click,{day}T05:00:00Z" for u in range(5)]
    )  # a pin first seen on the partition's day
    resources = own_log_resources(tmp_path, log)
    dg.materialize(all_assets, selection=["raw_actions"], resources=resources, tags=range_tags(date(2026, 3, 1), day))
    result = dg.materialize(
        all_assets, selection=["pin_embeddings", "pins"], resources=resources, partition_key=day.isoformat()
    )
    meta = materializations(result, "pin_embeddings")[0].metadata
    assert meta["pins_covered"].value == 40 and meta["dimension"].value == 4
    assert "data:image/png;base64," in meta["spectrum"].value
    with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
        catalog = {r[0] for r in conn.execute("SELECT pin_id FROM pins").fetchall()}
        dim = conn.execute("SELECT len(embedding) FROM pins LIMIT 1").fetchall()[0][0]
    assert 777 not in catalog and len(catalog) == 40 and dim == 4
    pins_meta = materializations(result, "pins")[0].metadata
    assert "learned from the log before 2026-03-10" in pins_meta["embeddings"].value
    assert [c.name for c in pins_meta["dagster/column_schema"].value.columns] == [
        "pin_id",
        "embedding",
        "quality",
        "created_at",
    ]
    # the day's interests on learned embeddings, with the pictures the UI shows
    result = dg.materialize(
        all_assets,
        selection=["action_windows", "user_clusters", "user_medoids"],
        resources=resources,
        partition_key=day.isoformat(),
    )
    clusters = materializations(result, "user_clusters")[0].metadata
    medoids = materializations(result, "user_medoids")[0].metadata
    for meta, key in (
        (clusters, "clusters_per_user_plot"),
        (clusters, "example_user_map"),
        (medoids, "importance_plot"),
    ):
        assert meta[key].value.startswith("![") and "data:image/png;base64," in meta[key].value, key
    assert "medoid_pin_id" in [c.name for c in medoids["dagster/column_schema"].value.columns]


def test_a_pins_file_without_embeddings_takes_the_learned_ones(tmp_path):
    day = date(2026, 3, 10)
    log = theme_log(tmp_path / "log.csv", date(2026, 3, 1), 9)
    pins = tmp_path / "pins.csv"
    pins.write_text("pin_id,quality\n" + "".join(f"{p},0.9\n" for p in range(40)) + "555,0.5\n")
    resources = own_log_resources(tmp_path, log, pins)
    dg.materialize(all_assets, selection=["raw_actions"], resources=resources, tags=range_tags(date(2026, 3, 1), day))
    result = dg.materialize(
        all_assets, selection=["pin_embeddings", "pins"], resources=resources, partition_key=day.isoformat()
    )
    meta = materializations(result, "pins")[0].metadata
    assert meta["dagster/row_count"].value == 40 and meta["quarantine_reasons"].value == {"not_embedded": 1}
    with duckdb.connect(resources["duckdb"].database, read_only=True) as conn:
        assert conn.execute("SELECT min(quality), max(quality) FROM pins").fetchall() == [(0.9, 0.9)]


def test_too_small_a_log_fails_naming_the_minimum(tmp_path):
    day = date(2026, 3, 10)
    log = theme_log(tmp_path / "log.csv", date(2026, 3, 1), 9)
    resources = own_log_resources(tmp_path, log)
    resources["params"] = resources["params"].__class__(window_days=10, embedding_dim=64)
    dg.materialize(all_assets, selection=["raw_actions"], resources=resources, tags=range_tags(date(2026, 3, 1), day))
    result = dg.materialize(
        all_assets,
        selection=["pin_embeddings"],
        resources=resources,
        partition_key=day.isoformat(),
        raise_on_error=False,
    )
    assert not result.success
    message = str(result.get_step_failure_events()[0].event_specific_data.error)
    assert "needs at least 128 pins" in message and "the log has 40" in message


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["evaluate", "--alpha", "0"], "argument --alpha: must be > 0, got 0"),
        (["evaluate", "--decay-lambda", "-1"], "argument --decay-lambda: must be at least 0, got -1"),
        (["evaluate", "--horizon-days", "-3"], "argument --horizon-days: must be at least 0, got -3"),
        (["calibrate", "--min-train-actions", "0"], "argument --min-train-actions: must be at least 1, got 0"),
        (["calibrate", "--horizon-days", "3"], "apply to a held-out sweep: add --split-day"),
        (["evaluate", "--aplha", "1"], "unrecognized arguments: --aplha"),
        (["evaluate", "--search", "approximate"], "argument --search: invalid choice: 'approximate'"),
        (["serve", "--workers", "0"], "--workers: must be at least 1"),
    ],
)
def test_the_cli_refuses_bad_tuning_before_any_work(argv, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(argv)
    assert stop.value.code == 2 and expected in capsys.readouterr().err
