"""Clusterers against scikit-learn oracles, the shared estimator contract battery, save/load."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from conftest import registered_classes, uneven_source
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.metrics import adjusted_rand_score

from imgclust.batches import as_batch_source, sample_rows
from imgclust.cluster.classic import (
    AgglomerativeClusterer,
    FaissKMeans,
    HDBSCANClusterer,
    create_clusterer,
    list_clusterers,
)
from imgclust.cluster.gmm import GaussianMixtureClusterer
from imgclust.cluster.kmeans_torch import TorchKMeans
from imgclust.cluster.scan import ScanClusterer
from imgclust.estimator import Estimator, list_estimators, load_estimator
from imgclust.exceptions import ConfigError, CorruptArtifactError, NotFittedError, UnknownNameError
from imgclust.models.novelty import NoveltyScorer
from imgclust.reduce.pca import ExactPCA
from imgclust.reduce.streaming import StreamingPCA, UMAPReducer


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=2000, n_features=32, centers=8, cluster_std=2.0, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def separated() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=2000, n_features=8, centers=4, cluster_std=0.6, center_box=(-20, 20),
                      random_state=1)
    return X.astype(np.float32), y


# ----------------------------------------------------------------------------- data interface


def test_sample_rows_same_for_array_and_any_blocking(blobs) -> None:
    X, _ = blobs
    a = sample_rows(X, 300, seed=7)
    b = sample_rows(uneven_source(X, 1, max_block=300), 300, seed=7)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.rows, X[a.indices])
    np.testing.assert_array_equal(a.rows, b.rows)
    assert a.n_total == b.n_total == 2000 and len(np.unique(a.indices)) == 300
    assert not np.array_equal(sample_rows(X, 300, seed=8).indices, a.indices)
    assert sample_rows(X, None, seed=0).rows.shape == (2000, 32)
    assert sample_rows(X, 5000, seed=0).rows.shape == (2000, 32)

    def reusing() -> Iterator[np.ndarray]:  # one buffer refilled for every block
        buf = np.empty((64, 32), dtype=np.float32)
        for start in range(0, 2000, 64):
            part = X[start:start + 64]
            buf[:len(part)] = part
            yield buf[:len(part)]

    np.testing.assert_array_equal(sample_rows(reusing, 300, seed=7).rows, a.rows)


# ----------------------------------------------------------------------------- FaissKMeans


@pytest.mark.parametrize("dataset", ["blobs", "digits"])
def test_kmeans_inertia_close_to_sklearn(dataset: str, blobs) -> None:
    if dataset == "blobs":
        X, k = blobs[0], 8
    else:
        X, k = load_digits().data.astype(np.float32), 10
    ours = FaissKMeans(n_clusters=k, n_redo=3, seed=0).fit(X)
    ref = KMeans(n_clusters=k, n_init=3, random_state=0).fit(X)
    assert ours.inertia_full_ is not None
    assert ours.inertia_full_ <= 1.10 * ref.inertia_, (ours.inertia_full_, ref.inertia_)
    assert abs(ours.inertia_full_ - ref.inertia_) / ref.inertia_ < 0.10


def test_kmeans_trains_on_sample_and_assigns_all(blobs) -> None:
    X, _ = blobs
    est = FaissKMeans(n_clusters=4, max_points_per_centroid=50).fit(X)
    assert est.n_train_samples_ == 200 and est.n_samples_seen_ == 2000
    labels, dist = est.predict_with_distance(X)
    assert labels.shape == (2000,) and labels.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_allclose(dist.sum(dtype=np.float64), est.inertia_full_, rtol=1e-5)
    D = est.transform(X)
    assert D.shape == (2000, 4) and D.dtype == np.float32
    np.testing.assert_array_equal(D.argmin(axis=1), labels)
    np.testing.assert_allclose(D.min(axis=1), dist, rtol=1e-3, atol=1e-2)


def test_kmeans_source_equals_array(blobs) -> None:
    X, _ = blobs
    a = FaissKMeans(n_clusters=8, seed=3, max_points_per_centroid=100).fit(X)
    b = FaissKMeans(n_clusters=8, seed=3, max_points_per_centroid=100).fit(uneven_source(X, 2, max_block=300))
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert b.inertia_full_ is None and a.inertia_ == b.inertia_
    parts = list(a.predict_source(uneven_source(X, 5, max_block=300)))
    labels, dist = a.predict_with_distance(X)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), labels)
    # blocks of 1..300 rows vs one call: faiss's kernel may depend on the block size (equal here, its fused k=1 kernel
    # for d <= 32; at d = 64 they differ by ~1e-3). Each path's squared distance (norm expansion, D-term dot product)
    # is within gamma_{D+2} (|x| + |c|)^2 of exact (Higham, u = 2**-24), so two paths within twice that
    gamma = (X.shape[1] + 2) * 2.0**-24 / (1 - (X.shape[1] + 2) * 2.0**-24)
    bound = 2 * gamma * (np.linalg.norm(X, axis=1) + np.linalg.norm(a.cluster_centers_[labels], axis=1)) ** 2
    assert np.all(np.abs(np.concatenate([p[1] for p in parts]) - dist) <= bound)


def test_kmeans_random_init_is_seeded(blobs) -> None:
    X, _ = blobs
    a = FaissKMeans(n_clusters=8, init="random", n_redo=2, seed=4).fit(X)
    b = FaissKMeans(n_clusters=8, init="random", n_redo=2, seed=4).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    with pytest.raises(ConfigError, match="init"):
        FaissKMeans(n_clusters=8, init="kmeans||").fit(X)  # type: ignore[arg-type]


def test_kmeans_spherical(blobs) -> None:
    X, _ = blobs
    est = FaissKMeans(n_clusters=5, spherical=True).fit(X)
    np.testing.assert_allclose(np.linalg.norm(est.cluster_centers_, axis=1), 1.0, rtol=1e-4)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_array_equal(est.predict(X), np.argmax(Xn @ est.cluster_centers_.T, axis=1))
    np.testing.assert_array_equal(est.predict(3.0 * X), est.predict(X))  # scale invariant


def test_kmeans_refuses_bad_configs(blobs) -> None:
    X, _ = blobs
    with pytest.raises(ConfigError, match="exceeds the 10 input rows"):
        FaissKMeans(n_clusters=11).fit(X[:10])
    with pytest.raises(ConfigError, match="n_clusters"):
        FaissKMeans(n_clusters=0).fit(X)
    with pytest.raises(ConfigError, match="backend"):
        FaissKMeans(n_clusters=2, backend="sklearn").fit(X)  # type: ignore[arg-type]
    import faiss

    if faiss.get_num_gpus() == 0:
        with pytest.raises(ConfigError, match="no GPU"):
            FaissKMeans(n_clusters=2, gpu=True).fit(X)


# ----------------------------------------------------------------------------- HDBSCAN / agglomerative


def test_hdbscan_finds_blobs_and_predicts_held_out(separated) -> None:
    X, y = separated
    est = HDBSCANClusterer(min_cluster_size=30, fit_sample=None).fit(X[:1500])
    assert est.n_clusters_ == 4
    assert adjusted_rand_score(y[:1500], est.labels_) > 0.9
    labels, strength = est.predict_with_strength(X[1500:])
    assert labels.dtype == np.int64 and strength.dtype == np.float32 and labels.shape == (500,)
    assert adjusted_rand_score(y[1500:], labels) > 0.9
    assert np.all((strength >= 0) & (strength <= 1))


def test_agglomerative_clusters_and_refuses_large(separated) -> None:
    X, y = separated
    est = AgglomerativeClusterer(n_clusters=4).fit(X[:1000])
    assert adjusted_rand_score(y[:1000], est.labels_) > 0.95
    assert adjusted_rand_score(y[1000:], est.predict(X[1000:])) > 0.95
    with pytest.raises(ConfigError, match="kmeans"):
        AgglomerativeClusterer(n_clusters=4, max_samples=500).fit(uneven_source(X, 0, max_block=300))


def test_create_clusterer() -> None:
    assert list_clusterers() == ["agglomerative", "hdbscan", "kmeans"]
    assert isinstance(create_clusterer("kmeans", n_clusters=3), FaissKMeans)
    with pytest.raises(UnknownNameError, match="agglomerative"):
        create_clusterer("dbscan")
    with pytest.raises(ConfigError, match="n_iterations"):
        create_clusterer("kmeans", n_clusters=3, n_iterations=5)
    with pytest.raises(ConfigError, match="n_clusters"):
        create_clusterer("agglomerative")


# ----------------------------------------------------------------------------- contract battery
# One battery over every estimator (reducers included): STYLE.md's scikit-learn contract.

def _labels_out(est: Any, X: np.ndarray) -> np.ndarray:
    return est.predict(X)


def _transform_out(est: Any, X: np.ndarray) -> np.ndarray:
    return est.transform(X)


def _score_out(est: Any, X: np.ndarray) -> np.ndarray:
    return est.score(X)


CASES: dict[str, tuple[Callable[[], Estimator], Callable[[Any, np.ndarray], np.ndarray]]] = {
    "pca": (lambda: StreamingPCA(n_components=4, batch_size=256), _transform_out),
    "umap": (lambda: UMAPReducer(n_components=2, n_neighbors=10, fit_sample=300), _transform_out),
    "kmeans": (lambda: FaissKMeans(n_clusters=4, seed=1), _labels_out),
    "kmeans_distances": (lambda: FaissKMeans(n_clusters=4, seed=1, spherical=True), _transform_out),
    "hdbscan": (lambda: HDBSCANClusterer(min_cluster_size=20, fit_sample=400), _labels_out),
    "agglomerative": (lambda: AgglomerativeClusterer(n_clusters=4), _labels_out),
    "exact_pca": (lambda: ExactPCA(n_components=4), _transform_out),
    "gmm": (lambda: GaussianMixtureClusterer(n_clusters=4, random_state=1), _labels_out),
    "torch_kmeans": (lambda: TorchKMeans(n_clusters=4, seed=1, device="cpu"), _labels_out),
    "scan": (lambda: ScanClusterer(n_clusters=4, n_neighbors=5, epochs=5, heads=2, random_state=1), _labels_out),
    "novelty": (lambda: NoveltyScorer(k=5, n_reference=300, n_calibration=200, seed=1), _score_out),
}
NOT_IN_BATTERY = {"ClusterTree": "fits cluster means and sizes, not rows: tests/cluster/test_hierarchy.py"}


def test_the_battery_covers_every_registered_estimator() -> None:
    """Every estimator class of the package (``@register_estimator`` in ``imgclust/``) runs the battery."""
    covered = {type(make()).__name__ for make, _ in CASES.values()}
    assert registered_classes() == covered | set(NOT_IN_BATTERY), registered_classes() ^ covered


@pytest.fixture(scope="module")
def contract_data(separated) -> tuple[np.ndarray, np.ndarray]:
    X, _ = separated
    return X[:600], X[600:700]


@pytest.fixture(scope="module")
def fitted(contract_data) -> dict[str, Estimator]:
    return {name: make().fit(contract_data[0]) for name, (make, _) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_contract_params_and_registry(name: str, fitted) -> None:
    make, _ = CASES[name]
    est = make()
    assert est.get_params() == fitted[name].get_params()  # fit does not touch parameters
    assert type(est).__name__ in list_estimators()
    assert repr(est).startswith(type(est).__name__ + "(")


@pytest.mark.parametrize("name", list(CASES))
def test_contract_not_fitted(name: str, contract_data, tmp_path: Path) -> None:
    make, out = CASES[name]
    est = make()
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        out(est, contract_data[1])
    with pytest.raises(NotFittedError):
        est.save(tmp_path / "m")
    if isinstance(est, FaissKMeans):
        with pytest.raises(NotFittedError):
            est.predict_source(contract_data[1])


@pytest.mark.parametrize("name", list(CASES))
def test_contract_feature_mismatch(name: str, fitted, contract_data) -> None:
    _, out = CASES[name]
    with pytest.raises(ConfigError, match=r"3 features.*fitted with 8"):
        out(fitted[name], contract_data[1][:, :3])


@pytest.mark.parametrize("name", list(CASES))
def test_contract_fit_returns_self_same_seed_same_result_dtypes(name: str, fitted, contract_data) -> None:
    make, out = CASES[name]
    X_train, X_new = contract_data
    again = make()
    assert again.fit(X_train) is again
    a, b = out(fitted[name], X_new), out(again, X_new)
    if name == "umap":
        # UMAP's layout SGD turns a one-ulp change anywhere into another layout (measured: nudging 1 % of the
        # inputs by one ulp moved points by a quarter of the span), and one CI run saw a second same-seed fit
        # land elsewhere. So the seed is checked where it is ours (the fitted sample) and the layout by what
        # it must keep: the four blobs stay four groups in both.
        np.testing.assert_array_equal(fitted[name].sample_indices_, again.sample_indices_)
        first, second, raw = (KMeans(n_clusters=4, n_init=4, random_state=0).fit_predict(e) for e in (a, b, X_new))
        assert adjusted_rand_score(first, second) == 1.0
        assert adjusted_rand_score(first, raw) == 1.0
    else:
        np.testing.assert_array_equal(a, b)
    assert a.dtype == (np.float32 if out in (_transform_out, _score_out) else np.int64)
    assert out(again, X_new.astype(np.float64)).dtype == a.dtype  # float64 input is cast, output stays


@pytest.mark.parametrize("name", list(CASES))
def test_contract_save_load_round_trip(name: str, fitted, contract_data, tmp_path: Path) -> None:
    _, out = CASES[name]
    est = fitted[name]
    est.save(tmp_path / name)
    assert not list((tmp_path / name).glob("*.tmp"))
    for loaded in (load_estimator(tmp_path / name), type(est).load(str(tmp_path / name))):
        assert type(loaded) is type(est) and loaded.get_params() == est.get_params()
        np.testing.assert_array_equal(out(loaded, contract_data[1]), out(est, contract_data[1]))
    doc = json.loads((tmp_path / name / "estimator.json").read_text())
    assert doc["class"] == type(est).__name__ and "numpy" in doc["versions"]
    assert ("object.pkl" in doc["files"]) == (name in ("umap", "hdbscan"))  # pickle only where unavoidable


# ----------------------------------------------------------------------------- artifact integrity


@pytest.fixture(scope="module")
def km(blobs) -> FaissKMeans:
    return FaissKMeans(n_clusters=3, seed=0).fit(blobs[0])


def test_save_load_through_fsspec_url(km, blobs) -> None:
    km.save("memory://models/km")
    loaded = load_estimator("memory://models/km")
    np.testing.assert_array_equal(loaded.predict(blobs[0]), km.predict(blobs[0]))  # type: ignore[attr-defined]
    fs = fsspec.filesystem("memory")
    assert FaissKMeans.load("/models/km", fs=fs).n_features_in_ == 32


def test_pickle_tamper_is_refused(fitted, tmp_path: Path) -> None:
    fitted["hdbscan"].save(tmp_path / "h")
    pkl = tmp_path / "h" / "object.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"\x00")
    with pytest.raises(CorruptArtifactError, match="modified"):
        load_estimator(tmp_path / "h")


def test_array_tamper_and_missing_files(km, tmp_path: Path) -> None:
    km.save(tmp_path / "k")
    npz = tmp_path / "k" / "arrays.npz"
    original = npz.read_bytes()
    npz.write_bytes(original[:-10])
    with pytest.raises(CorruptArtifactError, match="modified"):
        load_estimator(tmp_path / "k")
    npz.unlink()
    with pytest.raises(CorruptArtifactError, match="arrays.npz is missing"):
        load_estimator(tmp_path / "k")
    npz.write_bytes(original)
    (tmp_path / "k" / "estimator.json").unlink()  # a save that never wrote its manifest
    with pytest.raises(CorruptArtifactError, match=str(tmp_path / "k")):
        load_estimator(tmp_path / "k")
    with pytest.raises(CorruptArtifactError, match="missing"):
        load_estimator(tmp_path / "does-not-exist")


def test_manifest_problems(km, tmp_path: Path) -> None:
    km.save(tmp_path / "k")
    manifest = tmp_path / "k" / "estimator.json"
    with pytest.raises(ConfigError, match="use load_estimator"):
        StreamingPCA.load(tmp_path / "k")
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "class": "NoSuchModel"}))
    with pytest.raises(UnknownNameError, match="FaissKMeans"):
        load_estimator(tmp_path / "k")
    manifest.write_text(json.dumps({**doc, "params": {**doc["params"], "bogus": 1}}))
    with pytest.raises(CorruptArtifactError, match="signature"):
        load_estimator(tmp_path / "k")
    manifest.write_text("{ truncated")
    with pytest.raises(CorruptArtifactError, match="not valid JSON"):
        load_estimator(tmp_path / "k")


def test_as_batch_source_restarts(blobs) -> None:
    source = as_batch_source(blobs[0], batch_size=700)
    assert [b.shape[0] for b in source()] == [700, 700, 600]
    assert sum(b.shape[0] for b in source()) == 2000  # every call is a fresh pass
