"""The candidate pool's HNSW graph: incremental updates equal a rebuild, tombstones, publishing."""

import numpy as np
import pytest

from pinnersage_dagster.core.artifacts import ArtifactIntegrityError
from pinnersage_dagster.core.candidates import refine_candidate_pool
from pinnersage_dagster.core.hnsw import live_pin_ids, load_index, publish_index
from pinnersage_dagster.core.pool_graph import (
    GraphParams,
    fingerprints,
    load_pool_graph,
    publish_pool_graph,
    update_pool_graph,
)

DIM = 32
PARAMS = GraphParams(dimension=DIM, M=16, ef_construction=100, duplicate_cosine=0.95, neighbours=16, ef=64)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def catalog(n_originals: int = 1500, seed: int = 0):
    """Originals plus 1-3 near-copies of every fifth one; ids shuffled so groups straddle batches."""
    rng = np.random.default_rng(seed)
    originals = unit(rng.standard_normal((n_originals, DIM)))
    copies = [
        originals[i] + 0.02 * rng.standard_normal((int(rng.integers(1, 4)), DIM)) for i in range(0, n_originals, 5)
    ]
    x = np.vstack([originals, unit(np.vstack(copies))])
    ids = rng.permutation(len(x)).astype(np.int64) * 3 - 50
    quality = rng.uniform(0.3, 1.0, len(x))
    created = (np.datetime64("2026-01-01", "us") + rng.integers(0, 365, len(x)) * np.timedelta64(1, "D")).astype(
        "datetime64[us]"
    )
    return ids, x, quality, created


def refine(ids, x, quality, created, previous=None):
    return refine_candidate_pool(
        ids,
        x,
        quality,
        created,
        quality_threshold=0.25,
        duplicate_cosine=0.95,
        neighbours=16,
        ef=64,
        M=16,
        ef_construction=100,
        previous=previous,
    )


def outcome(refined) -> tuple[list, list]:
    return sorted(refined.kept.pin_id.tolist()), sorted(
        map(tuple, refined.excluded[["pin_id", "representative_pin_id"]].astype("int64").to_numpy().tolist())
    )


def test_a_day_of_inserts_gives_the_pool_a_rebuild_gives():
    ids, x, quality, created = catalog()
    yesterday = np.arange(len(ids)) < int(0.9 * len(ids))  # a tenth of the catalog arrives today
    first = refine(ids[yesterday], x[yesterday], quality[yesterday], created[yesterday])
    assert first.update.mode == "rebuild"
    incremental = refine(ids, x, quality, created, previous=first.graph)
    rebuilt = refine(ids, x, quality, created)
    assert incremental.update.mode == "incremental"
    assert incremental.update.inserted == len(ids) - yesterday.sum() and incremental.update.retired == 0
    assert outcome(incremental) == outcome(rebuilt)
    assert incremental.kept.n_duplicates.sum() > 300  # the copies were found, across the two days


def test_an_unchanged_catalog_changes_nothing():
    ids, x, quality, created = catalog(600)
    first = refine(ids, x, quality, created)
    again = refine(ids, x, quality, created, previous=first.graph)
    assert again.update.mode == "incremental" and again.update.inserted == 0 and again.update.retired == 0
    assert again.kept.equals(first.kept) and again.excluded.equals(first.excluded)


def test_removed_and_changed_pins_are_retired_and_their_edges_dropped():
    ids, x, quality, created = catalog(1500)
    first = refine(ids, x, quality, created)
    rep = int(first.kept.sort_values("n_duplicates").pin_id.iloc[-1])  # a pin with duplicates
    dups = first.excluded.loc[first.excluded.representative_pin_id == rep, "pin_id"].to_numpy()
    keep = ids != rep
    x2 = x.copy()
    changed = int(np.flatnonzero(ids == dups[0])[0])
    x2[changed] = unit(np.random.default_rng(9).standard_normal((1, DIM)))[0]  # re-embedded: no longer a copy
    second = refine(ids[keep], x2[keep], quality[keep], created[keep], previous=first.graph)
    assert second.update.mode == "incremental"
    assert second.update.retired == 2 and second.update.inserted == 1  # rep removed; the changed pin re-labelled
    assert outcome(second) == outcome(refine(ids[keep], x2[keep], quality[keep], created[keep]))
    assert ids[changed] in set(second.kept.pin_id)


def test_too_many_tombstones_or_new_parameters_force_a_rebuild():
    ids, x, quality, created = catalog(600)
    graph, _ = update_pool_graph(None, ids, x, PARAMS)
    _, update = update_pool_graph(graph, ids[: len(ids) // 2], x[: len(ids) // 2], PARAMS)
    assert update.mode == "rebuild" and "tombstones" in update.reason
    graph, _ = update_pool_graph(None, ids, x, PARAMS)
    _, update = update_pool_graph(graph, ids, x, GraphParams(**{**PARAMS.__dict__, "duplicate_cosine": 0.9}))
    assert update.mode == "rebuild" and "parameters changed" in update.reason


def test_builds_use_every_core():
    import os

    from pinnersage_dagster.core.hnsw import build_index

    ids, x, *_ = catalog(50)
    graph, _ = update_pool_graph(None, ids, x, PARAMS)
    # hnswlib takes num_threads=-1 literally and builds on one thread
    assert graph.index.num_threads == build_index(x, M=16, ef_construction=50, ef=50).num_threads == os.cpu_count()


def test_fingerprints_change_with_any_bit_of_the_embedding():
    x = unit(np.random.default_rng(3).standard_normal((4, DIM)))
    y = x.copy()
    y[2, 7] = np.nextafter(y[2, 7], np.float32(2))
    assert (fingerprints(x) != fingerprints(y)).tolist() == [False, False, True, False]


def test_pool_graph_publish_load_and_refusal(tmp_path):
    ids, x, *_ = catalog(300)
    graph, _ = update_pool_graph(None, ids, x, PARAMS)
    publish_pool_graph(tmp_path, graph)
    loaded = load_pool_graph(tmp_path)
    assert loaded.params == PARAMS and np.array_equal(loaded.pin_ids, graph.pin_ids)
    assert np.array_equal(loaded.edges, graph.edges) and loaded.live.all()
    build = next((tmp_path / "builds").iterdir())
    with open(build / "edges.npy", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ArtifactIntegrityError, match="checksum"):
        load_pool_graph(tmp_path)


def test_an_index_with_tombstones_never_returns_them(tmp_path):
    ids, x, *_ = catalog(400)
    graph, _ = update_pool_graph(None, ids, x, PARAMS)
    live = np.ones(graph.elements, bool)
    live[::3] = False
    for label in np.flatnonzero(~live).tolist():
        graph.index.mark_deleted(label)
    manifest = publish_index(
        tmp_path, graph.index, graph.pin_ids, live=live, source_partition="2026-03-01", M=16, ef_construction=100, ef=64
    )
    assert manifest.count == live.sum() and manifest.elements == len(ids)
    index, pin_ids, _ = load_index(tmp_path)
    labels, _ = index.knn_query(x[:50], k=20)
    assert live[labels].all()
    assert set(pin_ids[labels.ravel()]) <= set(ids[live])
    assert sorted(live_pin_ids(tmp_path)) == sorted(ids[live])
