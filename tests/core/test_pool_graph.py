"""The candidate pool's HNSW graph: incremental updates equal a rebuild, tombstones, publishing."""

import numpy as np
import pytest

from pinnersage_dagster.core.artifacts import ArtifactIntegrityError
from pinnersage_dagster.core.candidates import refine_candidate_pool
from pinnersage_dagster.core.hnsw import (
    IndexFiles,
    build_index,
    live_pin_ids,
    load_index,
    publish_index,
    publish_linked_index,
    verified_index_ids,
)
from pinnersage_dagster.core.pool_graph import (
    GraphParams,
    _unique_edges,
    fingerprints,
    load_pool_graph,
    publish_pool_graph,
    published_labels,
    update_pool_graph,
)

DIM = 32
PARAMS = GraphParams(dimension=DIM, M=16, ef_construction=100, duplicate_cosine=0.95, hash_tables=16, hash_bits=15)


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


@pytest.mark.parametrize(
    "low, high", [(100_000, 3_000_000), (-(2**30), 2**30), (-(2**62), 2**62)], ids=["ids", "negative", "too wide"]
)
def test_duplicate_pairs_are_kept_once_smaller_label_first_in_order(low, high):
    """The same pairs as numpy's row-wise unique, whether a pair fits one int64 key or not."""
    rng = np.random.default_rng(low % 97)
    pairs = rng.integers(low, high, size=(5_000, 2))
    pairs[:50, 1] = pairs[:50, 0] + 1  # neighbours at the edge of a key's range
    edges = np.vstack([pairs, pairs[::-1, ::-1], pairs[:700]])
    given = edges.copy()
    found = _unique_edges(edges)
    assert found.dtype == np.int64 and np.array_equal(found, np.unique(np.sort(given, axis=1), axis=0))
    assert np.array_equal(edges, given)  # the caller's array is left alone
    assert _unique_edges(np.empty((0, 2), np.int64)).shape == (0, 2)


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


def test_a_graph_of_the_previous_duplicate_search_is_rebuilt_for_its_parameters(tmp_path):
    """A graph published by the kNN duplicate search (neighbours, ef) loads, and the next run
    rebuilds it for changed parameters rather than calling it damaged or reusing its edges."""
    import json

    ids, x, *_ = catalog(300)
    graph, _ = update_pool_graph(None, ids, x, PARAMS)
    publish_pool_graph(tmp_path, graph)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    old = {k: v for k, v in manifest["params"].items() if not k.startswith("hash_")}
    manifest["params"] = {**old, "neighbours": 4, "ef": 32}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_pool_graph(tmp_path)
    assert loaded.params.hash_tables == loaded.params.hash_bits == 0
    _, update = update_pool_graph(loaded, ids, x, PARAMS)
    assert update.mode == "rebuild" and "parameters changed" in update.reason


def test_a_day_index_is_the_pool_graph_linked_with_its_deletions(tmp_path):
    """One graph on disk: the day's index links the pool graph's files and only lists the
    labels it does not serve; opening it marks them deleted, so no query returns them."""
    ids, x, *_ = catalog(400)
    graph, _ = update_pool_graph(None, ids, x, PARAMS)
    graph.index.mark_deleted(5)  # a pin the catalog lost: a tombstone inside the graph file
    graph.live[5] = False
    published = publish_pool_graph(tmp_path / "graph", graph)
    labels = published_labels(tmp_path / "graph")
    served = labels.live.copy()
    served[::3] = False  # outside the day's pool
    manifest = publish_linked_index(
        tmp_path / "day",
        labels.build,
        labels.files,
        labels.pin_ids,
        labels.live,
        served,
        dimension=DIM,
        source_partition="2026-03-01",
        M=16,
        ef_construction=100,
        ef=64,
    )
    build = tmp_path / "day" / "builds" / manifest.build_id
    graph_file = labels.build / "index.bin"
    assert (build / "index.bin").stat().st_ino == graph_file.stat().st_ino  # linked, not written again
    assert manifest.files["index.bin"] == published["files"]["index.bin"]
    assert sorted(np.load(build / "deleted.npy")) == sorted(np.flatnonzero(labels.live & ~served))
    assert manifest.count == served.sum() and manifest.elements == len(ids)
    index, pin_ids, _ = load_index(tmp_path / "day")
    found, _ = index.knn_query(x[:80], k=30)
    assert served[found].all()
    assert set(pin_ids[found.ravel()]) <= set(ids[served])
    assert sorted(live_pin_ids(tmp_path / "day")) == sorted(labels.pin_ids[served])


def test_an_index_whose_files_do_not_serve_its_manifest_is_refused(tmp_path):
    ids, x, *_ = catalog(200)
    graph, _ = update_pool_graph(None, ids, x, PARAMS)
    publish_pool_graph(tmp_path / "graph", graph)
    labels = published_labels(tmp_path / "graph")
    served = labels.live.copy()
    served[:10] = False
    args = (labels.build, labels.files, labels.pin_ids, labels.live)
    kwargs = dict(dimension=DIM, source_partition="2026-03-01", M=16, ef_construction=100, ef=64)
    manifest = publish_linked_index(tmp_path / "day", *args, served, **kwargs)
    build = tmp_path / "day" / "builds" / manifest.build_id
    files = IndexFiles.of(build)
    # deletions that leave a served pin deleted, or serve one the manifest does not list
    np.save(build / "deleted.npy", np.arange(11))
    with pytest.raises(ArtifactIntegrityError, match=r"serves \d+ labels, not the \d+"):
        verified_index_ids(files, manifest, checksums=False)
    np.save(build / "deleted.npy", np.arange(9))
    with pytest.raises(ArtifactIntegrityError, match=r"serves \d+ labels"):
        verified_index_ids(files, manifest, checksums=False)
    with pytest.raises(ArtifactIntegrityError, match="checksum"):
        load_index(tmp_path / "day")
    with pytest.raises(ValueError, match="only serve live labels"):
        live = labels.live.copy()
        live[0] = False
        publish_linked_index(
            tmp_path / "other", labels.build, labels.files, labels.pin_ids, live, labels.live, **kwargs
        )


def test_a_compact_index_serves_every_label(tmp_path):
    ids, x, *_ = catalog(200)
    manifest = publish_index(
        tmp_path,
        build_index(x, M=16, ef_construction=100, ef=64),
        ids,
        source_partition="2026-03-01",
        M=16,
        ef_construction=100,
        ef=64,
    )
    assert manifest.count == manifest.elements == len(ids)
    assert sorted(live_pin_ids(tmp_path)) == sorted(ids)


def test_a_released_index_is_published_from_its_saved_file_and_never_updated(tmp_path):
    """The asset's update drops the in-memory graph once it is saved (1.2 GB at 1M pins): the
    publish moves the file, the published graph loads and updates, and the released graph
    itself is never updated in place (a rebuild says why)."""
    ids, x, *_ = catalog(400)
    graph, _ = update_pool_graph(None, ids[:300], x[:300], PARAMS, workdir=tmp_path, release_index=True)
    assert graph.index is None and graph.saved is not None
    publish_pool_graph(tmp_path / "graph", graph)
    loaded = load_pool_graph(tmp_path / "graph")
    assert loaded.index is not None and loaded.index.get_current_count() == 300
    updated, update = update_pool_graph(loaded, ids, x, PARAMS, workdir=tmp_path, release_index=True)
    assert update.mode == "incremental" and update.inserted == len(ids) - 300 and loaded.index is None
    _, update = update_pool_graph(updated, ids, x, PARAMS)
    assert update.mode == "rebuild" and "released" in update.reason
    with pytest.raises(ValueError, match="released"):
        updated.saved.unlink()
        publish_pool_graph(tmp_path / "graph", updated)
