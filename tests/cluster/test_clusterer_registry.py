"""Adding a clustering method is one module plus its test: this file alone registers a toy method, ``bands``
(k equal-count bands of one feature coordinate, its own typed option ``feature``), and runs it through ``imgclust run`` and
``imgclust recluster`` on real PNG files, with the CLI's choices, the configuration's validation, the Dask workers
(which import this module through ``IMGCLUST_PLUGINS``) and the saved model version all reading the one registry."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from imgclust.cluster.classic import cluster_means
from imgclust.cluster.registry import (
    ClustererSpec,
    ClusterFitInput,
    FittedClusterer,
    clusterer_spec,
    list_methods,
    register_clusterer,
)
from imgclust.config import ClusterConfig, Recipe, ReduceConfig, check_recipe, fixed_k, validated
from imgclust.data.datasets import load_digits_images, write_image_folder
from imgclust.estimator import Estimator, list_estimators, register_estimator
from imgclust.exceptions import ConfigError, UnknownNameError
from imgclust.io.store import Store
from imgclust.models.model import fit_model
from imgclust.plugins import PLUGINS_ENV
from imgclust.validation import check_array
from imgclust_cli.main import main


@register_estimator
class BandsClusterer(Estimator):
    """Toy clusterer: ``n_clusters`` equal-count bands of coordinate ``feature`` of ``X`` ``(n, d)``."""

    _array_attrs = ("edges_", "cluster_centers_")

    def __init__(self, *, n_clusters: int = 2, feature: int = 0) -> None:
        self.n_clusters = n_clusters
        self.feature = feature

    def fit(self, X: np.ndarray) -> BandsClusterer:
        X = check_array(X)
        self.edges_ = np.quantile(X[:, self.feature], np.linspace(0, 1, self.n_clusters + 1)[1:-1]).astype(np.float32)
        self.n_features_in_ = X.shape[1]
        self.cluster_centers_ = cluster_means(X, self.predict(X), self.n_clusters)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Band ``(n,)`` int64 of each row."""
        X = check_array(X, n_features=getattr(self, "n_features_in_", None))
        return np.searchsorted(self.edges_, X[:, self.feature]).astype(np.int64)


class BandsOptions(BaseModel):
    """The toy method's own options: which coordinate it bands."""

    model_config = ConfigDict(extra="forbid")
    feature: int = Field(0, ge=0, description="The coordinate whose bands are the clusters.")


def _fit_bands(fi: ClusterFitInput) -> FittedClusterer:
    est = BandsClusterer(n_clusters=fi.k, feature=fi.options.feature).fit(fi.sample)
    return FittedClusterer(est, est.cluster_centers_, est.predict(fi.sample))


register_clusterer(ClustererSpec("bands", "toy: equal-count bands of one coordinate", _fit_bands,
                                 accepts_umap=False, options_type=BandsOptions, estimator="BandsClusterer"))


def test_the_toy_method_is_known_to_the_configuration() -> None:
    assert "bands" in list_methods() and list_methods()[:5] == ["kmeans", "hdbscan", "agglomerative", "gmm", "scan"]
    cfg = validated(ClusterConfig, method="bands", k=3)
    assert fixed_k(cfg) == 3 and clusterer_spec("bands").accepts_umap is False
    schema = ClusterConfig.model_json_schema()  # what the Prefect UI's form shows
    assert "bands" in schema["properties"]["method"]["enum"]
    with pytest.raises(ConfigError, match="does not accept UMAP"):
        check_recipe(ReduceConfig(umap_components=5), cfg)
    with pytest.raises(ConfigError, match=r"unknown clustering method 'nope'.*'bands'"):
        validated(ClusterConfig, method="nope")
    with pytest.raises(UnknownNameError, match="IMGCLUST_PLUGINS"):
        clusterer_spec("nope")


def test_a_method_declares_its_own_typed_options() -> None:
    """``ClusterConfig.options`` is validated by the method's options type before any work and reaches its fit typed;
    a method without one refuses options."""
    assert validated(ClusterConfig, method="bands", k=2, options={"feature": 1}).options == {"feature": 1}
    with pytest.raises(ConfigError, match=r"bad options for method 'bands': feature: .*greater than or equal to 0"):
        validated(ClusterConfig, method="bands", k=2, options={"feature": -1})
    with pytest.raises(ConfigError, match=r"bad options for method 'bands': nope: Extra inputs"):
        validated(ClusterConfig, method="bands", k=2, options={"nope": 1})
    with pytest.raises(ConfigError, match="method 'kmeans' takes no options of its own"):
        validated(ClusterConfig, method="kmeans", k=2, options={"feature": 1})
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    model = fit_model(X, extractor_key="toy", recipe=Recipe(
        reduce=ReduceConfig(method="none", n_components=None),
        cluster=ClusterConfig(method="bands", k=2, options={"feature": 2})))
    assert isinstance(model.clusterer, BandsClusterer) and model.clusterer.feature == 2
    np.testing.assert_array_equal(model.assign(X).raw, (X[:, 2] > np.median(X[:, 2])).astype(np.int64))
    assert model.meta["cluster"]["options"] == {"feature": 2}  # recorded: a recluster refits it the same way


def test_a_method_returns_the_estimator_class_it_declares() -> None:
    """(The built-in methods are checked where tests/models/test_model.py fits each of them.)"""
    X = np.random.default_rng(1).normal(size=(90, 2)).astype(np.float32)
    recipe = Recipe(reduce=ReduceConfig(method="none", n_components=None), cluster=ClusterConfig(method="bands", k=3))
    model = fit_model(X, extractor_key="toy", recipe=recipe)
    assert type(model.clusterer).__name__ == clusterer_spec("bands").estimator
    assert {spec.estimator for spec in map(clusterer_spec, list_methods())} <= set(list_estimators())  # loadable


def test_a_plugin_module_that_does_not_import_is_named(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(PLUGINS_ENV, "no_such_module_here")
    with pytest.raises(ConfigError, match="no_such_module_here"):
        clusterer_spec("still-unknown")
    assert main(["run", "src", "--store", "store"]) == 2  # one line, before any work
    assert "IMGCLUST_PLUGINS names 'no_such_module_here'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def plugin_env() -> Iterator[None]:
    """Dask workers started from now on import this module (and so know ``bands``)."""
    old = os.environ.get(PLUGINS_ENV)
    os.environ[PLUGINS_ENV] = __name__
    yield
    if old is None:
        os.environ.pop(PLUGINS_ENV, None)
    else:
        os.environ[PLUGINS_ENV] = old


@pytest.mark.integration
def test_the_toy_method_runs_through_run_and_recluster(tmp_path: Path, prefect_api: str, plugin_env: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = load_digits_images()
    keep = np.flatnonzero(np.isin(labels, (0, 1, 7)))[:150]
    write_image_folder(images[keep], labels[keep], [f"digit{c}" for c in range(10)], tmp_path / "src")
    store = tmp_path / "store"
    assert main(["run", str(tmp_path / "src"), "--store", str(store), "--extractor", "pixels", "--pca", "8",
                 "--method", "bands", "--k", "3", "--cluster-option", "feature=1", "--workers", "1", "--json"]) == 0
    s = Store(store)
    first = s.read_bytes("models/CURRENT").decode().strip()
    info: dict[str, Any] = s.read_json(f"models/{first}/model.json")
    assert info["cluster"]["method"] == "bands" and info["n_clusters"] == 3
    assert info["cluster"]["options"] == {"feature": 1}
    metrics = s.read_json(f"models/{first}/metrics.json")
    assert metrics["n_labeled"] == len(keep), metrics  # every image labelled by the workers

    assert main(["recluster", "--store", str(store), "--k", "4", "--gate-tolerance", "1", "--workers", "1"]) == 0
    second = s.read_bytes("models/CURRENT").decode().strip()
    info = s.read_json(f"models/{second}/model.json")
    assert second != first and info["cluster"]["method"] == "bands" and info["n_clusters"] == 4
    assert info["cluster"]["options"] == {"feature": 1}  # CURRENT's recipe, its method's options kept
    assert info["parent_model"] == first and "lineage" in info
    capsys.readouterr()
    assert main(["run", str(tmp_path / "src"), "--store", str(store), "--method", "bands", "--umap", "5"]) == 2
    assert "does not accept UMAP" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "src"), "--store", str(store), "--method", "bands",
                 "--cluster-option", "feature=-1"]) == 2  # refused before any work
    assert "bad options for method 'bands'" in capsys.readouterr().err
