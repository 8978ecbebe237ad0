"""The snapshot's centroids and decay sums in one pass: the same bits as each sum over its own
gathered rows, whatever the chunking, and refused when the clusters and the window disagree."""

import numpy as np
import pytest

from pinnersage_dagster.core.decay import decay_sum_blocks, decay_weights, segment_sum_blocks
from pinnersage_dagster.core.window_sums import window_sum_blocks

DENSE = np.arange(100, 400)
SPARSE = np.arange(300, dtype=np.int64) * 10**16 - 2 * 10**18  # too spread for pin offsets as keys


@pytest.fixture(params=[DENSE, SPARSE], ids=["dense ids", "sparse ids"])
def window(request):
    ids = request.param
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(ids), 8)).astype(np.float32)
    users = np.repeat(np.arange(0, 80, 2), rng.integers(1, 40, size=40))  # every other user id
    pins = rng.choice(ids, len(users))  # re-actions: the same pin more than once
    age = rng.uniform(0, 90, len(users))
    order = np.lexsort((age, pins, users))
    users, pins, age = users[order], pins[order], age[order]
    # each user's distinct pins, some left out of every cluster, the rest in up to 3 clusters
    m_users, m_clusters, m_pins = [], [], []
    for user in np.unique(users):
        own = np.unique(pins[users == user])
        kept = own[rng.random(len(own)) < 0.8]
        cluster = rng.integers(0, 3, len(kept))
        for c in np.unique(cluster):
            m_users += [user] * int((cluster == c).sum())
            m_clusters += [int(c)] * int((cluster == c).sum())
            m_pins += kept[cluster == c].tolist()
    members = tuple(np.array(a, dtype=np.int64) for a in (m_users, m_clusters, m_pins))
    return _Lookup(ids, emb), (users, pins, decay_weights(age, 0.01), age), members


class _Lookup:
    """The catalog: ids (sorted) and their embeddings; called with pin ids, their rows."""

    def __init__(self, ids, emb):
        self.ids, self.emb = ids, emb

    def __call__(self, pins):
        return self.emb[np.searchsorted(self.ids, pins)]


def _separately(emb, actions, members):
    """Each sum over its own gathered rows (the snapshot's two passes before they were one)."""
    users, pins, _, age = actions
    m_users, m_clusters, m_pins = members
    starts = np.flatnonzero(np.r_[True, (m_users[1:] != m_users[:-1]) | (m_clusters[1:] != m_clusters[:-1])])
    sizes = np.diff(np.r_[starts, len(m_pins)])
    weights = np.repeat(1.0 / sizes, sizes).astype(np.float32)
    centroids = np.vstack(list(segment_sum_blocks(starts, weights, m_pins, emb)))
    decay_users, blocks = decay_sum_blocks(users, pins, age, 0.01, lambda p: emb(p).astype(np.float64))
    return centroids, decay_users, np.vstack(list(blocks))


@pytest.mark.parametrize("threads", [1, 3], ids=["one thread", "three threads"])
@pytest.mark.parametrize("chunk", [1, 7, 50, 10_000])
def test_one_pass_gives_the_same_bits_as_two(window, chunk, threads):
    emb, actions, members = window
    users, blocks = window_sum_blocks(*actions[:3], *members, emb, chunk_rows=chunk, threads=threads)
    parts = list(blocks)
    centroids, decay = np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])
    expected_centroids, expected_users, expected_decay = _separately(emb, actions, members)
    np.testing.assert_array_equal(users, expected_users)
    assert centroids.dtype == np.float32 and decay.dtype == np.float64
    np.testing.assert_array_equal(centroids, expected_centroids)
    np.testing.assert_array_equal(decay, expected_decay)
    # and they are what they mean: the members' mean, the weighted sum of every action
    m_users, m_clusters, m_pins = members
    first = (m_users[0], m_clusters[0])
    np.testing.assert_allclose(
        centroids[0], emb(m_pins[(m_users == first[0]) & (m_clusters == first[1])]).mean(0), atol=1e-6
    )
    a_users, a_pins, a_weights, _ = actions
    last = a_users == users[-1]
    np.testing.assert_allclose(decay[-1], (a_weights[last, None] * emb(a_pins[last])).sum(0), atol=1e-9)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_member_the_window_does_not_hold_is_refused(window, threads):
    """Also from a block computed ahead on another thread: the caller gets the block's error."""
    emb, actions, (m_users, m_clusters, m_pins) = window
    user = m_users[-1]
    stranger = np.setdiff1d(emb.ids, actions[1][actions[0] == user])[0]
    m_pins = m_pins.copy()
    m_pins[-1] = stranger
    with pytest.raises(ValueError, match=f"user {user}: cluster member pin {stranger} is not among"):
        list(window_sum_blocks(*actions[:3], m_users, m_clusters, m_pins, emb, chunk_rows=7, threads=threads)[1])


def test_members_of_a_user_without_actions_are_refused(window):
    emb, actions, (m_users, m_clusters, m_pins) = window
    with pytest.raises(ValueError, match="no action in the window"):
        window_sum_blocks(*actions[:3], m_users + 1, m_clusters, m_pins, emb)  # odd user ids


def test_unsorted_actions_are_refused(window):
    emb, (users, pins, weights, _), members = window
    with pytest.raises(ValueError, match="sorted by user and pin"):
        window_sum_blocks(users, pins[::-1], weights, *members, emb)


def test_an_empty_window():
    users, blocks = window_sum_blocks(*(np.empty(0, np.int64),) * 6, lambda p: np.empty((0, 4), np.float32))
    assert len(users) == 0 and list(blocks) == []


def test_a_member_below_the_blocks_pins_does_not_match_the_user_before():
    """Pin offsets as keys: user 2's pin 99 is offset -1, which is user 1's last key (pin 102)."""
    ids, emb = np.arange(99, 103), np.eye(4, dtype=np.float32)
    actions = (np.array([1, 1, 2, 2]), np.array([100, 102, 100, 101]), np.ones(4))
    members = (np.array([1, 2]), np.array([0, 0]), np.array([100, 99]))
    with pytest.raises(ValueError, match="user 2: cluster member pin 99 is not among"):
        list(window_sum_blocks(*actions, *members, _Lookup(ids, emb))[1])
