"""Deep methods by name, loading by saved class, and a trained encoder as a `deep:` extractor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgclust.deep.methods import DEEP_METHODS, create_deep, load_deep
from imgclust.exceptions import ConfigError, CorruptArtifactError, UnknownNameError
from imgclust.extract.backbones import create_backbone


@pytest.mark.parametrize("method", DEEP_METHODS)
def test_every_method_is_built_by_name(method: str) -> None:
    est = create_deep(method, k=4, epochs=1, max_iter=5, seed=0, device="cpu")
    assert est.get_params()["n_clusters"] == 4


def test_unknown_method_and_missing_folder_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="convae"):
        create_deep("vae", k=4)
    with pytest.raises(CorruptArtifactError, match="estimator.json"):
        load_deep(tmp_path)


def test_trained_encoder_serves_as_a_deep_extractor(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(120, 28, 28), dtype=np.uint8)
    est = create_deep("convae", k=3, epochs=1, seed=0, device="cpu", augment=False).fit(images)
    est.save(tmp_path / "deep")
    loaded = load_deep(tmp_path / "deep")
    np.testing.assert_allclose(loaded.transform(images[:8]), est.transform(images[:8]), rtol=1e-5, atol=1e-5)
    backbone = create_backbone(f"deep:{tmp_path / 'deep'}")
    assert backbone.key().startswith("deep-file-") and backbone.preprocessing.mode == "L"
    import torch

    feats = backbone.embed(torch.stack([backbone.preprocess(im) for im in images[:8]]))
    np.testing.assert_allclose(feats, est.transform(images[:8]), rtol=1e-4, atol=1e-4)


def test_simclr_extractor_stores_the_feature_map_statistics_after_its_representation(tmp_path: Path) -> None:
    """The `deep:` extractor of a contrastive encoder: its representation (what is clustered, unchanged), then
    the last feature map's channel means and spatial standard deviations (what the novelty score uses)."""
    import torch

    images = np.random.default_rng(3).integers(0, 255, size=(64, 28, 28), dtype=np.uint8)
    est = create_deep("simclr", k=3, epochs=1, seed=0, device="cpu", width=4, batch_size=32).fit(images)
    est.save(tmp_path / "deep")
    assert est.extractor_dims() == (48, 16)
    backbone = create_backbone(f"deep:{tmp_path / 'deep'}")
    assert backbone.dim == 48 and backbone.representation_dim == 16
    assert backbone.key().startswith("deep-file-") and backbone.key().endswith("-28-stats32")
    assert backbone.metadata()["representation_dim"] == "16"
    assert backbone.metadata()["near_duplicate_space"] == "false"  # trained to pull one kind together
    feats = backbone.embed(torch.stack([backbone.preprocess(im) for im in images[:8]]))
    np.testing.assert_allclose(feats, est.extractor_features(images[:8]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats[:, :16], est.transform(images[:8]), rtol=1e-4, atol=1e-5)
    h = feats[:, 16:32]  # the pooled representation before its L2 normalisation
    np.testing.assert_allclose(feats[:, :16], h / np.linalg.norm(h, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)
    assert (feats[:, 32:] >= 0).all() and feats[:, 32:].max() > 0  # spatial standard deviations


def test_fine_tuning_methods_start_from_the_n2d_partition_and_accept_a_pretrained_ae() -> None:
    from imgclust.deep.autoencoder import AutoencoderClusterer

    ae = AutoencoderClusterer(n_clusters=4)
    for method in ("dec", "idec", "nnc"):
        est = create_deep(method, k=4, seed=0, device="cpu")
        assert est.get_params()["init"] == "umap" and est.get_params()["autoencoder"]["arch"] == "convae"
        given = create_deep(method, k=4, seed=0, device="cpu", pretrained=ae, init="kmeans")
        params = given.get_params()
        assert params["pretrained"] is ae and params["autoencoder"] is None and params["init"] == "kmeans"


def test_refit_recipe_matches_how_each_method_clusters() -> None:
    """The refine flow refits a trained encoder's features as the method itself clusters them."""
    from imgclust.deep.embedding import EmbeddingClusterer
    from imgclust.deep.methods import N2D, refit_recipe

    for method in ("n2d", "n2d-scae", "n2d-ensemble", "simclr"):
        recipe = refit_recipe(method, 7, 3)
        reduce, cluster = recipe.reduce, recipe.cluster
        assert (reduce.umap_components, reduce.umap_neighbors) == (7, 20)
        assert (cluster.method, cluster.k, cluster.seed, cluster.consensus_runs) == ("gmm", 7, 3, N2D["consensus_runs"])
        est = create_deep(method, k=7, seed=3)
        if isinstance(est, EmbeddingClusterer):  # the estimator's own last stage is the same recipe
            own = est.recipe()
            assert (own.reduce.method, own.reduce.umap_components, own.reduce.umap_neighbors) == \
                (reduce.method, reduce.umap_components, reduce.umap_neighbors)
            assert (own.cluster.method, own.cluster.k, own.cluster.seed, own.cluster.consensus_runs) == \
                (cluster.method, cluster.k, cluster.seed, cluster.consensus_runs)
    for method, spherical in (("scae", True), ("ascae", True), ("convae", False), ("dec", False)):
        recipe = refit_recipe(method, 7, 3)
        assert recipe.reduce.umap_components is None
        assert (recipe.cluster.method, recipe.cluster.spherical) == ("kmeans", spherical)
    recipe = refit_recipe("simclr", 7, 3, {"clusterer": "scan", "encoder": "resnet18"})
    assert recipe.reduce.umap_components is None and recipe.reduce.method == "none"
    assert (recipe.cluster.method, recipe.cluster.k) == ("scan", 7)
    assert recipe.cluster.scan_whiten  # refitted as it was trained: neighbours after whitening
    assert create_deep("simclr", k=7, clusterer="scan").umap_components is None  # SCAN needs the representation
    est = create_deep("n2d-scae", k=5, epochs=1, seed=0, device="cpu")

    params = est.get_params()
    assert (params["arch"], params["umap_components"], params["clusterer"], params["consensus_runs"]) == \
        ("scae", 5, "gmm", N2D["consensus_runs"])


def test_refine_command_offers_every_deep_method() -> None:
    """The CLI keeps a literal list (so ``--help`` does not import torch); it must name every method."""
    from imgclust_cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    refine = sub.choices["refine"]  # type: ignore[index]
    method = next(a for a in refine._actions if a.dest == "method")
    assert tuple(method.choices) == DEEP_METHODS


def test_check_deep_options_refuses_bad_options_before_work() -> None:
    from imgclust.deep.methods import check_deep_options

    check_deep_options("simclr", 10, {"encoder": "resnet18", "clusterer": "scan"})
    check_deep_options("dec", 10, None)
    with pytest.raises(ConfigError, match="bad options for deep method 'dec'"):
        check_deep_options("dec", 10, {"colour": "red"})
    with pytest.raises(ConfigError, match="clusterer must be one of"):
        check_deep_options("convae", 10, {"clusterer": "dbscan"})
    with pytest.raises(ConfigError, match="may not set epochs, seed"):
        check_deep_options("simclr", 10, {"seed": 1, "epochs": 5})
    with pytest.raises(ConfigError, match="bad options for deep method 'simclr'"):
        check_deep_options("simclr", 10, {"lr": "fast"})  # a wrong type is a ConfigError too, not a TypeError
    # a recipe's own settings may be overridden; SCAN drops the recipe's UMAP unless told otherwise
    check_deep_options("n2d", 10, {"clusterer": "scan"})
    n2d = create_deep("n2d", k=10, clusterer="scan").get_params()
    assert (n2d["clusterer"], n2d["umap_components"], n2d["arch"]) == ("scan", None, "convae")
    assert create_deep("n2d", k=10, umap_neighbors=5).get_params()["umap_neighbors"] == 5
