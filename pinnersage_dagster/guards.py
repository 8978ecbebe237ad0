"""Guards: what every artifact was built from, and whether its inputs are plausible, checked
before anything is replaced or published.

**Lineage.**
Each asset records one ``lineage`` row per partition it writes (``partition_date`` NULL for the
unpartitioned catalog and pool), in the same transaction as its rows: its ``version`` (a hash
of its content, or the build id of a file artifact) and the versions of the inputs it read.
A partition with no lineage row was never materialized; one with ``rows = 0`` was materialized
and is empty. Downstream assets ``require`` what they read and compare versions, so a missing
or stale input fails the run with a message that names it and what to materialize, instead of
publishing something its inputs do not support. The versions also go to Dagster as data
versions, so the UI marks what a re-run made stale.

**Source** (``provenance``): the warehouse records the source it was built from the first
time an asset that reads the source writes it, and each folder records the warehouse's source
when its first artifact is published; another source is refused before anything is written.

**Plausibility** (``core.plausibility``): a catalog that shrinks past ``max_catalog_shrink``
or is empty, a day far below the days before it (``min_day_share``), a day file holding
another day's rows, fail before anything is replaced, unless ``accept_implausible_inputs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg
import duckdb

from .partitions import daily_partitions
from .provenance import SourceIdentity, SourceMismatchError, check_folder, stamp_folder, warehouse_source
from .warehouse import table_exists


class StaleInputError(dg.Failure):
    """An input is missing, or from another version than its siblings: nothing is written."""

    def __init__(self, message: str) -> None:
        super().__init__(description=message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Lineage:
    asset: str
    day: date | None
    version: str
    inputs: dict[str, Any]
    rows: int


def record(
    conn: duckdb.DuckDBPyConnection, asset: str, day: date | None, version: str, inputs: dict[str, Any], rows: int
) -> None:
    """Replace the lineage of ``asset`` (of ``day``) inside the caller's transaction."""
    conn.execute("DELETE FROM lineage WHERE asset = ? AND partition_date IS NOT DISTINCT FROM ?", [asset, day])
    conn.execute(
        "INSERT INTO lineage VALUES (?, ?, ?, ?, ?, ?)",
        [asset, day, version, json.dumps(inputs, sort_keys=True), rows, datetime.now(UTC).replace(tzinfo=None)],
    )


def get(conn: duckdb.DuckDBPyConnection, asset: str, day: date | None = None) -> Lineage | None:
    if not table_exists(conn, "lineage"):
        return None
    rows = conn.execute(
        "SELECT version, inputs, rows FROM lineage WHERE asset = ? AND partition_date IS NOT DISTINCT FROM ?",
        [asset, day],
    ).fetchall()
    return Lineage(asset, day, rows[0][0], json.loads(rows[0][1]), int(rows[0][2])) if rows else None


def versions(conn: duckdb.DuckDBPyConnection, asset: str, first: date, last: date) -> dict[date, str]:
    """The versions of ``asset``'s partitions in [first, last] that were materialized."""
    if not table_exists(conn, "lineage"):
        return {}
    rows = conn.execute(
        "SELECT partition_date, version FROM lineage WHERE asset = ? AND partition_date BETWEEN ? AND ?",
        [asset, first, last],
    ).fetchall()
    return {d: v for d, v in rows}


def require(
    conn: duckdb.DuckDBPyConnection,
    asset: str,
    day: date | None = None,
    *,
    needed_by: str,
    materialize: str | None = None,
) -> Lineage:
    """The lineage of an input, or a failure naming what to materialize first."""
    found = get(conn, asset, day)
    if found is None:
        what = f"{asset} of {day}" if day else asset
        raise StaleInputError(
            f"{needed_by} needs {what}, which was never materialized: materialize {materialize or asset}"
            f"{f' for {day}' if day else ''} first"
        )
    return found


def require_days(
    conn: duckdb.DuckDBPyConnection, asset: str, first: date, last: date, *, needed_by: str
) -> dict[date, str]:
    """Versions of every partition of ``asset`` in [first, last]; fails naming the days never
    materialized and the range to materialize. Days before the deployment's first partition,
    or before the first day ``asset`` was ever materialized (the history a deployment starts
    with), are not gaps; ``last`` itself always has to be there."""
    earliest = (
        conn.execute("SELECT min(partition_date) FROM lineage WHERE asset = ?", [asset]).fetchall()[0][0]
        if table_exists(conn, "lineage")
        else None
    )
    first = min(max(first, daily_partitions.start.date(), earliest or last), last)
    found = versions(conn, asset, first, last)
    wanted = [date.fromordinal(d) for d in range(first.toordinal(), last.toordinal() + 1)]
    missing = [d for d in wanted if d not in found]
    if missing:
        listed = ", ".join(str(d) for d in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise StaleInputError(
            f"{needed_by} needs {asset} of {first} .. {last}; {len(missing)} of those {len(wanted)} days were never "
            f"materialized ({listed}): materialize {asset} for {missing[0]}...{missing[-1]} first"
        )
    return found


def same(expected: object, found: object, *, what: str, rematerialize: str) -> None:
    """Fail if an input was built from another version of something than the current one."""
    if found != expected:
        raise StaleInputError(f"{what} (was {found}, now {expected}): re-materialize {rematerialize} first")


def table_version(
    conn: duckdb.DuckDBPyConnection, table: str, columns: str, day: date | None = None
) -> tuple[str, int]:
    """A content version of a table (of one partition): its row count and the XOR of its rows'
    hashes, so it does not depend on row order."""
    where, params = ("WHERE partition_date = ?", [day]) if day is not None else ("", [])
    ((count, digest),) = conn.execute(
        f"SELECT count(*), coalesce(bit_xor(hash({columns})), 0) FROM {table} {where}", params
    ).fetchall()
    return f"{int(count)}-{int(digest):016x}", int(count)


def digest(values: list[str]) -> str:
    """One version standing for many (the raw_actions days of a window)."""
    import hashlib

    return hashlib.sha256("\n".join(values).encode()).hexdigest()[:16]


class ImplausibleInputError(dg.Failure):
    """Valid rows, implausible as a whole: nothing is replaced."""

    def __init__(self, message: str) -> None:
        super().__init__(description=message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def plausible(context: dg.AssetExecutionContext, problem: str | None, accept: bool) -> str | None:
    """Fail on ``problem`` unless the operator accepts implausible inputs on purpose; returns the
    problem accepted (for the metadata), or None."""
    if problem is None:
        return None
    if not accept:
        raise ImplausibleInputError(
            f"{problem}. Nothing was replaced. If this is a real change, re-run with "
            "params.accept_implausible_inputs: true (launchpad: resources: params: config: "
            "{accept_implausible_inputs: true})"
        )
    context.log.warning(f"accepted on purpose (accept_implausible_inputs): {problem}")
    return problem


def data_version(context: dg.AssetExecutionContext, version: str) -> dg.DataVersion | None:
    """The data version for Dagster when the run covers one partition (a range run has one result
    for many partitions, so none is given there)."""
    if context.has_partition_key_range and context.partition_key_range.start != context.partition_key_range.end:
        return None
    return dg.DataVersion(version)


class SourceMismatchFailure(dg.Failure):
    """The warehouse or a folder was built from another source: nothing is written."""

    def __init__(self, error: SourceMismatchError) -> None:
        super().__init__(description=str(error))
        self.error = error

    def __str__(self) -> str:
        return str(self.error)


def require_source(conn: duckdb.DuckDBPyConnection, current: SourceIdentity, database: str) -> None:
    """Record ``current`` in a warehouse that records no source; refuse one built from another."""
    recorded = warehouse_source(conn)
    if recorded is None:
        conn.execute(
            "INSERT INTO warehouse_source VALUES (?, ?, ?, ?)",
            [current.fingerprint, current.label, json.dumps(current.to_json()), datetime.now(UTC).replace(tzinfo=None)],
        )
    elif recorded.fingerprint != current.fingerprint:
        raise SourceMismatchFailure(SourceMismatchError(database, recorded, current))


def publish_into(conn: duckdb.DuckDBPyConnection, root: str, database: str) -> None:
    """Before publishing into ``root``: the folder must hold the warehouse's source (recorded
    now if it holds none yet); a warehouse that records no source publishes unstamped."""
    current = warehouse_source(conn)
    if current is None:
        return
    try:
        stamp_folder(root, current)
    except SourceMismatchError as exc:
        raise SourceMismatchFailure(exc) from None


def events_of_source(root: str, current: SourceIdentity) -> None:
    """The service's event log must be of this source (the service records it when it starts)."""
    try:
        check_folder(root, current)
    except SourceMismatchError as exc:
        raise SourceMismatchFailure(exc) from None
