"""Model versions: fit from a stream, save/load round trip, novelty, promotion pointer, labeling."""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from imgclust.cluster.registry import clusterer_spec
from imgclust.config import ClusterConfig, Recipe, ReduceConfig
from imgclust.exceptions import CorruptArtifactError, StoreError
from imgclust.io.features import embeddings_table, feature_path, marker_path
from imgclust.io.store import Store
from imgclust.metrics import ari
from imgclust.models.labels import label_shard, read_labels
from imgclust.models.model import ClusterModel, current_model_id, fit_from_store, fit_model, promote


def _blobs(seed: int = 0, n: int = 1200) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=n, centers=4, n_features=24, cluster_std=1.0, random_state=seed)
    return X.astype(np.float32), y


def _source(X: np.ndarray, block: int = 250):
    def source() -> Iterator[np.ndarray]:
        for i in range(0, len(X), block):
            yield X[i:i + block]
    return source


@pytest.mark.parametrize("method,umap,runs", [("kmeans", None, 1), ("agglomerative", None, 1), ("hdbscan", 4, 1),
                                              ("gmm", None, 1), ("gmm", None, 3), ("scan", None, 1),
                                              ("scan-whiten", None, 1)])
def test_fit_model_recovers_blobs_and_round_trips(tmp_path: Path, method: str, umap: int | None, runs: int) -> None:
    X, y = _blobs(1)
    whiten = method == "scan-whiten"
    method = "scan" if whiten else method
    model = fit_model(_source(X), extractor_key="k",
                      recipe=Recipe(reduce=ReduceConfig(n_components=8, umap_components=umap),
                                    cluster=ClusterConfig(method=method, k=4, min_cluster_size=40, fit_sample=1000,
                                                          seed=2, consensus_runs=runs, scan_whiten=whiten)))
    assert type(model.clusterer).__name__ == clusterer_spec(method).estimator  # the class its registry entry declares
    if method == "gmm":
        assert model.clusterer.get_params()["consensus_runs"] == runs
    if method == "scan":
        assert model.clusterer.get_params()["whiten"] is whiten
    a = model.assign(X)
    assert a.cluster_id.dtype == np.int32 and a.distance.dtype == np.float32
    assert ari(y[~a.is_novel], a.cluster_id[~a.is_novel]) > 0.9
    assert ((a.confidence >= 0) & (a.confidence <= 1)).all()
    if method in ("gmm", "scan"):  # confidence is the posterior (SCAN: the vote's share) of the chosen cluster
        np.testing.assert_allclose(a.confidence, model.clusterer.predict_proba(model.embed(X)).max(axis=1), rtol=1e-6)
    store = Store(tmp_path)
    model.save(store)
    again = ClusterModel.load(store, model.model_id)
    b = again.assign(X)
    np.testing.assert_array_equal(a.cluster_id, b.cluster_id)
    np.testing.assert_allclose(a.distance, b.distance, rtol=1e-5, atol=1e-5)
    with pytest.raises(StoreError, match="immutable"):
        model.save(store)


def test_consensus_runs_need_gmm() -> None:
    from imgclust.config import validated
    from imgclust.exceptions import ConfigError

    with pytest.raises(ConfigError, match="consensus_runs=4 needs method='gmm'"):
        validated(ClusterConfig, method="kmeans", consensus_runs=4)
    with pytest.raises(ConfigError, match="consensus_runs"):
        validated(ClusterConfig, method="gmm", consensus_runs=0)
    with pytest.raises(ConfigError, match="scan_whiten=True needs method='scan'"):
        validated(ClusterConfig, method="kmeans", scan_whiten=True)


def test_scan_refuses_umap_before_any_work() -> None:
    from imgclust.config import PipelineConfig, validated
    from imgclust.exceptions import ConfigError

    scan_after_umap = {"reduce": ReduceConfig(n_components=8, umap_components=4),
                       "cluster": ClusterConfig(method="scan", k=4)}
    with pytest.raises(ConfigError, match="drop reduce.umap_components"):
        validated(Recipe, **scan_after_umap)
    with pytest.raises(ValueError, match="drop reduce.umap_components"):  # pydantic's error wraps the ConfigError
        Recipe(**scan_after_umap)  # so no model can be fitted with such a recipe
    with pytest.raises(ConfigError, match="drop reduce.umap_components"):
        validated(PipelineConfig, source="s", store="t", reduce=ReduceConfig(umap_components=4),
                  cluster=ClusterConfig(method="scan"))


def test_far_away_points_are_novel_and_members_mostly_not() -> None:
    X, _ = _blobs(2)
    model = fit_model(_source(X), extractor_key="k",
                      recipe=Recipe(reduce=ReduceConfig(method="none", n_components=None),
                                    cluster=ClusterConfig(k=4, novelty_quantile=0.99, seed=0)))
    assert model.assign(X).is_novel.mean() < 0.03
    far = X[:20] + 1000.0
    out = model.assign(far)
    assert out.is_novel.all() and (out.cluster_id == -1).all()


def test_half_written_model_is_refused_and_promote_needs_a_complete_model(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write_bytes("models/m-broken/model_arrays.npz", b"junk")
    with pytest.raises(CorruptArtifactError, match="half-written"):
        ClusterModel.load(store, "m-broken")
    with pytest.raises(StoreError):
        promote(store, "m-broken")
    assert current_model_id(store) is None


def test_fit_from_store_labels_every_row_once(tmp_path: Path) -> None:
    X, y = _blobs(3, n=900)
    store = Store(tmp_path)
    ids = [f"img{i:04d}" for i in range(len(X))]
    for s in range(3):
        sl = slice(s * 300, (s + 1) * 300)
        store.write_parquet(feature_path("k", f"s{s}"), embeddings_table(ids[sl], X[sl]))
        store.write_json(marker_path("k", f"s{s}"), {"shard_id": f"s{s}"})
    model = fit_from_store(store, "k", recipe=Recipe(reduce=ReduceConfig(n_components=6),
                                                     cluster=ClusterConfig(k=4, seed=1)))
    promote(store, model.model_id)
    assert current_model_id(store) == model.model_id
    day = dt.date(2026, 11, 24)
    for s in range(3):
        label_shard(store, model.model_id, "k", f"s{s}", date=day)
        label_shard(store, model.model_id, "k", f"s{s}", date=day)  # a retry overwrites, never duplicates
    labels = read_labels(store, model.model_id)
    assert sorted(labels.column("image_id").to_pylist()) == ids
    got = dict(zip(labels.column("image_id").to_pylist(), labels.column("cluster_id").to_pylist(), strict=True))
    assert ari(y, np.array([got[i] for i in ids])) > 0.9


def test_fit_from_store_without_features_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="run extraction first"):
        fit_from_store(Store(tmp_path), "nothing", recipe=Recipe(reduce=ReduceConfig(),
                                                                 cluster=ClusterConfig()))


def test_tampered_pickle_in_a_saved_model_is_refused(tmp_path: Path) -> None:
    X, _ = _blobs(4, n=600)
    model = fit_model(_source(X), extractor_key="k", recipe=Recipe(reduce=ReduceConfig(n_components=6),
                                                                   cluster=ClusterConfig(method="hdbscan", min_cluster_size=30, fit_sample=600, seed=0)))
    store = Store(tmp_path)
    model.save(store)
    pkl = tmp_path / "models" / model.model_id / "clusterer" / "object.pkl"
    data = bytearray(pkl.read_bytes())
    data[-5] ^= 0xFF
    pkl.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="sha256|modified|checksum"):
        ClusterModel.load(store, model.model_id)


def test_cluster_names_are_joined_into_labels() -> None:
    import pyarrow as pa

    from imgclust.models.labels import LABELS_SCHEMA, with_names

    table = pa.table({"image_id": ["a", "b", "c"], "cluster_id": pa.array([0, 3, -1], pa.int32()),
                      "distance": pa.array([0.1] * 3, pa.float32()), "confidence": pa.array([1.0] * 3, pa.float32()),
                      "is_novel": [False, False, True], "model_id": ["m"] * 3,
                      "labeled_at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)] * 3,
                                             pa.timestamp("us", tz="UTC"))}, schema=LABELS_SCHEMA)
    named = with_names(table, {3: "sneakers"})
    assert named.column("cluster_name").to_pylist() == ["", "sneakers", ""]
