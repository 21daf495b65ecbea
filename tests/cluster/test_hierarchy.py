"""ClusterTree: size-weighted Ward against Ward on the underlying points, nested cuts, label mapping,
save/load, and the dendrogram picture on real images (sklearn digits)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pytest
from PIL import Image
from scipy.cluster.hierarchy import fcluster, is_valid_linkage, linkage
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from imgclust.cluster.hierarchy import ClusterTree, draw_tree
from imgclust.estimator import load_estimator
from imgclust.exceptions import ConfigError, NotFittedError


def _clusters_of(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Means (k, d) and sizes (k,) of the clusters 0..k-1 of ``labels``."""
    sizes = np.bincount(labels, minlength=k)
    means = np.zeros((k, X.shape[1]))
    np.add.at(means, labels, X)
    return means / np.maximum(sizes, 1)[:, None], sizes


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(adjusted_rand_score(a, b) == 1.0) if len(np.unique(a)) > 1 else len(np.unique(b)) == 1


@pytest.fixture(scope="module")
def point_ward() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """400 points in 5-D, scipy's Ward tree of them, and its 25-cluster level as labels 0..24."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(loc, 1.0, size=(n, 5)) for loc, n in ((0, 150), (4, 120), (-3, 80), (8, 50))])
    Z = linkage(X, "ward")
    k = 25
    return X, Z, fcluster(Z, k, "maxclust") - 1, k


class Digits(NamedTuple):
    images: np.ndarray  # (1797, 8, 8) float, 0..16
    target: np.ndarray  # (1797,) digit labels
    raw: np.ndarray  # (1797,) int64 k-means cluster of each image
    centers: np.ndarray  # (30, 30) k-means centroids in the PCA space
    tree: ClusterTree


@pytest.fixture(scope="module")
def digits() -> Digits:
    """sklearn digits (1,797 8x8 images), PCA to 30-D, k-means k = 30 (seeded), and its size-weighted Ward tree."""
    data: Any = load_digits()
    X = PCA(n_components=30, random_state=0).fit_transform(data.data)
    km = KMeans(n_clusters=30, n_init=1, random_state=0).fit(X)
    raw = km.labels_.astype(np.int64)
    tree = ClusterTree().fit(km.cluster_centers_, np.bincount(raw, minlength=30))
    return Digits(data.images, data.target, raw, km.cluster_centers_, tree)


# ----------------------------------------------------------------------------- the merge order


def test_size_weighted_ward_is_the_top_of_the_point_ward_tree(
        point_ward: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> None:
    X, Z, labels, k = point_ward
    means, sizes = _clusters_of(X, labels, k)
    tree = ClusterTree().fit(means, sizes)
    # the last k-1 merges of Ward on the 400 points are exactly the merges of the 25 clusters
    np.testing.assert_allclose(tree.heights_, Z[-(k - 1):, 2], rtol=1e-10)
    for n in range(1, k + 1):
        assert _same_partition(tree.cut(n)[labels], fcluster(Z, n, "maxclust")), n
    for n in (2, 4, 7, 12):  # and scikit-learn's Ward on the points agrees
        sk = AgglomerativeClustering(n_clusters=n, linkage="ward").fit_predict(X)
        assert _same_partition(tree.map_labels(labels, n), sk), n
    assert is_valid_linkage(tree.linkage_matrix(), throw=True)
    # treating each centroid as one point (scipy on the centroids) gives a different tree here
    assert not np.allclose(linkage(means, "ward")[:, 2], tree.heights_)


def test_hand_computed_weighted_merge_costs_flip_the_unweighted_order() -> None:
    means = np.array([[0.0], [1.0], [2.2]])
    sizes = np.array([1000, 1000, 1])
    tree = ClusterTree().fit(means, sizes)
    # Delta(A, B) = |A||B|/(|A|+|B|) ||mu_A - mu_B||^2; heights are sqrt(2 Delta) (scipy's scale)
    d01 = 1000 * 1000 / 2000 * 1.0**2  # 500
    d12 = 1000 * 1 / 1001 * 1.2**2  # 1.4386: the single row joins the cluster next to it first
    assert d12 < d01
    mu12 = (1000 * 1.0 + 1 * 2.2) / 1001
    d0_12 = 1000 * 1001 / 2001 * mu12**2
    np.testing.assert_array_equal(tree.merges_, [[1, 2], [0, 3]])
    np.testing.assert_allclose(tree.heights_, np.sqrt(2 * np.array([d12, d0_12])), rtol=1e-12)
    unweighted = linkage(means, "ward")  # scipy: each centroid one point -> merges 0 and 1 first
    np.testing.assert_array_equal(unweighted[0, :2], [0, 1])


def test_equal_sizes_reduce_to_ward_on_the_centroids() -> None:
    C = np.random.default_rng(1).normal(size=(60, 8))
    tree = ClusterTree().fit(C, np.full(60, 7))
    Z = linkage(C, "ward")  # sizes all equal: Ward costs scale by a constant, heights by sqrt(7)
    np.testing.assert_allclose(tree.heights_, np.sqrt(7) * Z[:, 2], rtol=1e-10)
    for n in (2, 5, 17, 59):
        assert _same_partition(tree.cut(n), fcluster(Z, n, "maxclust"))


@pytest.mark.parametrize("method", ["average", "complete"])
def test_average_and_complete_are_scipy_on_the_centroids(method: Literal["average", "complete"]) -> None:
    C = np.random.default_rng(2).normal(size=(40, 6))
    tree = ClusterTree(linkage=method).fit(C, np.arange(1, 41))
    Z = linkage(C, method)
    np.testing.assert_allclose(tree.heights_, Z[:, 2], rtol=1e-12)
    for n in (3, 10, 30):
        assert _same_partition(tree.cut(n), fcluster(Z, n, "maxclust"))


# ----------------------------------------------------------------------------- cuts and labels


@pytest.mark.parametrize("method", ["ward", "average", "complete"])
def test_cuts_have_exactly_n_groups_numbered_by_smallest_leaf_and_are_nested(
        method: Literal["ward", "average", "complete"]) -> None:
    rng = np.random.default_rng(3)
    k = 45
    sizes = rng.integers(0, 50, size=k)
    sizes[[3, 17, 18]] = 0
    tree = ClusterTree(linkage=method).fit(rng.normal(size=(k, 4)), sizes)
    assert tree.levels() == list(range(1, k + 1))
    assert np.all(np.diff(tree.heights_) >= 0)
    coarser = tree.cut(1)
    np.testing.assert_array_equal(coarser, np.zeros(k))
    for n in range(2, k + 1):
        groups = tree.cut(n)
        assert groups.dtype == np.int64 and groups.shape == (k,)
        assert sorted(set(groups.tolist())) == list(range(n))
        _, first = np.unique(groups, return_index=True)
        assert np.all(np.diff(first) > 0)  # group g's smallest leaf is below group g+1's
        for g in range(n):  # every group of cut(n) lies inside one group of cut(n-1)
            assert len(np.unique(coarser[groups == g])) == 1
        coarser = groups
    np.testing.assert_array_equal(tree.cut(k), np.arange(k))


def test_empty_clusters_merge_first_at_height_zero_into_their_nearest_cluster() -> None:
    rng = np.random.default_rng(4)
    C = rng.normal(size=(20, 3))
    sizes = rng.integers(5, 40, size=20)
    empty = np.array([2, 9, 15])
    sizes[empty] = 0
    tree = ClusterTree().fit(C, sizes)
    assert np.all(tree.heights_[:3] == 0)
    assert all(len(set(pair) & set(empty.tolist())) >= 1 for pair in tree.merges_[:3].tolist())
    full = np.setdiff1d(np.arange(20), empty)
    groups = tree.cut(17)
    for e in empty:
        nearest = full[np.argmin(((C[full] - C[e]) ** 2).sum(1))]
        assert groups[e] == groups[nearest]
    assert len(np.unique(groups[full])) == 17  # the non-empty clusters are still apart
    # the rest of the tree is the tree of the non-empty clusters alone
    alone = ClusterTree().fit(C[full], sizes[full])
    np.testing.assert_allclose(tree.heights_[3:], alone.heights_, rtol=1e-12)
    for n in range(1, 18):
        assert _same_partition(tree.cut(n)[full], alone.cut(n))


def test_a_single_cluster_has_one_level(tmp_path: Path) -> None:
    tree = ClusterTree().fit(np.ones((1, 4)), np.array([0]))
    assert tree.merges_.shape == (0, 2) and tree.heights_.shape == (0,)
    assert tree.levels() == [1]
    np.testing.assert_array_equal(tree.cut(1), [0])
    np.testing.assert_array_equal(tree.map_labels(np.array([0, -1, 0]), 1), [0, -1, 0])
    assert tree.to_json() == {"id": 0, "leaves": [0], "size": 0, "height": 0.0, "children": []}
    with pytest.raises(ConfigError, match=r"\[1, 1\]"):
        tree.cut(2)
    tree.save(tmp_path / "t")
    assert ClusterTree.load(tmp_path / "t").cut(1).tolist() == [0]
    assert draw_tree(tree, {}).size[0] > 48


def test_map_labels_keeps_noise_and_rejects_foreign_labels(digits: Digits) -> None:
    tree = digits.tree
    raw = digits.raw.copy()
    raw[::7] = -1
    for n in (1, 5, 10, 30):
        mapped = tree.map_labels(raw, n)
        assert mapped.dtype == np.int64 and mapped.shape == raw.shape
        np.testing.assert_array_equal(mapped == -1, raw == -1)
        np.testing.assert_array_equal(mapped[raw >= 0], tree.cut(n)[raw[raw >= 0]])
    assert tree.map_labels(np.array([], dtype=np.int64), 3).shape == (0,)
    with pytest.raises(ConfigError, match="outside"):
        tree.map_labels(np.array([0, 30]), 3)
    with pytest.raises(ConfigError, match="outside"):
        tree.map_labels(np.array([-2]), 3)
    with pytest.raises(ConfigError, match="integer"):
        tree.map_labels(np.array([0.5]), 3)


@pytest.mark.parametrize("bad", [0, 31, -1, True, 2.0, "3"])
def test_bad_n_groups_raise_config_error_naming_the_range(digits: Digits, bad: object) -> None:
    with pytest.raises(ConfigError, match=r"\[1, 30\]"):
        digits.tree.cut(bad)  # type: ignore[arg-type]


def test_bad_inputs_raise_actionable_errors() -> None:
    C = np.zeros((3, 2))
    with pytest.raises(NotFittedError):
        ClusterTree().cut(1)
    with pytest.raises(ConfigError, match="linkage"):
        ClusterTree(linkage="single").fit(C, np.ones(3))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"shape \(3,\)"):
        ClusterTree().fit(C, np.ones(4))
    with pytest.raises(ConfigError, match=">= 0"):
        ClusterTree().fit(C, np.array([1, -1, 2]))
    with pytest.raises(ConfigError, match="whole"):
        ClusterTree().fit(C, np.array([1.5, 1, 2]))
    with pytest.raises(ConfigError, match="np.ones"):
        ClusterTree().fit(C, np.zeros(3))
    with pytest.raises(ConfigError, match="NaN"):
        ClusterTree().fit(np.array([[0.0, np.nan], [1, 1]]), np.ones(2))
    with pytest.raises(ConfigError, match="no tree"):
        ClusterTree().fit(np.zeros((0, 2)), np.zeros(0))


# ----------------------------------------------------------------------------- real data


def test_digits_tree_cut_beats_random_merging(digits: Digits) -> None:
    """k-means k=30 on PCA-30 digits, cut into 10 groups: NMI with the digit labels. Measured (seeded, this
    test): size-weighted Ward 0.794, random merging of the 30 clusters into 10 (50 draws) mean 0.468, max 0.581."""
    y = digits.target
    raw, tree = digits.raw, digits.tree
    ward = normalized_mutual_info_score(y, tree.map_labels(raw, 10))
    rng = np.random.default_rng(0)
    random_nmi = []
    for _ in range(50):  # random merging: join two random groups until 10 remain
        groups = [[i] for i in range(30)]
        while len(groups) > 10:
            a, b = sorted(rng.choice(len(groups), size=2, replace=False))
            groups[a] += groups.pop(b)
        assign = np.empty(30, dtype=np.int64)
        for g, members in enumerate(groups):
            assign[members] = g
        random_nmi.append(normalized_mutual_info_score(y, assign[raw]))
    assert ward > max(random_nmi) + 0.1, (ward, np.mean(random_nmi), max(random_nmi))
    assert ward > 0.75


def test_save_load_round_trip(digits: Digits, tmp_path: Path) -> None:
    tree = digits.tree
    tree.save(tmp_path / "tree")
    assert {p.name for p in (tmp_path / "tree").iterdir()} == {"arrays.npz", "estimator.json"}
    for back in (load_estimator(tmp_path / "tree"), ClusterTree.load(tmp_path / "tree")):
        assert isinstance(back, ClusterTree) and back.get_params() == {"linkage": "ward"}
        for name in ("merges_", "heights_", "sizes_"):
            np.testing.assert_array_equal(getattr(back, name), getattr(tree, name))
            assert getattr(back, name).dtype == getattr(tree, name).dtype
        assert back.n_leaves_ == 30 and back.n_features_in_ == 30
        assert back.to_json() == tree.to_json()
        for n in (1, 10, 30):
            np.testing.assert_array_equal(back.cut(n), tree.cut(n))
    complete = ClusterTree(linkage="complete").fit(digits.centers, tree.sizes_)
    complete.save(tmp_path / "c")
    assert load_estimator(tmp_path / "c").get_params() == {"linkage": "complete"}


def test_to_json_is_the_nested_tree(digits: Digits) -> None:
    tree = digits.tree
    doc = json.loads(json.dumps(tree.to_json()))
    assert doc["id"] == 58 and doc["leaves"] == list(range(30)) and doc["size"] == 1797
    seen = []
    stack = [doc]
    while stack:
        node = stack.pop()
        seen.append(node["id"])
        if node["children"]:
            a, b = node["children"]
            assert sorted(a["leaves"] + b["leaves"]) == node["leaves"]
            assert a["size"] + b["size"] == node["size"]
            assert max(a["height"], b["height"]) <= node["height"]
            stack.extend(node["children"])
        else:
            assert node["leaves"] == [node["id"]] and node["size"] == int(tree.sizes_[node["id"]])
    assert sorted(seen) == list(range(59))


# ----------------------------------------------------------------------------- the picture


def _digit(digits: Digits, i: int, size: int) -> Image.Image:
    """Image ``i`` as a ``size x size`` RGB picture (dark ink on white, each of the 8x8 pixels a square)."""
    pixels = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST).convert("RGB")


def _find(haystack: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Top-left corners where ``tile`` (h, w, 3) occurs exactly in ``haystack`` (H, W, 3)."""
    def packed(a: np.ndarray) -> np.ndarray:  # one int per RGB pixel
        a = a.astype(np.int32)
        return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]

    hay, small = packed(haystack), packed(tile)
    values = np.unique(small)
    rare = values[np.argmin([np.count_nonzero(hay == v) for v in values])]  # fewest candidate positions
    ty, tx = np.argwhere(small == rare)[0]
    hits = []
    for y, x in np.argwhere(hay == rare):
        y0, x0 = y - ty, x - tx
        if y0 >= 0 and x0 >= 0 and np.array_equal(haystack[y0:y0 + tile.shape[0], x0:x0 + tile.shape[1]], tile):
            hits.append((int(y0), int(x0)))
    return hits


def test_draw_tree_shows_thumbnails_of_real_images(digits: Digits) -> None:
    raw, tree = digits.raw, digits.tree
    thumb = 48
    members = {j: np.flatnonzero(raw == j)[:4] for j in range(30)}
    images = {j: [_digit(digits, i, thumb) for i in idx] for j, idx in members.items()}
    y = digits.target
    names = {j: f"{j}: mostly {Counter(y[idx]).most_common(1)[0][0]}" for j, idx in members.items()}
    picture = draw_tree(tree, images, leaf_labels=names, thumb=thumb, per_node=3)
    width, height = picture.size
    assert 30 * thumb <= height <= 30 * 4 * thumb  # one row per leaf
    assert 3 * thumb < width <= 60 * 3 * (thumb + 10)
    pixels = np.asarray(picture)
    # the largest cluster's first image is in its own strip and in every ancestor's (largest leaf first)
    largest = int(np.argmax(tree.sizes_))
    depth = 0
    node = largest
    while node != 2 * 30 - 2:
        node = 30 + int(np.flatnonzero((tree.merges_ == node).any(axis=1))[0])
        depth += 1
    hits = _find(pixels, np.asarray(images[largest][0]))
    assert len(hits) >= 1 + depth, (len(hits), depth)
    assert len({x for _, x in hits}) == 1 + depth  # one column per level
    # with no images every tile is the grey placeholder: the thumbnails changed many pixels
    blank = np.asarray(draw_tree(tree, {}, leaf_labels=names, thumb=thumb, per_node=3))
    assert blank.shape == pixels.shape
    assert np.any(pixels != blank, axis=2).sum() > 59 * 3 * thumb * thumb * 0.2


def test_draw_tree_rejects_bad_arguments(digits: Digits) -> None:
    tree = digits.tree
    with pytest.raises(ConfigError, match="outside"):
        draw_tree(tree, {30: []})
    with pytest.raises(ConfigError, match="thumb"):
        draw_tree(tree, {}, thumb=2)
    with pytest.raises(ConfigError, match="limit"):
        draw_tree(tree, {}, thumb=1024)
