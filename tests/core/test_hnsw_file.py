"""Reading a saved hnswlib index without loading it (core.hnsw_file), checked against hnswlib
itself, and the duplicate search that relies on it finding pairs no approximate search returns."""

import hnswlib
import numpy as np
import pandas as pd
import pytest

from pinnersage_dagster.core.candidates import refine_candidate_pool
from pinnersage_dagster.core.hnsw import build_index, publish_index
from pinnersage_dagster.core.hnsw_file import SavedGraph, link_unreachable
from pinnersage_dagster.core.metrics import pool_refinement_scores
from pinnersage_dagster.core.pool_graph import GraphParams, load_pool_graph, publish_pool_graph, update_pool_graph
from pinnersage_dagster.core.synthetic import SyntheticWorld, generate_pins

DIM = 24


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_the_saved_file_is_read_as_hnswlib_wrote_it(tmp_path):
    rng = np.random.default_rng(3)
    x = unit(rng.standard_normal((3000, DIM)))
    labels = rng.permutation(3000).astype(np.int64) + 10_000  # labels are not internal ids
    index = hnswlib.Index(space="ip", dim=DIM)
    index.init_index(max_elements=3000, M=8, ef_construction=60, random_seed=1)
    index.set_num_threads(2)
    index.add_items(x, labels)
    deleted = labels[rng.choice(3000, 40, replace=False)]
    for label in deleted.tolist():
        index.mark_deleted(label)
    index.save_index(str(tmp_path / "index.bin"))

    saved = SavedGraph(tmp_path / "index.bin", DIM)
    assert saved.elements == 3000 and sorted(saved.labels) == sorted(labels)
    assert sorted(saved.labels[saved.deleted]) == sorted(deleted)
    row_of = {label: row for row, label in enumerate(labels.tolist())}
    links = saved.links(0, 3000)
    assert ((links >= 0).sum(axis=1) == saved.counts).all() and (saved.counts <= 16).all()
    assert links.max() < 3000 and (saved.counts > 0).all()
    # each element links to pins near it: its links are closer on average than random pins
    vectors = x[[row_of[label] for label in saved.labels.tolist()]]  # per internal id
    near = np.nanmean(np.where(links >= 0, np.einsum("id,ikd->ik", vectors, vectors[np.maximum(links, 0)]), np.nan))
    assert near > 0.3
    assert saved.reachable()[saved.entry_point] and saved.reachable().mean() > 0.9


def test_a_file_of_another_dimension_or_no_index_is_refused(tmp_path):
    index = hnswlib.Index(space="ip", dim=DIM)
    index.init_index(max_elements=10, M=8)
    index.add_items(unit(np.random.default_rng(0).standard_normal((10, DIM))))
    index.save_index(str(tmp_path / "index.bin"))
    with pytest.raises(ValueError, match="dimension 32"):
        SavedGraph(tmp_path / "index.bin", 32)
    (tmp_path / "short.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="shorter than its header"):
        SavedGraph(tmp_path / "short.bin", DIM)
    (tmp_path / "cut.bin").write_bytes((tmp_path / "index.bin").read_bytes()[:500])
    with pytest.raises(ValueError, match="shorter than its 10 elements"):
        SavedGraph(tmp_path / "cut.bin", DIM)


def test_an_element_no_link_leads_to_is_unreachable(tmp_path):
    """An isolated pin in a world of tight clusters: nothing links to it."""
    rng = np.random.default_rng(5)
    centres = unit(rng.standard_normal((4, DIM)))
    x = unit(np.repeat(centres, 200, axis=0) + 0.05 * rng.standard_normal((800, DIM)))
    index = hnswlib.Index(space="ip", dim=DIM)
    index.init_index(max_elements=1000, M=4, ef_construction=20, random_seed=1)
    index.add_items(x, np.arange(800))
    saved_before = tmp_path / "a.bin"
    index.save_index(str(saved_before))
    reach = SavedGraph(saved_before, DIM).reachable()
    saved = SavedGraph(saved_before, DIM)
    incoming = np.zeros(saved.elements, dtype=int)
    links = saved.links(0, saved.elements)
    np.add.at(incoming, links[links >= 0], 1)
    lonely = (incoming == 0) & (np.arange(saved.elements) != saved.entry_point)
    assert not reach[lonely].any()  # no incoming link: never reached


def test_every_live_element_gets_a_link_a_search_follows_and_nothing_else_changes(tmp_path):
    """Hubs: tight clusters whose centres take every pin's one kept link, a few pins deleted. After
    linking, a search reaches every live pin and returns each by its own vector; the labels,
    tombstones, vectors and every element's own links are what hnswlib wrote."""
    rng = np.random.default_rng(5)
    centres = unit(rng.standard_normal((4, DIM)))
    x = unit(np.repeat(centres, 500, axis=0) + 0.05 * rng.standard_normal((2000, DIM)))
    index = hnswlib.Index(space="ip", dim=DIM)
    index.init_index(max_elements=2000, M=4, ef_construction=20, random_seed=1)
    index.set_num_threads(1)  # one insertion order: the same graph on every run
    index.add_items(x, np.arange(2000) + 7)  # labels are not internal ids
    deleted = rng.choice(2000, 30, replace=False) + 7
    for label in deleted.tolist():
        index.mark_deleted(label)
    path = tmp_path / "index.bin"
    index.save_index(str(path))
    before = SavedGraph(path, DIM)
    lonely = np.flatnonzero(~before.reachable() & ~before.deleted)
    assert len(lonely) > 30  # the world does leave pins out of reach
    old_links = before.links(0, before.elements)
    vector_of = x[before.labels - 7]  # per internal id

    added, left = link_unreachable(before, lambda labels: x[labels - 7])

    after = SavedGraph(path, DIM)
    assert left == 0 and added >= 1 and added == int((after.counts - before.counts).sum())
    assert after.reachable()[~after.deleted].all()
    assert (after.labels == before.labels).all() and (after.deleted == before.deleted).all()
    new_links = after.links(0, after.elements)
    kept = old_links >= 0
    assert (new_links[kept] == old_links[kept]).all()  # only appended, never replaced
    assert (after.counts <= after.max_m0).all()
    appended = np.flatnonzero(after.counts > before.counts)
    targets = np.concatenate([new_links[i, before.counts[i] : after.counts[i]] for i in appended])
    assert not after.deleted[targets].any() and not after.deleted[appended].any()
    loaded = hnswlib.Index(space="ip", dim=DIM)
    loaded.load_index(str(path))
    live = np.setdiff1d(np.arange(2000) + 7, deleted)
    assert np.array_equal(loaded.get_items(live, return_type="numpy"), x[live - 7])
    loaded.set_ef(50)
    found, _ = loaded.knn_query(vector_of[lonely], k=10)
    share = np.mean([label in row for label, row in zip(before.labels[lonely], found, strict=True)])
    index.set_ef(50)
    found_before, _ = index.knn_query(vector_of[lonely], k=10)
    share_before = np.mean([label in row for label, row in zip(before.labels[lonely], found_before, strict=True)])
    print(f"lonely {len(lonely)}, found before {share_before:.3f}, after {share:.3f}")
    assert share >= 0.9 and share_before < 0.5, (share, share_before)
    assert link_unreachable(after, lambda labels: x[labels - 7]) == (0, 0)  # nothing left to link


def test_a_published_compact_index_reaches_every_pin(tmp_path):
    rng = np.random.default_rng(5)
    x = unit(np.repeat(unit(rng.standard_normal((4, DIM))), 500, axis=0) + 0.05 * rng.standard_normal((2000, DIM)))
    index = build_index(x, M=4, ef_construction=20, ef=50, num_threads=1)
    index.save_index(str(tmp_path / "plain.bin"))
    assert not SavedGraph(tmp_path / "plain.bin", DIM).reachable().all()  # hnswlib's own file does not
    manifest = publish_index(
        tmp_path / "day", index, np.arange(2000) + 100, source_partition="2026-03-01", M=4, ef_construction=20, ef=50
    )
    published = SavedGraph(tmp_path / "day" / "builds" / manifest.build_id / "index.bin", DIM)
    assert published.reachable().all()


def test_the_published_pool_graph_reaches_every_pin_and_the_pool_is_unchanged(tmp_path):
    """The pool's own path: the graph saved for publishing is linked; the pool it refines is the
    same as without a published graph, on the first day and on a day of inserts."""
    rng = np.random.default_rng(5)
    n = 2000
    x = unit(np.repeat(unit(rng.standard_normal((4, DIM))), n // 4, axis=0) + 0.05 * rng.standard_normal((n, DIM)))
    ids, quality = np.arange(n) + 100, np.full(n, 0.9)
    created = np.full(n, np.datetime64("2026-01-01", "us"))
    first = rng.random(n) < 0.8

    def run(keep, previous=None, workdir=None):
        return refine_candidate_pool(
            ids[keep],
            x[keep],
            quality[keep],
            created[keep],
            quality_threshold=0.25,
            duplicate_cosine=0.99,
            M=4,
            ef_construction=20,
            previous=previous,
            workdir=workdir,
            num_threads=1,
        )

    for previous_plain, previous_linked in [(None, None), (run(first).graph, None)]:
        keep = np.ones(n, bool) if previous_plain is not None else first
        if previous_plain is not None:  # yesterday's graph, published (linked) for the linked path
            previous_linked = run(first, workdir=tmp_path).graph
            publish_pool_graph(tmp_path / "yesterday", previous_linked)
            previous_linked = load_pool_graph(tmp_path / "yesterday")
        plain, linked = run(keep, previous_plain), run(keep, previous_linked, workdir=tmp_path)
        assert linked.update.linked > 0 and linked.update.unreachable == 0, linked.update
        pd.testing.assert_frame_equal(plain.kept, linked.kept)
        pd.testing.assert_frame_equal(plain.excluded, linked.excluded)
        manifest = publish_pool_graph(tmp_path / "graph", linked.graph)
        published = SavedGraph(tmp_path / "graph" / "builds" / manifest["build_id"] / "index.bin", DIM)
        assert published.reachable()[~published.deleted].all()


def world(preset: str, n_pins: int):
    pins = generate_pins(SyntheticWorld(n_pins=n_pins, preset=preset, seed=11))
    truth = pd.DataFrame({"pin_id": pins.pin_id, "duplicate_of": pins.duplicate_of, "low_quality": pins.quality < 0.25})
    return pins, truth


def refine(pins, keep, previous=None, workdir=None):
    return refine_candidate_pool(
        pins.pin_id[keep],
        pins.embedding[keep],
        pins.quality[keep],
        pins.created_at[keep],
        quality_threshold=0.25,
        duplicate_cosine=0.95,
        M=32,
        ef_construction=200,
        previous=previous,
    )


def test_the_realistic_world_loses_no_planted_duplicate_cold_or_day_by_day():
    """The realistic world has hubs: some pins no search reaches. The duplicate search finds
    their pairs anyway, in a rebuild and when the copies arrive a day later."""
    pins, truth = world("realistic", 30_000)
    everything = np.ones(len(pins.pin_id), dtype=bool)
    cold = refine(pins, everything)
    assert cold.update.unreachable > 0  # the failure mode is present
    scores = pool_refinement_scores(truth, cold.excluded)
    assert scores["duplicate_precision"] == 1.0 and scores["duplicate_recall"] >= 0.998, scores

    # day by day: the graph of 80% of the pins, then the rest inserted (most copies among them)
    first = np.random.default_rng(0).random(len(pins.pin_id)) < 0.8
    incremental = refine(pins, everything, previous=refine(pins, first).graph)
    assert (
        incremental.update.mode == "incremental"
        and incremental.update.inserted == (~first).sum() - (pins.quality[~first] < 0.25).sum()
    )
    scores = pool_refinement_scores(truth, incremental.excluded)
    assert scores["duplicate_precision"] == 1.0 and scores["duplicate_recall"] >= 0.998, scores


def test_the_update_saves_the_graph_once_and_publish_moves_that_file(tmp_path):
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((500, DIM)))
    params = GraphParams(DIM, 8, 40, 0.95, 16, 15)
    graph, _ = update_pool_graph(None, np.arange(500), x, params, workdir=tmp_path)
    assert graph.saved is not None and graph.saved.parent == tmp_path
    saved_inode = graph.saved.stat().st_ino
    manifest = publish_pool_graph(tmp_path / "graph", graph)
    published = tmp_path / "graph" / "builds" / manifest["build_id"] / "index.bin"
    assert published.stat().st_ino == saved_inode and graph.saved is None
    assert not list(tmp_path.glob("index-*.bin")) and not list(tmp_path.glob(".graph-*"))
