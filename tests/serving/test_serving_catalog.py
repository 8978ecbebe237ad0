"""A snapshot's catalog as a base shared across days plus a delta (serving.catalog)."""

from pathlib import Path

import numpy as np
import pytest

from pinnersage_dagster.core.artifacts import ArtifactIntegrityError, publish, verified_build
from pinnersage_dagster.serving.catalog import REBASE_SHARE, ArrayCatalog, CatalogView, find_base, write_catalog


def catalog(n: int, seed: int = 0, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return np.arange(1000, 1000 + n, dtype=np.int64), x / np.linalg.norm(x, axis=1, keepdims=True)


def publish_day(root: Path, day: str, ids: np.ndarray, x: np.ndarray) -> tuple[Path, dict]:
    source = ArrayCatalog(ids, x)
    base = find_base(root, source.hash_kind, source.dimension)
    manifest = publish(
        root / day,
        lambda build: (lambda s, linked: ({"catalog": s}, linked))(
            *write_catalog(build, source, base, origin=f"{day}/{build.name}")
        ),
    )
    build, manifest = verified_build(root / day)  # every checksum, carried over or new, holds
    return build, manifest


def test_an_unchanged_base_is_linked_not_copied_and_lookups_see_the_delta(tmp_path):
    ids, x = catalog(1000)
    first, m1 = publish_day(tmp_path, "2026-01-01", ids, x)
    assert not m1["catalog"]["base_reused"] and m1["catalog"]["delta_pins"] == 0
    # a day later: 20 uploads, 5 pins removed, 3 pins with a new embedding
    new_ids, new_x = catalog(20, seed=1)
    new_ids += 10_000
    changed = x.copy()
    changed[[10, 11, 12]] = catalog(3, seed=2)[1]
    keep = np.ones(1000, bool)
    keep[[500, 501, 502, 503, 504]] = False
    ids2, x2 = np.r_[ids[keep], new_ids], np.vstack([changed[keep], new_x])
    second, m2 = publish_day(tmp_path, "2026-01-02", ids2, x2)
    section = m2["catalog"]
    assert section["base_reused"] and section["delta_pins"] == 23 and section["dead_base_pins"] == 8
    assert section["base_origin"] == m1["catalog"]["base_origin"] and section["pins"] == len(ids2)
    for name in ("catalog_base_embeddings.npy", "catalog_base_ids.npy"):
        assert (second / name).stat().st_ino == (first / name).stat().st_ino  # one file on disk
        assert m2["files"][name] == m1["files"][name]
    view = CatalogView(second)
    assert view.pins == len(ids2)
    assert np.array_equal(view.embeddings(ids2), x2)  # changed pins come from the delta
    assert not view.contains(ids[[500, 504]]).any() and view.contains(new_ids).all()
    with pytest.raises(KeyError):
        view.embeddings(ids[[500]])


def test_a_delta_past_the_rebase_share_writes_a_new_base(tmp_path):
    ids, x = catalog(100)
    publish_day(tmp_path, "2026-01-01", ids, x)
    grown = int(REBASE_SHARE * 100) + 1
    more_ids, more_x = catalog(grown, seed=3)
    more_ids += 5_000
    build, manifest = publish_day(tmp_path, "2026-01-02", np.r_[ids, more_ids], np.vstack([x, more_x]))
    assert not manifest["catalog"]["base_reused"] and manifest["catalog"]["delta_pins"] == 0
    assert np.array_equal(CatalogView(build).embeddings(more_ids), more_x)


def test_a_damaged_earlier_base_is_not_reused(tmp_path):
    ids, x = catalog(100)
    first, _ = publish_day(tmp_path, "2026-01-01", ids, x)
    (first / "catalog_base_ids.npy").write_bytes(b"garbage")
    assert find_base(tmp_path, ArrayCatalog(ids, x).hash_kind, 8) is None
    _, manifest = publish_day(tmp_path, "2026-01-02", ids, x)
    assert not manifest["catalog"]["base_reused"]


class _ChangingCatalog(ArrayCatalog):
    """A catalog whose rows, read after its fingerprints, are not the pins those named."""

    def __init__(self, ids: np.ndarray, x: np.ndarray, rows_of: tuple[np.ndarray, np.ndarray]) -> None:
        super().__init__(ids, x)
        self.later = ArrayCatalog(*rows_of)

    def rows(self, pin_ids):
        return self.later.rows(pin_ids)


@pytest.mark.parametrize("change", ["a pin added", "a pin removed", "an embedding changed"])
def test_a_catalog_that_changes_while_its_base_is_written_is_refused(tmp_path, change):
    ids, x = catalog(300)
    later_ids, later_x = ids.copy(), x.copy()
    if change == "a pin added":
        later_ids, later_x = np.r_[ids, 99_999], np.vstack([x, x[:1]])
    elif change == "a pin removed":
        later_ids, later_x = ids[1:], x[1:]
    else:
        later_x[7] = -later_x[7]
    source = _ChangingCatalog(ids, x, (later_ids, later_x))
    with pytest.raises(ArtifactIntegrityError, match="the catalog changed while the snapshot was written"):
        write_catalog(tmp_path, source, base=None, origin="test")
