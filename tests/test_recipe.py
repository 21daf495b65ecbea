"""The one typed recipe (``imgclust.config.Recipe``): validated as a whole, described in one line, and the same
object whether the pipeline fits it, a recluster reads it back from ``model.json`` or the deep methods build theirs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgclust.config import ClusterConfig, Recipe, ReduceConfig, validated
from imgclust.exceptions import ConfigError
from imgclust.io.store import Store
from imgclust.models.model import fit_model, model_recipe


@pytest.mark.parametrize("recipe,line", [
    (Recipe(), "IPCA(50) -> kmeans k=auto"),
    (Recipe(reduce=ReduceConfig(umap_components=10), cluster=ClusterConfig(method="gmm", k=10, consensus_runs=8)),
     "IPCA(50) -> UMAP(10) -> gmm k=10 (consensus of 8 EM runs)"),
    (Recipe(reduce=ReduceConfig(method="none", n_components=None), cluster=ClusterConfig(method="hdbscan")),
     "UMAP(10) -> hdbscan"),  # HDBSCAN's own default UMAP, which is what runs
    (Recipe(reduce=ReduceConfig(method="pca", n_components=None, variance_target=0.9),
            cluster=ClusterConfig(method="scan", k=5)), "PCA(0.9 of the variance) -> scan k=5"),
])
def test_a_recipe_says_what_it_runs_in_one_line(recipe: Recipe, line: str) -> None:
    assert recipe.describe() == line


def test_a_recipe_is_validated_as_a_whole_and_knows_its_k() -> None:
    assert Recipe().k is None and Recipe(cluster=ClusterConfig(k=7)).k == 7
    assert Recipe(cluster=ClusterConfig(method="hdbscan", k=7)).k is None  # HDBSCAN finds its own number
    with pytest.raises(ConfigError, match="does not accept UMAP"):
        validated(Recipe, reduce=ReduceConfig(umap_components=5), cluster=ClusterConfig(method="scan", k=3))


def test_the_recipe_a_model_was_fitted_with_reads_back_as_asked(tmp_path: Path) -> None:
    X = np.random.default_rng(0).normal(size=(400, 12)).astype(np.float32)
    recipe = Recipe(reduce=ReduceConfig(n_components=6), cluster=ClusterConfig(k="auto", k_max=5, seed=3))
    model = fit_model(X, extractor_key="k", recipe=recipe)
    store = Store(tmp_path)
    model.save(store)
    assert model_recipe(store, model.model_id) == recipe  # k stays "auto": a refit chooses again
    assert 2 <= model.n_clusters <= 5
