"""The refine flow under a real Prefect API on a real Dask LocalCluster: a deep method trained on store
images becomes a `deep:` extractor, a candidate model with stable ids, labels, and a gate decision."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import requires_fashion, write_fashion_corpus

from imgclust.config import ClusterConfig, ExtractConfig, PipelineConfig, ReduceConfig
from imgclust.io.store import Store
from imgclust.models.labels import read_labels
from imgclust.models.verify import verify_store

pytestmark = [pytest.mark.integration, requires_fashion]


@pytest.mark.parametrize("method,options,k", [("convae", None, 10), ("n2d", None, 10),
                                              pytest.param("n2d-ensemble", None, 10, marks=pytest.mark.slow),
                                              ("simclr", None, "auto"), ("simclr", {"clusterer": "scan"}, 10),
                                              ("nnc", None, "auto")])
def test_refine_trains_extracts_refits_and_gates(tmp_path: Path, dask_address: str, method: str,
                                                 options: dict[str, Any] | None, k: int | str) -> None:
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import pipeline
    from flows.refine import refine

    write_fashion_corpus(tmp_path / "src", 400, seed=21)
    store_dir = tmp_path / "store"
    runner = DaskTaskRunner(address=dask_address)
    first = pipeline.with_options(task_runner=runner)(config=PipelineConfig(
        source=str(tmp_path / "src"), store=str(store_dir), truth="parent_dir",
        extract=ExtractConfig(extractor="pixels", shard_size=200), reduce=ReduceConfig(n_components=20),
        cluster=ClusterConfig(k=10, seed=0)))
    result: dict[str, Any] = refine.with_options(task_runner=runner)(
        store=str(store_dir), method=method, k=k, epochs=2, sample=300, truth="parent_dir", seed=0, options=options)
    store = Store(store_dir)
    key = result["training"]["deep_uri"]
    assert result["previous"] == first["build"]["model_id"]
    assert result["training"]["n_train"] == 300 and "acc" in result["training"]["train_metrics"]
    info = store.read_json(f"models/{result['model_id']}/model.json")
    assert info["extractor_key"].startswith("deep-") and info["parent_model"] == first["build"]["model_id"]
    assert info["extract"]["extractor"] == f"deep:{key}"
    if options:  # trained with SCAN's head, refitted with it: no UMAP
        assert info["parts"] == {"reducer": None, "umap": None, "clusterer": "ScanClusterer",
                                 "novelty": "NoveltyScorer", "tree": "ClusterTree"}
        assert info["cluster"]["method"] == "scan" and info["cluster"]["scan_whiten"] is True  # as it was trained
    elif method not in ("convae", "nnc"):  # the candidate clusters the deep features as N2D does: UMAP to k dims, then a GMM
        assert info["parts"] == {"reducer": None, "umap": "UMAPReducer", "clusterer": "GaussianMixtureClusterer",
                                 "novelty": "NoveltyScorer", "tree": "ClusterTree"}
        assert info["reduce"]["umap_components"] == 10 and info["reduce"]["umap_neighbors"] == 20
        assert info["cluster"]["consensus_runs"] == 8
    else:  # convae, nnc: k-means on the embeddings
        assert info["parts"]["clusterer"] == "FaissKMeans" and info["parts"]["umap"] is None
    if k == "auto":  # k chosen in training, then again on the deep features; lineage over the change
        assert result["training"]["k_sweep"]["chosen"] == result["training"]["k"]
        assert info["cluster"]["k"] == "auto" and info["k_sweep"]["chosen"] == info["n_clusters"]
        assert "lineage" in info
    else:
        assert result["training"]["k"] == 10 and "k_sweep" not in result["training"]
    if method == "simclr":  # its extractor stores the feature map's statistics after the representation
        assert info["representation_dim"] == 128 and info["novelty"]["score"] == "mahalanobis"
        assert info["novelty"]["n_features"] == 256
    else:  # deep features have no reducer: the residual off their PCA
        assert "representation_dim" not in info and info["novelty"]["score"] == "pca-residual"
    assert read_labels(store, result["model_id"]).num_rows == 400
    assert verify_store(store, info["extractor_key"], model_id=result["model_id"]).ok
    assert isinstance(result["promoted"], bool) and result["gate"]["reason"]
    assert store.exists(f"deep/{result['run']}/estimator.json")
