"""The data contract: every bad row is quarantined with its reason, every unreadable file is named."""

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.core.contract import ContractError, validate_actions, validate_pins
from pinnersage_dagster.readers import day_bounds, partition_file, read_action_files, read_pin_files

EXAMPLES = Path(__file__).resolve().parents[2] / "data" / "examples"
DAY = date(2026, 3, 1)


def validated_example_actions():
    rows = read_action_files(partition_file(str(EXAMPLES / "actions" / "{date}.csv"), DAY))
    start, end = day_bounds(DAY)
    return rows, validate_actions(
        rows, day_start=start, day_end=end, now=pd.Timestamp("2026-03-02"), known_pin_ids=np.array([1, 2, 3, 4])
    )


def test_example_actions_are_accepted_or_quarantined_with_reasons():
    rows, result = validated_example_actions()
    assert len(rows) == len(result.accepted) + len(result.quarantine)  # nothing is lost
    assert len(result.accepted) == 5
    assert result.reasons == {
        "duplicate_event": 1,
        "invalid_action": 1,
        "null_user_id": 1,
        "ts_outside_partition": 1,
        "unknown_pin_id": 1,
        "unparseable_ts": 1,
    }
    bad = result.quarantine.set_index("reason")
    assert bad.loc["unparseable_ts", "ts"] == "yesterday"  # the raw value is kept
    assert bad.loc["unknown_pin_id", "row_number"] == 7
    assert result.accepted.ts.dt.tz is None  # every accepted timestamp is UTC, tz-naive


def test_future_timestamps_and_invalid_ids_are_quarantined():
    start, end = day_bounds(DAY)
    rows = pd.DataFrame(
        {
            "source": "t",
            "row_number": [1, 2, 3],
            "user_id": pd.array([1, pd.NA, 1], dtype="Int64"),
            "pin_id": pd.array([1, 1, 1], dtype="Int64"),
            "action": ["click", "click", "repin"],
            "ts": pd.to_datetime(["2026-03-01 23:00", "2026-03-01 01:00", "2026-03-01 02:00"]),
            "raw_user_id": ["1", "1.5", "1"],
            "raw_pin_id": ["1", "1", "1"],
            "raw_action": ["click", "click", "repin"],
            "raw_ts": ["a", "b", "c"],
        }
    )
    result = validate_actions(
        rows, day_start=start, day_end=end, now=pd.Timestamp("2026-03-01 12:00"), known_pin_ids=np.array([1])
    )
    assert result.quarantine.reason.tolist() == ["ts_in_future", "invalid_user_id"]
    assert len(result.accepted) == 1


def test_example_pins_quarantine_zero_norm_and_wrong_dimension():
    raw = read_pin_files(str(EXAMPLES / "pins.csv"))
    result, unit = validate_pins(raw, expected_dim=None)
    assert result.accepted.pin_id.tolist() == [1, 2, 3, 4]
    assert result.reasons == {"wrong_dimension": 1, "zero_norm_embedding": 1}
    assert np.allclose(np.linalg.norm(unit, axis=1), 1)
    assert result.accepted.quality.tolist()[3] == 1.0  # a missing quality means 1.0
    assert pd.isna(result.accepted.created_at.iloc[3])


def test_pins_with_nan_duplicate_ids_and_bad_quality(tmp_path):
    path = tmp_path / "pins.parquet"
    pd.DataFrame(
        {
            "pin_id": [1, 1, 2, 3, 4],
            "embedding": [[1.0, 0.0], [0.0, 1.0], [np.nan, 1.0], [1.0, 1.0], None],
            "quality": [0.5, 0.5, 0.5, 1.5, 0.5],
        }
    ).to_parquet(path)
    result, _ = validate_pins(read_pin_files(str(path)), expected_dim=2)
    assert result.accepted.pin_id.tolist() == [1]
    assert result.reasons == {
        "duplicate_pin_id": 1,
        "invalid_quality": 1,
        "non_finite_embedding": 1,
        "null_embedding": 1,
    }


def test_unreadable_inputs_fail_with_a_message_naming_the_file(tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(ContractError, match=r"nope\.parquet: no such file"):
        read_action_files(str(missing))
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ContractError, match=r"corrupt\.parquet: cannot be read"):
        read_action_files(str(corrupt))
    no_column = tmp_path / "actions.csv"
    no_column.write_text("user_id,pin_id,ts\n1,2,2026-03-01\n")
    with pytest.raises(ContractError, match=r"actions.csv: missing required column\(s\) \['action'\]"):
        read_action_files(str(no_column))
    with pytest.raises(ContractError, match="must contain"):
        partition_file("data/actions.parquet", DAY)
