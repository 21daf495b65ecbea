"""``create_deep(method, k="auto")`` (issue 24): methods whose network does not depend on k choose k on a trained
embedding with the pipeline's sweep (after training, or after pretraining for the fine-tuners); the others refuse
before any training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import fashion_test_subset

from imgclust.cluster.choose_k import KSweep
from imgclust.deep.methods import AUTO_K_METHODS, AUTO_K_UMAP_DIMS, DEEP_METHODS, create_deep, load_deep
from imgclust.exceptions import ConfigError
from imgclust.metrics import nmi

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = (1, 7, 8)
"""Trouser, sneaker, bag: three Fashion-MNIST kinds that look nothing alike."""
QUICK = {"simclr": {"epochs": 3, "width": 8, "consensus_runs": 2, "batch_size": 64},
         "n2d": {"epochs": 10, "consensus_runs": 2, "batch_size": 64},
         "dec": {"epochs": 40, "max_iter": 20, "batch_size": 64, "update_interval": 10},
         "nnc": {"epochs": 40, "max_iter": 20, "batch_size": 64, "knn_interval": 10}}
"""Short training (an n2d ConvAE of 3 epochs here is still near its random start: its UMAP breaks into small
islands and the sweep rightly finds 11 of them). The fine-tuners pretrain with the autoencoder's own batch of 256,
two steps an epoch on these images, hence more epochs."""


AUTO_K_METHODS_TESTED = ["simclr", "n2d", "dec", "nnc"]
"""``convae`` is ``n2d`` without its UMAP + GMM stage, ``idec`` is ``dec`` keeping its decoder (same code paths)."""


def _three_kinds(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = fashion_test_subset(3000, seed=1)
    keep = np.flatnonzero(np.isin(y, CLASSES))[:n]
    return x[keep], y[keep]


@pytest.mark.parametrize("method", AUTO_K_METHODS_TESTED)
def test_auto_k_chooses_on_the_embedding_and_keeps_the_choice(method: str, tmp_path: Path) -> None:
    x, y = _three_kinds(450)
    est = create_deep(method, k="auto", seed=0, device="cpu", **QUICK[method])
    if method in ("simclr", "n2d"):
        assert est.umap_components == AUTO_K_UMAP_DIMS  # type: ignore[attr-defined]
    est.fit(x)
    k = est.n_clusters_  # type: ignore[attr-defined]
    sweep = KSweep.from_json(est.k_sweep_)  # type: ignore[attr-defined]
    assert sweep.chosen == k and len(sweep.ks) > 3 and sweep.reason
    assert len(np.unique(est.labels_)) == k
    assert 2 <= k <= 5, sweep.reason  # three kinds; the sweep's rule may split or merge one
    assert nmi(y, est.labels_) > 0.6
    if method != "simclr":  # the ConvAE embeds into AUTO_K_UMAP_DIMS dims, not k
        assert est.embed_dim_ == AUTO_K_UMAP_DIMS  # type: ignore[attr-defined]
    if method in ("dec", "nnc"):
        assert est.cluster_centers_.shape == (k, AUTO_K_UMAP_DIMS)  # type: ignore[attr-defined]
    est.save(tmp_path / method)
    loaded = load_deep(tmp_path / method)
    assert (loaded.n_clusters, loaded.n_clusters_) == ("auto", k)  # type: ignore[attr-defined]
    assert loaded.k_sweep_ == est.k_sweep_  # type: ignore[attr-defined]
    np.testing.assert_array_equal(loaded.predict(x[:50]), est.predict(x[:50]))


@pytest.mark.parametrize("method", [m for m in DEEP_METHODS if m not in AUTO_K_METHODS])
def test_methods_that_train_with_k_refuse_auto_before_training(method: str) -> None:
    with pytest.raises(ConfigError, match="trains with k.*imgclust refine"):
        create_deep(method, k="auto")


def test_auto_k_needs_a_network_free_of_k() -> None:
    from imgclust.deep.autoencoder import AutoencoderClusterer
    from imgclust.deep.dec import DEC

    with pytest.raises(ConfigError, match="needs an autoencoder whose network does not depend on k"):
        DEC(n_clusters="auto", autoencoder={"arch": "convae"})._validate_params()
    with pytest.raises(ConfigError, match="needs an autoencoder whose network does not depend on k"):
        DEC(n_clusters="auto", autoencoder={"arch": "scae", "embed_dim": 8})._validate_params()

    with pytest.raises(ConfigError, match="n_clusters='auto' needs a network that does not depend on k"):
        AutoencoderClusterer(arch="convae", n_clusters="auto")._validate_params()  # embedding k-wide
    AutoencoderClusterer(arch="convae", n_clusters="auto", embed_dim=6)._validate_params()
    with pytest.raises(ConfigError, match="n_clusters"):
        create_deep("simclr", k=0)._validate_params()
