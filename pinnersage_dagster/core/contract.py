"""The data contract: which rows of actions and pins are accepted, and why the others are not.

Readers hand over typed columns (``NA`` where a value did not parse) next to the raw
text of each value (``raw_*``), so a row that fails is quarantined with the exact value
it had. Every row read ends up either accepted or quarantined with one reason (the
first rule it breaks, in the order below): rows read = accepted + quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ACTIONS = ("repin", "click")
ACTION_COLUMNS = ("user_id", "pin_id", "action", "ts")
PIN_COLUMNS = ("pin_id",)
OPTIONAL_PIN_COLUMNS = ("embedding", "quality", "created_at")  # without embeddings, they are learned

QUARANTINE_COLUMNS = ["source", "row_number", "reason", "detail"]


class ContractError(ValueError):
    """A whole input is unusable (missing file, missing column, unreadable content)."""


@dataclass(frozen=True)
class RawPins:
    """Pin rows as read: typed values (NA where unparseable) beside their raw text."""

    source: str | pd.Series  # the one file each row came from (or one name for all rows)
    row_number: np.ndarray
    pin_id: pd.Series  # Int64
    raw_pin_id: pd.Series
    embedding: pa.Array  # list<float>, null where absent or unparseable
    quality: pd.Series  # Float64
    raw_quality: pd.Series
    created_at: pd.Series  # datetime64 (tz-naive UTC)
    raw_created_at: pd.Series
    has_embeddings: bool = True  # False: the source gives none, ``pin_embeddings`` learns them
    malformed: pd.Series | None = None  # a CSV line that could not be parsed: its error and text, else NA

    def __len__(self) -> int:
        return len(self.pin_id)

    @property
    def files(self) -> str:
        """The files the rows came from, named once each."""
        if isinstance(self.source, str):
            return self.source
        return ", ".join(sorted(set(self.source))) if len(self.source) else "(no rows)"


@dataclass(frozen=True)
class Validated:
    accepted: pd.DataFrame
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS + the raw values of the row

    @property
    def reasons(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.quarantine["reason"].value_counts().sort_index().items()}


def require_columns(columns: list[str], required: tuple[str, ...], source: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise ContractError(f"{source}: missing required column(s) {missing}; found {list(columns)}")


def _assign_reason(reason: pd.Series, mask: pd.Series | np.ndarray, label: str) -> None:
    reason[np.asarray(mask) & reason.isna().to_numpy()] = label


def validate_actions(
    rows: pd.DataFrame,
    *,
    day_start: pd.Timestamp | pd.Series,
    day_end: pd.Timestamp | pd.Series,
    now: pd.Timestamp,
    known_pin_ids: np.ndarray | None,
    first_start: pd.Timestamp | None = None,
    pins_created_at: np.ndarray | None = None,
) -> Validated:
    """Validate one day's action rows.

    ``rows``: ``user_id, pin_id`` (Int64), ``action`` (string), ``ts`` (tz-naive UTC),
    ``raw_user_id, raw_pin_id, raw_action, raw_ts`` (text or NA), ``source, row_number``.
    Accepted rows have ts in [day_start, day_end) (one day for all rows, or a day per row:
    a late service event belongs to the day of its log), not after ``now``, a pin in
    ``known_pin_ids`` (any pin when None), and are not an exact repeat of an earlier row.
    Rows before ``first_start`` (the deployment's first partition) are ``ts_before_first_partition``.
    ``pins_created_at`` (aligned with a sorted ``known_pin_ids``, NaT = always existed) makes an
    action before its pin's creation ``pin_created_after_action``. A row with a ``malformed``
    text (a CSV line that could not be parsed) is ``malformed_csv_line``.
    """
    reason = pd.Series(pd.NA, index=rows.index, dtype="object")
    detail = pd.Series("", index=rows.index, dtype="object")
    if "malformed" in rows:
        broken = rows["malformed"].notna().to_numpy()
        _assign_reason(reason, broken, "malformed_csv_line")
        detail[broken] = rows["malformed"][broken].astype(str)
    for column in ("user_id", "pin_id"):
        _assign_reason(reason, rows[f"raw_{column}"].isna(), f"null_{column}")
        _assign_reason(reason, rows[column].isna(), f"invalid_{column}")
    _assign_reason(reason, ~rows["action"].isin(ACTIONS).fillna(False), "invalid_action")
    _assign_reason(reason, rows["raw_ts"].isna(), "null_ts")
    _assign_reason(reason, rows["ts"].isna(), "unparseable_ts")
    ts = rows["ts"]
    if first_start is not None:
        _assign_reason(reason, (ts < first_start).fillna(False), "ts_before_first_partition")
    _assign_reason(reason, (ts > now).fillna(False), "ts_in_future")
    _assign_reason(reason, ((ts < day_start) | (ts >= day_end)).fillna(False), "ts_outside_partition")
    if known_pin_ids is not None:
        _assign_reason(reason, ~rows["pin_id"].isin(known_pin_ids).fillna(False), "unknown_pin_id")
        if pins_created_at is not None and len(known_pin_ids):
            pin = rows["pin_id"].fillna(-1).to_numpy(np.int64)
            at = np.clip(np.searchsorted(known_pin_ids, pin), 0, len(known_pin_ids) - 1)
            created = pins_created_at[at]
            later = (known_pin_ids[at] == pin) & ~pd.isna(created) & (created > ts.to_numpy())
            _assign_reason(reason, later, "pin_created_after_action")
    candidate = reason.isna()
    repeated = rows.duplicated(subset=["user_id", "pin_id", "action", "ts"], keep="first") & candidate
    _assign_reason(reason, repeated, "duplicate_event")

    ok = reason.isna().to_numpy()
    accepted = pd.DataFrame(
        {
            "user_id": rows["user_id"][ok].astype("int64"),
            "pin_id": rows["pin_id"][ok].astype("int64"),
            "action": rows["action"][ok].astype(str),
            "ts": rows["ts"][ok],
        }
    ).reset_index(drop=True)
    quarantine = pd.DataFrame(
        {
            "source": rows["source"][~ok],
            "row_number": rows["row_number"][~ok].astype("int64"),
            "reason": reason[~ok].astype(str),
            "detail": detail[~ok],
            "user_id": rows["raw_user_id"][~ok],
            "pin_id": rows["raw_pin_id"][~ok],
            "action": rows["raw_action"][~ok],
            "ts": rows["raw_ts"][~ok],
        }
    ).reset_index(drop=True)
    return Validated(accepted, quarantine)


VALIDATE_ROWS = 65_536


def validate_pins(raw: RawPins, *, expected_dim: int | None) -> tuple[Validated, np.ndarray]:
    """Validate pin rows; returns (accepted ``pin_id, quality, created_at``, unit embeddings).

    ``embedding`` is a list array (null where absent or unparseable). The dimension is
    ``expected_dim`` if given, else the most common length. A missing quality means 1.0;
    a missing ``created_at`` means "always existed".
    """
    pin_id, raw_pin_id, embedding = (
        raw.pin_id.reset_index(drop=True),
        raw.raw_pin_id.reset_index(drop=True),
        raw.embedding,
    )
    quality, raw_quality = raw.quality.reset_index(drop=True), raw.raw_quality.reset_index(drop=True)
    created_at, raw_created_at = raw.created_at.reset_index(drop=True), raw.raw_created_at.reset_index(drop=True)
    source = raw.source.reset_index(drop=True) if isinstance(raw.source, pd.Series) else raw.source
    row_number = raw.row_number
    n = len(pin_id)
    reason = pd.Series(pd.NA, index=pin_id.index, dtype="object")
    detail = pd.Series("", index=pin_id.index, dtype="object")
    if raw.malformed is not None:
        broken = raw.malformed.reset_index(drop=True).notna().to_numpy()
        _assign_reason(reason, broken, "malformed_csv_line")
        detail[broken] = raw.malformed.reset_index(drop=True)[broken].astype(str)
    _assign_reason(reason, raw_pin_id.isna(), "null_pin_id")
    _assign_reason(reason, pin_id.isna(), "invalid_pin_id")

    lengths = pc.list_value_length(embedding).to_numpy(zero_copy_only=False)
    lengths = np.where(pd.isna(lengths), -1, lengths).astype(np.int64)
    _assign_reason(reason, lengths < 0, "null_embedding")
    dim = expected_dim
    if dim is None:
        present = lengths[lengths > 0]
        dim = int(np.bincount(present).argmax()) if present.size else 0
    wrong = (lengths >= 0) & (lengths != dim)
    detail[wrong & reason.isna().to_numpy()] = [
        f"length {k}, expected {dim}" for k in lengths[wrong & reason.isna().to_numpy()]
    ]
    _assign_reason(reason, wrong, "wrong_dimension")

    # float32 throughout, one working matrix: at 1M x 256 every extra copy is 1 GiB
    matrix = np.zeros((n, dim), dtype=np.float32)
    shaped = lengths == dim
    if shaped.any() and dim > 0:
        # every row shaped (the usual case): no filtered copy of the column
        rows = slice(None) if shaped.all() else shaped
        values = pc.list_flatten(embedding if shaped.all() else embedding.filter(pa.array(shaped))).cast(pa.float32())
        matrix[rows] = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        del values
    # by slices: a whole-matrix temporary (isfinite's mask, norm's squares) is another GiB at 1M pins
    finite, norm = np.empty(n, dtype=bool), np.empty(n, dtype=matrix.dtype)
    for start in range(0, n, VALIDATE_ROWS):
        part = matrix[start : start + VALIDATE_ROWS]
        finite[start : start + len(part)] = np.isfinite(part).all(axis=1)
        part[~finite[start : start + len(part)]] = 0.0
        norm[start : start + len(part)] = np.linalg.norm(part, axis=1)  # row by row: the same values
    _assign_reason(reason, ~finite, "non_finite_embedding")
    _assign_reason(reason, norm <= 1e-12, "zero_norm_embedding")

    quality_value = quality.astype("Float64").fillna(1.0)
    _assign_reason(reason, raw_quality.notna() & quality.isna(), "invalid_quality")
    _assign_reason(reason, ((quality_value < 0) | (quality_value > 1)).fillna(True), "invalid_quality")
    _assign_reason(reason, raw_created_at.notna() & created_at.isna(), "unparseable_created_at")
    candidate = reason.isna().to_numpy()
    repeated = np.zeros(n, dtype=bool)  # among valid rows only: an invalid row never shadows a good one
    repeated[candidate] = pin_id[candidate].duplicated(keep="first").to_numpy()
    _assign_reason(reason, repeated, "duplicate_pin_id")

    ok = reason.isna().to_numpy()
    accepted = pd.DataFrame(
        {
            "pin_id": pin_id[ok].astype("int64").to_numpy(),
            "quality": quality_value[ok].astype("float64").to_numpy(),
            "created_at": created_at[ok].to_numpy(),
        }
    )
    unit = matrix[ok] if not ok.all() else matrix
    unit /= norm[ok, None]
    quarantine = pd.DataFrame(
        {
            "source": source[~ok].to_numpy() if isinstance(source, pd.Series) else source,
            "row_number": np.asarray(row_number)[~ok].astype(np.int64),
            "reason": reason[~ok].astype(str).to_numpy(),
            "detail": detail[~ok].to_numpy(),
            "pin_id": raw_pin_id[~ok].to_numpy(),
            "quality": raw_quality[~ok].astype("string").to_numpy(),
            "created_at": raw_created_at[~ok].astype("string").to_numpy(),
        }
    )
    return Validated(accepted, quarantine), unit
