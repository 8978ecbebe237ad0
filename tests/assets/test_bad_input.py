"""The bad-input catalogue (docs/reliability.md, 'Bad input'): every kind the pipeline meets, through the real
assets on your-own-data files. Row-level faults are quarantined with a reason and the accounting
identity (rows read = accepted + quarantined) holds in the asset's metadata; file-level faults fail
the run with a message naming the file; odd-but-valid inputs give a defined result."""

from datetime import datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.core.contract import validate_actions
from pinnersage_dagster.readers import day_bounds

from ..support import GOOD_PINS, OWN_DAY, OWN_DIM, World, action_lines, failure_message, metadata_of, pin_frame

DAY, DIM = OWN_DAY, OWN_DIM
ROW = "7,3,click,2026-03-03T10:00:00Z"  # a valid action line


@pytest.fixture
def world(tmp_path) -> World:
    w = World(tmp_path)
    assert w.run(["pins"], partition=None).success
    return w


metadata = metadata_of


# --- row-level faults in actions: quarantined with a reason, the identity holds -------------------

ACTION_FAULTS = {
    "null_user_id": ",3,click,2026-03-03T10:00:00Z",
    "null_pin_id": "7,,click,2026-03-03T10:00:00Z",
    "invalid_user_id": "seven,3,click,2026-03-03T10:00:00Z",  # wrong type
    "invalid_pin_id": "7,3.5,click,2026-03-03T10:00:00Z",  # wrong type
    "invalid_action": "7,3,like,2026-03-03T10:00:00Z",
    "null_ts": "7,3,click,",
    "unparseable_ts": "7,3,click,last tuesday",
    "ts_outside_partition": "7,3,click,2026-03-01T10:00:00Z",
    "unknown_pin_id": "7,99999,click,2026-03-03T10:00:00Z",
    "duplicate_event": ROW,  # the same event as the valid line before it
}


@pytest.mark.parametrize("reason", list(ACTION_FAULTS))
def test_a_bad_action_row_is_quarantined_with_its_reason(world, reason):
    good = action_lines()
    world.write_actions(DAY, [*good, ROW, ACTION_FAULTS[reason]])
    result = world.run(["raw_actions"])
    meta = metadata(result, "raw_actions")
    assert meta["rows_read"] == len(good) + 2
    assert meta["dagster/row_count"] == len(good) + 1 and meta["rows_quarantined"] == 1
    assert meta["rows_read"] == meta["dagster/row_count"] + meta["rows_quarantined"]
    assert meta["quarantine_reasons"] == {reason: 1}
    (row,) = world.query("SELECT reason, row_number FROM raw_actions_quarantine WHERE partition_date = ?", [DAY])
    assert row == (reason, len(good) + 2)  # the file's data row, counted from 1


def test_an_event_in_the_future_is_quarantined():
    # a daily partition is only run once its day is over; the rule guards a clock-skewed producer
    start, end = day_bounds(DAY)
    rows = pd.DataFrame(
        {
            "source": "f.csv",
            "row_number": [1, 2],
            "user_id": pd.array([1, 1], dtype="Int64"),
            "pin_id": pd.array([3, 3], dtype="Int64"),
            "action": ["click", "click"],
            "ts": pd.to_datetime(["2026-03-03 09:00", "2026-03-03 11:00"]),
            "raw_user_id": ["1", "1"],
            "raw_pin_id": ["3", "3"],
            "raw_action": ["click", "click"],
            "raw_ts": ["a", "b"],
        }
    )
    result = validate_actions(
        rows, day_start=start, day_end=end, now=pd.Timestamp("2026-03-03 10:00"), known_pin_ids=np.array([3])
    )
    assert result.reasons == {"ts_in_future": 1} and len(result.accepted) == 1


# --- row-level faults in pins --------------------------------------------------------------------


def _pin(pin_id, embedding, quality=0.9, created_at="2026-01-01T00:00:00Z") -> dict:
    return {"pin_id": pin_id, "embedding": embedding, "quality": quality, "created_at": created_at}


PIN_FAULTS = {
    "null_pin_id": _pin(None, [1.0] * DIM),
    "invalid_pin_id": _pin("pin-41", [1.0] * DIM),
    "null_embedding": _pin("41", None),
    "wrong_dimension": _pin("41", [1.0] * (DIM + 1)),
    "non_finite_embedding": _pin("41", [float("nan")] + [1.0] * (DIM - 1)),
    "zero_norm_embedding": _pin("41", [0.0] * DIM),
    "invalid_quality": _pin("41", [1.0] * DIM, quality="high"),
    "unparseable_created_at": _pin("41", [1.0] * DIM, created_at="soon"),
    "duplicate_pin_id": _pin("1", [1.0] * DIM),
}


@pytest.mark.parametrize("reason", [*PIN_FAULTS, "infinite_embedding", "quality_out_of_range"])
def test_a_bad_pin_row_is_quarantined_with_its_reason(world, reason):
    bad = {
        "infinite_embedding": _pin("41", [float("inf")] + [1.0] * (DIM - 1)),
        "quality_out_of_range": _pin("41", [1.0] * DIM, quality=1.5),
    }.get(reason) or PIN_FAULTS[reason]
    expected = {"infinite_embedding": "non_finite_embedding", "quality_out_of_range": "invalid_quality"}.get(
        reason, reason
    )
    good = pin_frame().astype({"pin_id": str, "quality": str, "created_at": str})
    good["embedding"] = good["embedding"].map(lambda e: "[" + ", ".join(map(str, e)) + "]")
    row = {
        k: (None if v is None else ("[" + ", ".join(map(str, v)) + "]" if isinstance(v, list) else str(v)))
        for k, v in bad.items()
    }
    path = world.root / "pins.csv"
    pd.concat([good, pd.DataFrame([row])], ignore_index=True).to_csv(path, index=False)
    world.use(pins=path)
    meta = metadata(world.run(["pins"], partition=None), "pins")
    assert meta["rows_read"] == GOOD_PINS + 1
    assert meta["rows_read"] == meta["dagster/row_count"] + meta["rows_quarantined"]
    assert meta["quarantine_reasons"] == {expected: 1}
    assert world.query("SELECT reason, row_number FROM pins_quarantine") == [(expected, GOOD_PINS + 1)]


# --- file-level faults: the run fails and says which file ---------------------------------------


def test_a_missing_column_fails_naming_the_file_and_column(world):
    path = world.write_actions(DAY, ["7,3,2026-03-03T10:00:00Z"], header="user_id,pin_id,ts")
    message = failure_message(world.run(["raw_actions"], raise_on_error=False))
    assert str(path) in message and "['action']" in message
    bad_pins = world.root / "no_id.csv"
    bad_pins.write_text("pin,quality\n1,0.5\n")
    world.use(pins=bad_pins)
    message = failure_message(world.run(["pins"], partition=None, raise_on_error=False))
    assert "no_id.csv" in message and "['pin_id']" in message
    # without an embedding column, embeddings are learned: the catalog says what it waits for
    no_embedding = world.root / "no_embedding.csv"
    no_embedding.write_text("pin_id,quality\n1,0.5\n")
    world.use(pins=no_embedding)
    message = failure_message(world.run(["pins"], partition=None, raise_on_error=False))
    assert "the source gives no embeddings" in message and "pin_embeddings" in message


def test_extra_columns_are_ignored(world):
    world.write_actions(
        DAY, [line + ",web,extra" for line in action_lines()], header="user_id,pin_id,action,ts,surface,note"
    )
    meta = metadata(world.run(["raw_actions"]), "raw_actions")
    assert meta["rows_read"] == meta["dagster/row_count"] == len(action_lines()) and meta["rows_quarantined"] == 0


@pytest.mark.parametrize("kind", ["empty_csv", "empty_parquet", "corrupt_parquet", "corrupt_csv", "missing_file"])
def test_an_empty_corrupt_or_missing_file_fails_naming_it(world, kind):
    target = world.root / "actions" / f"{DAY}.{'parquet' if 'parquet' in kind else 'csv'}"
    (world.root / "actions" / f"{DAY}.csv").unlink()
    content = {
        "empty_csv": b"",
        "empty_parquet": b"",
        "corrupt_parquet": b"PAR1\x00\x01garbage",
        "corrupt_csv": b"\x00\xff\xfe\x00binary\x00\n\x01\x02",
    }.get(kind)
    if content is not None:
        target.write_bytes(content)
    world.use(actions=str(world.root / "actions" / ("{date}" + target.suffix)))
    message = failure_message(world.run(["raw_actions"], raise_on_error=False))
    assert target.name in message


# --- empty partitions and odd-but-valid users -----------------------------------------------------


def test_an_empty_day_and_an_empty_window_run_to_empty_partitions(world):
    for offset in range(3):
        world.write_actions(DAY - timedelta(days=offset), [])  # a header and no rows
    result = world.run(["raw_actions"])
    assert metadata(result, "raw_actions")["rows_read"] == 0
    result = world.run(["candidate_pool", "action_windows", "user_clusters", "user_medoids", "pin_index"])
    assert result.success
    assert metadata(result, "user_medoids")["dagster/row_count"] == 0
    assert world.query("SELECT count(*) FROM user_clusters WHERE partition_date = ?", [DAY]) == [(0,)]


def _window(world, lines: list[str]) -> dg.ExecuteInProcessResult:
    world.write_actions(DAY, lines)
    for offset in (1, 2):
        world.write_actions(DAY - timedelta(days=offset), [])
    for offset in range(3):
        assert world.run(["raw_actions"], partition=DAY - timedelta(days=offset)).success
    return world.run(["action_windows", "user_clusters", "user_medoids"])


def test_a_user_with_a_single_action_gets_one_singleton_interest(world):
    _window(world, ["5,9,repin,2026-03-03T12:00:00Z"])
    ((kind, pins),) = world.query("SELECT kind, pin_ids FROM user_clusters WHERE user_id = 5")
    assert kind == "singleton" and pins == [9]
    ((medoid, importance),) = world.query("SELECT medoid_pin_id, importance FROM user_medoids WHERE user_id = 5")
    assert medoid == 9 and importance == pytest.approx(np.exp(-0.01 * 0.5))


def test_thousands_of_actions_on_one_pin_are_one_capped_interest(world):
    start = datetime(2026, 3, 3)
    lines = [f"5,9,click,{(start + timedelta(seconds=20 * k)).isoformat()}Z" for k in range(3_000)]
    result = _window(world, lines)
    meta = metadata(result, "action_windows")
    assert meta["users_capped"] == 1 and meta["actions_dropped_by_cap"] == 2_000
    ((size, n_actions),) = world.query("SELECT size, n_actions FROM user_medoids WHERE user_id = 5")
    assert size == 1 and n_actions == 1_000


def test_thousands_of_identical_pins_are_one_ward_cluster(world):
    base = pin_frame().iloc[0]["embedding"]
    pins = pd.concat(
        [
            pin_frame(),
            pd.DataFrame(
                {
                    "pin_id": np.arange(1_000, 3_000),
                    "embedding": [base] * 2_000,
                    "quality": 0.9,
                    "created_at": pd.Timestamp("2026-01-01", tz="UTC"),
                }
            ),
        ],
        ignore_index=True,
    )
    pins.to_parquet(world.pins_path)
    assert world.run(["pins"], partition=None).success
    lines = [f"5,{1_000 + k},repin,2026-03-03T{k % 24:02d}:{k % 60:02d}:{k % 59:02d}Z" for k in range(2_000)]
    _window(world, lines)
    rows = world.query("SELECT kind, n_pins FROM user_clusters WHERE user_id = 5")
    assert rows == [("ward", 1_000)]  # capped to the 1,000 most recent, merged at zero cost
    ((medoid,),) = world.query("SELECT medoid_pin_id FROM user_medoids WHERE user_id = 5")
    assert 1_000 <= medoid < 3_000
    result = world.run(["candidate_pool"], partition=None)
    assert metadata(result, "candidate_pool")["excluded_near_duplicate"] >= 1_999  # one kept of the copies
