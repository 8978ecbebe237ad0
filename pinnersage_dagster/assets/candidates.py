"""The pin catalog and the refined candidate pool (paper, section 4.1.1)."""

import shutil
import time
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource
from duckdb import CatalogException

from .. import guards
from ..config import PinnerSageParams
from ..core.artifacts import ArtifactIntegrityError, check_file, read_manifest
from ..core.candidates import refine_candidate_pool
from ..core.contract import validate_pins
from ..core.metrics import pool_refinement_scores
from ..core.near_duplicates import collision_probability
from ..core.plausibility import catalog_change
from ..core.pool_graph import PoolGraph, load_pool_graph, publish_pool_graph, published_labels
from ..readers import learned_raw_pins
from ..reporting import frame_markdown, table_schema
from ..resources import DataSource, IndexStore
from ..warehouse import (
    PIN_VERSION_COLUMNS,
    PINS,
    TABLES,
    embedding_dim,
    ensure_tables,
    fill_embeddings,
    pin_table,
    query_arrow,
    replace_table,
    small_buffer_pool,
    table_exists,
    transaction,
    write_pins,
)
from .constants import DUCKDB_POOL, GROUP

GOOD_PINS_SQL = "SELECT pin_id, embedding FROM pins WHERE quality >= ?"  # in scan order: fill_embeddings
POOL_VERSION_COLUMNS = "pin_id, quality, created_at, n_duplicates"
EXCLUSION_VERSION_COLUMNS = "pin_id, reason, representative_pin_id, cosine"


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    # only read when the source gives no embeddings: then the catalog takes those learned for its run's day
    deps=[dg.AssetDep("pin_embeddings", partition_mapping=dg.LastPartitionMapping())],
)
def pins(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, source: DataSource, params: PinnerSageParams
) -> dg.MaterializeResult:
    """The pin catalog: every valid pin with its unit embedding, quality and creation time.

    Unpartitioned: each run replaces the catalog from the source, unless the new one is empty or
    shrinks past ``max_catalog_shrink`` (then nothing is replaced). A catalog whose content is
    already the warehouse's (the same version, checked on the table itself) is not written again:
    the daily job's run would otherwise rewrite 1 GiB at 1M pins to change nothing. Rows that break the data
    contract go to ``pins_quarantine`` with their reason. When the source gives no embeddings,
    they come from ``pin_embeddings`` of the run's partition (the newest one outside a
    partitioned run), and without a pins file the catalog is the pins learned from the log.
    The catalog's version (a hash of its content) is what every downstream artifact records.
    """
    with duckdb.get_connection() as conn:
        ensure_tables(conn)
        guards.require_source(conn, source.identity(), duckdb.database)
    # the synthetic truth regenerates the world's catalog: before the catalog is in memory, not beside it
    pin_truth, interest_truth = source.pin_truth(), source.interest_truth()
    raw, learned_day = source.read_pins(), None
    if raw is None or not raw.has_embeddings:
        with duckdb.get_connection() as conn:
            learned_day = _embedding_day(context, conn)
            raw = learned_raw_pins(conn, raw, learned_day)
    validated, embeddings = validate_pins(raw, expected_dim=source.expected_dim)
    rows_read, files = len(raw), raw.files
    del raw  # the raw embeddings are as big as the validated ones
    source.release_memory()
    if learned_day is not None:  # a pin of the pins file the log gave too little evidence to embed
        validated.quarantine["reason"] = validated.quarantine["reason"].replace("null_embedding", "not_embedded")
    with duckdb.get_connection() as conn:
        ensure_tables(conn)
        previous = guards.get(conn, "pins")
    accepted_change = guards.plausible(
        context,
        catalog_change(
            previous.rows if previous else None,
            len(validated.accepted),
            rows_read,
            validated.reasons,
            params.max_catalog_shrink,
        ),
        params.accept_implausible_inputs,
    )
    dimension = int(embeddings.shape[1])
    with duckdb.get_connection() as conn:  # one connection: no other process writes in between
        kept = previous if previous and _holds(conn, previous, validated.accepted, embeddings) else None
        with transaction(conn):
            if kept is None:
                write_pins(conn, validated.accepted, embeddings)
            del embeddings  # in the table now: the version's pass over it must not meet a second copy
            replace_table(conn, "pins_quarantine", validated.quarantine, atomic=False)
            if pin_truth is not None:
                replace_table(conn, "synthetic_pin_truth", pin_truth, atomic=False)
            if interest_truth is not None:
                replace_table(conn, "synthetic_interest_truth", interest_truth, atomic=False)
            version, rows = (
                (kept.version, kept.rows) if kept else guards.table_version(conn, "pins", PIN_VERSION_COLUMNS)
            )
            ids_version, _ = guards.table_version(conn, "pins", "pin_id")
            guards.record(
                conn,
                "pins",
                None,
                version,
                {"ids": ids_version, "dimension": dimension, "source": files[:500]},
                rows,
            )
    context.log.info(
        f"{len(validated.accepted)} pins accepted, {len(validated.quarantine)} quarantined"
        + ("; the catalog is unchanged: not written again" if kept else "")
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "catalog_version": version,
            "catalog_rewritten": kept is None,
            "previous_catalog_pins": previous.rows if previous else "none",
            "accepted_implausible": accepted_change or "no",
            "source": files,
            "embeddings": f"learned from the log before {learned_day} (pin_embeddings)"
            if learned_day
            else "from the source",
            "rows_read": rows_read,
            "dagster/row_count": len(validated.accepted),
            "rows_quarantined": len(validated.quarantine),
            "quarantine_reasons": validated.reasons,
            "dimension": dimension,
            "ground_truth": "synthetic_pin_truth, synthetic_interest_truth" if pin_truth is not None else "none",
            "dagster/column_schema": table_schema(PINS),
        },
    )


def _holds(conn, recorded: guards.Lineage, accepted: pd.DataFrame, embeddings: np.ndarray) -> bool:
    """Does the warehouse's catalog already hold exactly these rows? Their version equals the one
    recorded and the one the table gives now (so a table changed behind the record is rewritten).
    Asked outside the write's transaction: inside one, DuckDB keeps every Arrow slice it scanned
    alive until the commit (1 GiB more at 1M pins that do not come in id order)."""
    if len(accepted) != recorded.rows:  # uploads and removals: no need to hash the rows
        return False
    conn.register("incoming_pins", pin_table(accepted, embeddings))  # the version, nothing written
    try:
        wanted = guards.table_version(conn, "incoming_pins", PIN_VERSION_COLUMNS)[0]
    finally:
        conn.unregister("incoming_pins")
    with small_buffer_pool(conn):  # the table's scan beside the new catalog's matrix: no cached copy
        return wanted == recorded.version and guards.table_version(conn, "pins", PIN_VERSION_COLUMNS)[0] == wanted


def _embedding_day(context: dg.AssetExecutionContext, conn) -> date:
    tags = context.run.tags
    key = tags.get("dagster/partition") or tags.get("dagster/asset_partition_range_end")
    day: date | None
    if key:
        day = date.fromisoformat(key)
    else:
        day = (
            conn.execute("SELECT max(partition_date) FROM pin_embeddings").fetchall()[0][0]
            if table_exists(conn, "pin_embeddings")
            else None
        )
    if (
        day is None
        or not conn.execute("SELECT count(*) FROM pin_embeddings WHERE partition_date = ?", [day]).fetchall()[0][0]
    ):
        raise RuntimeError(
            f"the source gives no embeddings and pin_embeddings has none for {day or 'any day'}: "
            "materialize pin_embeddings for that partition first (the daily job does)"
        )
    return day


@dg.asset(group_name=GROUP, pool=DUCKDB_POOL, kinds={"duckdb"}, deps=[pins])
def candidate_pool(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, params: PinnerSageParams, index_store: IndexStore
) -> dg.MaterializeResult:
    """Pins eligible for recommendation: quality >= ``quality_threshold``, one per near-duplicate group.

    Unpartitioned, recomputed from the catalog. Removed pins are listed in
    ``candidate_pool_exclusions`` with the reason and, for duplicates, the pin kept instead.
    Also publishes the pool's HNSW graph (``core.pool_graph``), updated in place when the
    catalog only gained or lost pins, which every day's ``pin_index`` starts from. When the
    catalog and the pool's settings are those the published pool was built from, and its graph
    and tables still hold what was recorded, nothing is read or rebuilt: the pool stands.
    """
    settings = _pool_settings(params)
    with duckdb.get_connection() as conn:
        catalog = guards.require(conn, "pins", needed_by="candidate_pool")
        guards.publish_into(conn, index_store.root, duckdb.database)
        if catalog.rows == 0:
            raise guards.StaleInputError("the catalog (pins) is empty: there is nothing to put in the candidate pool")
        standing = _standing_pool(conn, catalog, settings, index_store.pool_graph_dir())
        if standing is not None:
            excluded = conn.execute("SELECT * FROM candidate_pool_exclusions ORDER BY pin_id").df()
            truth = conn.execute("SELECT * FROM synthetic_pin_truth").df()
    if standing is not None:
        _clear_scratch(index_store.pool_graph_dir())
        context.log.info(
            f"candidate pool: {standing.rows} of {catalog.rows} pins; unchanged (the published pool's catalog and settings)"
        )
        return _unchanged_pool(standing, catalog, excluded, truth)
    with duckdb.get_connection() as conn:
        table = query_arrow(conn, "SELECT pin_id, quality, created_at FROM pins ORDER BY pin_id")
        quality = table.column("quality").to_numpy()
        # only the pins that pass the quality threshold are embedded in the graph: read just those
        good_ids = table.column("pin_id").to_numpy()[quality >= params.quality_threshold]
        good = np.empty((len(good_ids), embedding_dim(conn)), dtype=np.float32)
        fill_embeddings(conn, GOOD_PINS_SQL, [params.quality_threshold], good_ids, good)
        content = _catalog_content(conn)
    catalog_pins = table.num_rows
    columns = (
        table.column("pin_id").to_numpy(),
        good,
        quality,
        table.column("created_at").to_numpy(zero_copy_only=False),
    )
    del table, good
    previous = _previous_graph(context, index_store)
    workdir = _clear_scratch(index_store.pool_graph_dir())
    started = time.perf_counter()
    refined = refine_candidate_pool(
        *columns,
        quality_threshold=params.quality_threshold,
        duplicate_cosine=params.duplicate_cosine,
        hash_tables=params.dedup_hash_tables,
        hash_bits=params.dedup_hash_bits,
        M=params.hnsw_m,
        ef_construction=params.hnsw_ef_construction,
        previous=previous,
        workdir=workdir,
    )
    seconds = time.perf_counter() - started
    del columns
    update = refined.update
    graph_written = 0
    try:
        if previous is not None and update.mode == "incremental" and update.inserted == update.retired == 0:
            graph_manifest = read_manifest(index_store.pool_graph_dir())  # unchanged: the published build stands
        else:  # the graph goes first: pin_index refuses a graph that does not cover the pool it reads
            graph_manifest = publish_pool_graph(index_store.pool_graph_dir(), refined.graph)
            build = index_store.pool_graph_dir() / "builds" / graph_manifest["build_id"]
            graph_written = sum(path.stat().st_size for path in build.iterdir())
    finally:
        _clear_scratch(index_store.pool_graph_dir())
    with duckdb.get_connection() as conn:
        ensure_tables(conn)
        with transaction(conn):
            now_pins = guards.get(conn, "pins")
            if now_pins is None or now_pins.version != catalog.version:
                raise guards.StaleInputError("pins was re-materialized while candidate_pool ran: re-run candidate_pool")
            replace_table(conn, "candidate_pool", refined.kept, atomic=False)
            replace_table(conn, "candidate_pool_exclusions", refined.excluded, atomic=False)
            pool_version, _ = guards.table_version(conn, "candidate_pool", POOL_VERSION_COLUMNS)
            exclusions_version, _ = guards.table_version(conn, "candidate_pool_exclusions", EXCLUSION_VERSION_COLUMNS)
            version = f"{pool_version}-{graph_manifest['build_id']}"
            guards.record(
                conn,
                "candidate_pool",
                None,
                version,
                {
                    "pins": catalog.version,
                    "graph_build": graph_manifest["build_id"],
                    "dimension": catalog.inputs["dimension"],
                    "settings": settings,
                    "exclusions": exclusions_version,
                    "pins_content": content,
                },
                len(refined.kept),
            )
        truth = conn.execute("SELECT * FROM synthetic_pin_truth").df()
    metadata: dict[str, Any] = {
        "version": version,
        "catalog_version": catalog.version,
        "catalog_pins": catalog_pins,
        "dagster/row_count": len(refined.kept),
        "refine_seconds": round(seconds, 2),
        "graph_update": update.mode,
        "graph_update_reason": update.reason,
        "graph_pins_inserted": update.inserted,
        "graph_pins_retired": update.retired,
        "graph_elements": update.elements,
        "graph_tombstones": update.elements - update.live,
        "duplicate_edges": update.edges,
        "graph_insert_seconds": round(update.insert_seconds, 2),
        "duplicate_self_join_seconds": round(update.self_join_seconds, 2),
        "graph_unreachable_pins": update.unreachable,
        "graph_links_added_for_unreachable_pins": update.linked,
        "graph_link_seconds": round(update.link_seconds, 2),
        "duplicate_hash_probability_at_threshold": round(
            collision_probability(params.duplicate_cosine, params.dedup_hash_bits, params.dedup_hash_tables), 4
        ),
        "graph_build_id": graph_manifest["build_id"],
        "graph_bytes_written_mib": round(graph_written / 2**20, 1),
        "dagster/column_schema": table_schema(TABLES["candidate_pool"]),
        **_exclusion_metadata(refined.excluded, truth),
    }
    context.log.info(
        f"candidate pool: {len(refined.kept)} of {catalog_pins} pins; graph {update.mode} ({update.reason}), "
        f"{update.inserted} inserted, {update.retired} retired"
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


def _unchanged_pool(
    standing: guards.Lineage, catalog: guards.Lineage, excluded: pd.DataFrame, truth: pd.DataFrame
) -> dg.MaterializeResult:
    """The materialization of a pool that stands (``_standing_pool``): its recorded version."""
    metadata = {
        "version": standing.version,
        "catalog_version": catalog.version,
        "catalog_pins": catalog.rows,
        "dagster/row_count": standing.rows,
        "graph_update": "unchanged",
        "graph_update_reason": "the catalog and the pool's settings are those of the published pool, "
        "whose graph and tables hold what was recorded: nothing read or rebuilt",
        "graph_pins_inserted": 0,
        "graph_pins_retired": 0,
        "graph_build_id": standing.inputs["graph_build"],
        "graph_bytes_written_mib": 0.0,
        "dagster/column_schema": table_schema(TABLES["candidate_pool"]),
        **_exclusion_metadata(excluded, truth),
    }
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(standing.version))


def _pool_settings(params: PinnerSageParams) -> dict[str, Any]:
    """The parameters the pool and its graph are built with: a pool built with others is redone."""
    return {
        "quality_threshold": params.quality_threshold,
        "duplicate_cosine": params.duplicate_cosine,
        "dedup_hash_tables": params.dedup_hash_tables,
        "dedup_hash_bits": params.dedup_hash_bits,
        "hnsw_m": params.hnsw_m,
        "hnsw_ef_construction": params.hnsw_ef_construction,
    }


def _standing_pool(conn, catalog: guards.Lineage, settings: dict[str, Any], graph_dir: Path) -> guards.Lineage | None:
    """The recorded pool when this run would build exactly it again: built from this catalog
    version, whose table still holds the rows the pool read (0.5 s at 1M pins), with these
    settings; its published graph the recorded build with every file's checksum intact (a
    damaged graph is rebuilt, as when it is loaded); its tables the recorded versions. None
    otherwise: then the pool is computed."""
    recorded = guards.get(conn, "candidate_pool")
    if (
        recorded is None
        or recorded.inputs.get("pins") != catalog.version
        or recorded.inputs.get("settings") != settings
    ):
        return None
    if _catalog_content(conn) != recorded.inputs.get("pins_content"):
        return None
    try:
        labels = published_labels(graph_dir)
        if labels.build.name != recorded.inputs.get("graph_build"):
            return None
        for name, checksum in labels.files.items():
            check_file(labels.build / name, checksum)
        pool_version, _ = guards.table_version(conn, "candidate_pool", POOL_VERSION_COLUMNS)
        exclusions_version, _ = guards.table_version(conn, "candidate_pool_exclusions", EXCLUSION_VERSION_COLUMNS)
    except (ArtifactIntegrityError, CatalogException):
        return None
    if f"{pool_version}-{labels.build.name}" != recorded.version or exclusions_version != recorded.inputs.get(
        "exclusions"
    ):
        return None
    return recorded


def _catalog_content(conn) -> str:
    """The version of the rows the catalog table holds: the recorded one, unless rows were written
    behind the record (the pool is then computed from the rows, and records which it read)."""
    with small_buffer_pool(conn):
        return guards.table_version(conn, "pins", PIN_VERSION_COLUMNS)[0]


def _exclusion_metadata(excluded: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """What the pool left out, with examples, and against the planted truth when there is one."""
    reasons = excluded["reason"].value_counts().to_dict()
    metadata: dict[str, Any] = {
        "excluded_low_quality": int(reasons.get("low_quality", 0)),
        "excluded_near_duplicate": int(reasons.get("near_duplicate", 0)),
        "duplicate_examples": dg.MetadataValue.md(
            frame_markdown(excluded[excluded["reason"] == "near_duplicate"].head(8))
        ),
    }
    if not truth.empty:
        scores = pool_refinement_scores(truth, excluded)
        metadata.update({f"planted_{k}": v for k, v in scores.items()})
    return metadata


def _clear_scratch(directory: Path) -> Path:
    """The pool graph's folder, without the graph files a killed run saved and never published
    (one candidate_pool runs at a time: the warehouse pool admits one step)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stray in directory.glob("index-*.bin"):
        stray.unlink(missing_ok=True)
    for stray in directory.glob(".graph-*"):
        shutil.rmtree(stray, ignore_errors=True)
    return directory


def _previous_graph(context: dg.AssetExecutionContext, index_store: IndexStore) -> PoolGraph | None:
    directory = index_store.pool_graph_dir()
    if not (directory / "manifest.json").exists():
        return None
    try:
        return load_pool_graph(directory)
    except ArtifactIntegrityError as exc:  # a damaged graph costs a rebuild, never a wrong pool
        context.log.warning(f"rebuilding the pool graph: {exc}")
        return None
