"""Stable cluster ids across model versions: permutations, refits, splits, merges, retirement, noise."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from imgclust.cluster.classic import FaissKMeans
from imgclust.exceptions import ConfigError, CorruptArtifactError
from imgclust.models.lineage import Lineage, initial_lineage, match_clusters


def _labels(*sizes: int) -> np.ndarray:
    """Cluster c repeated sizes[c] times."""
    return np.repeat(np.arange(len(sizes)), sizes)


def test_initial_lineage() -> None:
    lin = initial_lineage(4)
    assert lin.stable_ids.dtype == np.int32
    assert lin.stable_ids.tolist() == [0, 1, 2, 3]
    assert lin.new_ids == [0, 1, 2, 3] and lin.next_id == 4
    assert lin.matched == {} and lin.retired == [] and lin.splits == {} and lin.merges == {}
    assert initial_lineage(0).stable_ids.shape == (0,)
    with pytest.raises(ConfigError):
        initial_lineage(-1)


def test_permuted_partition_maps_back_exactly() -> None:
    rng = np.random.default_rng(0)
    prev_stable = np.array([10, 11, 12, 13, 14])  # previous model's stable ids, not 0..k-1
    raw_prev = rng.integers(0, 5, size=500)
    perm = rng.permutation(5)  # new raw index of old raw cluster i
    lin = match_clusters(prev_stable[raw_prev], perm[raw_prev], prev_known_ids=prev_stable)
    assert lin.stable_ids[perm].tolist() == prev_stable.tolist()
    assert lin.new_ids == [] and lin.retired == [] and lin.splits == {} and lin.merges == {}
    assert lin.matched == {int(perm[i]): int(prev_stable[i]) for i in range(5)}
    assert lin.next_id == 15


def test_refit_with_five_percent_new_points_keeps_ids() -> None:
    X, _ = make_blobs(n_samples=4200, n_features=16, centers=8, cluster_std=1.5, random_state=3)
    X = X.astype(np.float32)
    old, extra = X[:4000], X[4000:]  # the refit sees 5% more points
    prev_model = FaissKMeans(n_clusters=8, seed=0).fit(old)
    prev_lin = initial_lineage(8)
    prev_labels = prev_lin.stable_ids[prev_model.predict(old)]
    new_model = FaissKMeans(n_clusters=8, seed=7).fit(np.concatenate([old, extra]))
    new_raw = new_model.predict(old)
    lin = match_clusters(prev_labels, new_raw, prev_known_ids=prev_lin.stable_ids, next_id=prev_lin.next_id,
                         n_new_clusters=8)
    kept = np.mean(lin.stable_ids[new_raw] == prev_labels)
    assert kept >= 0.95, f"only {kept:.3f} of shared images kept their stable id"
    assert sorted(lin.stable_ids.tolist()) == list(range(8))


def test_split_gives_one_inheritor_and_a_new_id() -> None:
    # old ids 0 (100 images) and 1 (80); new model splits 0 into raw 1 (60) and raw 2 (40), 1 -> raw 0
    prev = np.concatenate([np.zeros(100, int), np.ones(80, int)])
    new = np.concatenate([np.full(60, 1), np.full(40, 2), np.zeros(80, int)])
    lin = match_clusters(prev, new, prev_known_ids=[0, 1])
    assert lin.stable_ids.tolist() == [1, 0, 2]  # raw 1 (the larger part) inherits 0, raw 2 is new
    assert lin.matched == {0: 1, 1: 0}
    assert lin.new_ids == [2] and lin.next_id == 3
    assert lin.splits == {0: [1, 2]}
    assert lin.merges == {} and lin.retired == []


def test_even_split_breaks_the_tie_by_raw_index() -> None:
    prev = np.zeros(100, int)
    new = _labels(50, 50)
    for _ in range(2):
        lin = match_clusters(prev, new, prev_known_ids=[0])
        assert lin.stable_ids.tolist() == [0, 1]
        assert lin.splits == {0: [0, 1]}


def test_merge_records_merge_and_retires_one_id() -> None:
    # old 3 (70) and 4 (30) merge into raw 0; old 5 stays as raw 1
    prev = np.concatenate([np.full(70, 3), np.full(30, 4), np.full(50, 5)])
    new = np.concatenate([np.zeros(100, int), np.ones(50, int)])
    lin = match_clusters(prev, new, prev_known_ids=[3, 4, 5])
    assert lin.stable_ids.tolist() == [3, 5]
    assert lin.merges == {0: [3, 4]}
    assert lin.retired == [4]
    assert lin.new_ids == [] and lin.splits == {}


def test_even_merge_keeps_the_lower_id() -> None:
    prev = np.concatenate([np.full(40, 8), np.full(40, 2)])
    lin = match_clusters(prev, np.zeros(80, int), prev_known_ids=[2, 8])
    assert lin.stable_ids.tolist() == [2] and lin.retired == [8] and lin.merges == {0: [2, 8]}


def test_fresh_ids_never_reuse_retired_ones() -> None:
    # id 9 was retired by an earlier version; the previous model holds 0..2
    prev = _labels(30, 30, 30)
    new = np.concatenate([np.zeros(30, int), np.full(30, 1), np.full(30, 2)])
    new[60:75] = 3  # old 2 splits into raw 2 and raw 3 (15 + 15)
    lin = match_clusters(prev, new, prev_known_ids=[0, 1, 2, 9])
    assert lin.stable_ids.tolist() == [0, 1, 2, 10]  # raw 3 is fresh: 10, not the retired 9
    assert lin.new_ids == [10] and lin.retired == [9] and lin.next_id == 11
    # the same through next_id carried from the previous lineage
    lin2 = match_clusters(prev, new, prev_known_ids=[0, 1, 2], next_id=10)
    assert lin2.new_ids == [10]
    assert lin2.stable_ids.tolist() == lin.stable_ids.tolist()
    with pytest.raises(ConfigError, match="reuse"):
        match_clusters(prev, new, prev_known_ids=[0, 1, 2, 9], next_id=5)


def test_disappearing_cluster_is_retired_and_unseen_new_cluster_gets_fresh_id() -> None:
    prev = _labels(40, 40, 40)
    new = np.concatenate([np.zeros(40, int), np.ones(40, int), np.full(40, -1)])  # old 2 all noise now
    lin = match_clusters(prev, new, prev_known_ids=[0, 1, 2, 3], n_new_clusters=3)  # 3: no shared member
    assert lin.stable_ids.tolist() == [0, 1, 4]
    assert lin.retired == [2, 3]
    assert lin.new_ids == [4] and lin.next_id == 5


def test_more_and_fewer_new_clusters() -> None:
    prev = _labels(50, 50)
    more = match_clusters(prev, _labels(50, 30, 20), prev_known_ids=[0, 1])
    assert more.stable_ids.tolist() == [0, 1, 2] and more.new_ids == [2] and more.splits == {1: [1, 2]}
    prev3 = _labels(50, 50, 50)
    fewer = match_clusters(prev3, _labels(50, 100), prev_known_ids=[0, 1, 2])
    assert fewer.stable_ids.tolist() == [0, 1] and fewer.retired == [2] and fewer.merges == {1: [1, 2]}


def test_noise_is_ignored() -> None:
    rng = np.random.default_rng(1)
    prev = _labels(60, 60)
    new = prev.copy()
    # noise on either side must not change the outcome, even when it piles into one cluster
    prev_noisy = np.concatenate([prev, np.full(200, -1)])
    new_noisy = np.concatenate([new, np.zeros(200, int)])
    new_noisy[rng.choice(120, size=30, replace=False)] = -1
    lin = match_clusters(prev_noisy, new_noisy, prev_known_ids=[0, 1])
    assert lin.stable_ids.tolist() == [0, 1]
    assert lin.splits == {} and lin.merges == {} and lin.retired == []


def test_low_overlap_is_not_inherited() -> None:
    # old 0 (100) dissolves into 5 pieces of 20: Jaccard 0.2 < 0.3, so no piece inherits
    lin = match_clusters(np.zeros(100, int), _labels(20, 20, 20, 20, 20), prev_known_ids=[0])
    assert lin.matched == {} and lin.retired == [0]
    assert lin.stable_ids.tolist() == [1, 2, 3, 4, 5]
    # with a lower threshold the first piece (lowest raw index) inherits
    lin = match_clusters(np.zeros(100, int), _labels(20, 20, 20, 20, 20), prev_known_ids=[0], min_overlap=0.2)
    assert lin.stable_ids.tolist() == [0, 1, 2, 3, 4] and lin.splits == {0: [0, 1, 2, 3, 4]}


def test_empty_inputs() -> None:
    lin = match_clusters(np.array([], int), np.array([], int), prev_known_ids=[0, 1], n_new_clusters=3)
    assert lin.stable_ids.tolist() == [2, 3, 4] and lin.retired == [0, 1] and lin.matched == {}
    lin = match_clusters([], [], prev_known_ids=[])
    assert lin.stable_ids.shape == (0,) and lin.next_id == 0
    lin = match_clusters(np.full(5, -1), np.full(5, -1), prev_known_ids=[], n_new_clusters=2)
    assert lin.stable_ids.tolist() == [0, 1]


def test_deterministic_and_independent_of_row_order() -> None:
    rng = np.random.default_rng(42)
    prev = rng.integers(-1, 12, size=3000)
    new = np.where(rng.random(3000) < 0.7, (prev * 7 + 3) % 15, rng.integers(-1, 15, size=3000))
    new[prev < 0] = rng.integers(-1, 15, size=int((prev < 0).sum()))
    a = match_clusters(prev, new, prev_known_ids=range(12))
    b = match_clusters(prev, new, prev_known_ids=range(12))
    order = rng.permutation(3000)
    c = match_clusters(prev[order], new[order], prev_known_ids=list(range(11, -1, -1)))
    for other in (b, c):
        assert other.as_json() == a.as_json()
    assert len(set(a.stable_ids.tolist())) == a.stable_ids.size  # ids unique


def test_json_round_trip() -> None:
    prev = np.concatenate([np.full(70, 3), np.full(30, 4), np.full(50, 5)])
    new = np.concatenate([np.zeros(100, int), np.ones(50, int)])
    lin = match_clusters(prev, new, prev_known_ids=[3, 4, 5], n_new_clusters=3)
    data = json.loads(json.dumps(lin.as_json()))
    back = Lineage.from_json(data)
    assert back.as_json() == lin.as_json()
    assert back.stable_ids.dtype == np.int32
    with pytest.raises(CorruptArtifactError):
        Lineage.from_json({"stable_ids": [0]})


@pytest.mark.parametrize("kwargs, match", [
    ({"prev_ids": [0, 1], "new_raw": [0]}, "same images"),
    ({"prev_ids": [0, 5], "new_raw": [0, 1]}, "not in prev_known_ids"),
    ({"prev_ids": [0, -2], "new_raw": [0, 1]}, "-1 marks noise"),
    ({"prev_ids": [0.5, 1.0], "new_raw": [0, 1]}, "integers"),
    ({"prev_ids": [0, 1], "new_raw": [0, 1], "min_overlap": 0.0}, "min_overlap"),
    ({"prev_ids": [0, 1], "new_raw": [0, 3], "n_new_clusters": 2}, "n_new_clusters"),
])
def test_invalid_inputs(kwargs: dict, match: str) -> None:
    kwargs = {"prev_known_ids": [0, 1], **kwargs}
    with pytest.raises(ConfigError, match=match):
        match_clusters(kwargs.pop("prev_ids"), kwargs.pop("new_raw"), **kwargs)
