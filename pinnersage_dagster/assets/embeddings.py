"""Pin embeddings learned from the action log, for sources that give none (``core.embeddings``)."""

from datetime import timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from .. import guards, pictures
from ..config import PinnerSageParams
from ..core.embeddings import TooFewPins, learn_embeddings, minimum_pins, nearest_neighbours
from ..partitions import WINDOW_DAYS, daily_partitions, partition_days
from ..reporting import frame_markdown, table_schema
from ..resources import DataSource
from ..warehouse import TABLES, ensure_tables, replace_partitions, transaction
from .actions import raw_actions
from .constants import DUCKDB_POOL, GROUP

HISTORY_PAIRS_SQL = """
    SELECT DISTINCT user_id, pin_id FROM raw_actions
    WHERE partition_date BETWEEN $first AND $last AND ts >= $first AND ts < $last + INTERVAL 1 DAY ORDER BY ALL
"""


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    # strictly before D: an evaluation split on D never sees its test actions in the embeddings
    deps=[
        dg.AssetDep(
            raw_actions,
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-WINDOW_DAYS, end_offset=-1, allow_nonexistent_upstream_partitions=True
            ),
        )
    ],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    pool=DUCKDB_POOL,
    kinds={"duckdb", "scipy"},
)
def pin_embeddings(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, params: PinnerSageParams, source: DataSource
) -> dg.MaterializeResult:
    """For day D, when the source gives no embeddings: each pin's embedding learned from which
    users act on it in the ``window_days`` days before D (positive PMI of item-item
    co-occurrence, truncated SVD to ``embedding_dim``, unit-norm). Pins with too little evidence
    go to ``pin_embeddings_quarantine`` with their reason. The catalog (``pins``) takes the
    embeddings of its run's day. With embeddings from the source, there is nothing to learn."""
    (day,) = partition_days(context)
    if not source.learns_embeddings:
        with duckdb.get_connection() as conn:
            ensure_tables(conn)
            with transaction(conn):
                _replace(
                    conn,
                    day,
                    pd.DataFrame(columns=["pin_id"]),
                    np.empty((0, 1), np.float32),
                    pd.DataFrame(columns=["pin_id", "reason", "detail"]),
                )
        return dg.MaterializeResult(metadata={"embeddings": "supplied by the source: nothing to learn"})
    first, last = day - timedelta(days=params.window_days), day - timedelta(days=1)
    with duckdb.get_connection() as conn:
        ensure_tables(conn)
        history = guards.require_days(conn, "raw_actions", first, last, needed_by=f"pin_embeddings of {day}")
        pairs = conn.execute(HISTORY_PAIRS_SQL, {"first": first, "last": last}).fetchnumpy()
    if len(pairs["user_id"]) == 0:
        raise TooFewPins(
            f"no actions in raw_actions of {first} .. {last}: materialize raw_actions for these days first"
        )
    learned = learn_embeddings(
        pairs["user_id"], pairs["pin_id"], dim=params.embedding_dim, min_users=params.embedding_min_users
    )
    with duckdb.get_connection() as conn, transaction(conn):
        _replace(conn, day, pd.DataFrame({"pin_id": learned.pin_id}), learned.embedding, learned.excluded)
        version, _ = guards.table_version(conn, "pin_embeddings", "pin_id, embedding", day)
        guards.record(
            conn,
            "pin_embeddings",
            day,
            version,
            {
                "raw_actions": guards.digest([f"{d}:{v}" for d, v in sorted(history.items())]),
                "dim": params.embedding_dim,
                "min_users": params.embedding_min_users,
            },
            len(learned.pin_id),
        )
    reasons = learned.excluded["reason"].value_counts().sort_index()
    energy = float((learned.singular_values**2).sum())
    context.log.info(f"{day}: learned {len(learned.pin_id)} pins x {params.embedding_dim} from {learned.users} users")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "version": version,
            "history": f"{first} .. {last}",
            "history_users": learned.users,
            "history_pairs": len(pairs["user_id"]),
            "pins_covered": len(learned.pin_id),
            "dagster/row_count": len(learned.pin_id),
            "pins_quarantined": len(learned.excluded),
            "quarantine_reasons": {str(k): int(v) for k, v in reasons.items()},
            "dimension": params.embedding_dim,
            "minimum_pins": minimum_pins(params.embedding_dim),
            "top_component_share_of_spectrum": round(float(learned.singular_values[0] ** 2) / energy, 4),
            "spectrum": pictures.markdown_image(pictures.spectrum(learned.singular_values), "singular values"),
            "nearest_neighbours_of_popular_pins": dg.MetadataValue.md(frame_markdown(nearest_neighbours(learned))),
            "dagster/column_schema": table_schema(TABLES["pin_embeddings"]),
        },
    )


def _replace(conn, day, ids: pd.DataFrame, embedding: np.ndarray, excluded: pd.DataFrame) -> None:
    rows = pa.table(
        {
            "partition_date": pa.array([day] * len(ids), pa.date32()),
            "pin_id": pa.array(ids["pin_id"].to_numpy(np.int64), pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(embedding.ravel(), pa.float32()), embedding.shape[1]
            ),
        }
    )
    replace_partitions(conn, "pin_embeddings", rows, day, day, atomic=False)
    replace_partitions(conn, "pin_embeddings_quarantine", excluded.assign(partition_date=day), day, day, atomic=False)
