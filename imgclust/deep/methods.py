"""One entry point for the deep-clustering methods: build by name, load by saved class.

Names: ``ascae``/``scae`` (the ASCAE paper's autoencoders + k-means), ``convae`` (stage 1 of Qian et al.,
2025), ``n2d`` (that ConvAE, then UMAP and a Gaussian mixture: McConville et al., ICPR 2020), ``n2d-scae`` (the
same last stages on the F layer of the SCAE), ``n2d-ensemble`` (pixels + several SCAE encoders, one UMAP + GMM
runs per view, one pooled consensus: :mod:`imgclust.deep.ensemble`), ``simclr`` (a contrastively trained conv
encoder, then the same UMAP + GMM stages: :mod:`imgclust.deep.contrastive`), ``dec``/``idec`` (Xie et al., 2016;
Guo et al., 2017), ``nnc`` (Qian et al., 2025: neighbour consistency + sample stability), ``deepcluster``
(Caron et al., 2018). The papers are cited in full in the modules that implement them.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from typing import Any, Literal

import fsspec

from imgclust.config import AUTO_K, ClusterConfig, Recipe, ReduceConfig
from imgclust.deep.base import DeepEstimator
from imgclust.exceptions import ConfigError, CorruptArtifactError, UnknownNameError

log = logging.getLogger(__name__)

DeepMethod = Literal["ascae", "scae", "convae", "n2d", "n2d-scae", "n2d-ensemble", "simclr", "dec", "idec", "nnc",
                     "deepcluster"]
DEEP_METHODS: tuple[str, ...] = ("ascae", "scae", "convae", "n2d", "n2d-scae", "n2d-ensemble", "simclr", "dec", "idec",
                                 "nnc", "deepcluster")
N2D_CONSENSUS_RUNS = 8
N2D: dict[str, Any] = {"arch": "convae", "umap_components": None, "umap_neighbors": 20, "clusterer": "gmm",
                       "consensus_runs": N2D_CONSENSUS_RUNS}
"""``n2d``: the ConvAE embedding (size k), UMAP to k dims (20 neighbours, min_dist 0) and a full-covariance
GMM, McConville et al.'s recipe (``umap_components=None`` here means k). Ours: the GMM is the
evidence-accumulation consensus of 8 EM runs (:class:`~imgclust.cluster.gmm.GaussianMixtureClusterer`), chosen on
a Fashion-MNIST *train* subset."""
N2D_RECIPES: dict[str, dict[str, Any]] = {"n2d": N2D, "n2d-scae": {**N2D, "arch": "scae"}}
"""Methods that cluster UMAP coordinates of an encoder's features with the GMM consensus: ``n2d`` (ConvAE
embedding) and ``n2d-scae`` (ours: SCAE's 50-d F layer, from the ASCAE paper, trained on raw pixels with
its paper's loss); on a Fashion-MNIST *train* subset the two were within noise of each other."""
_CLASSES = {"AutoencoderClusterer": "imgclust.deep.autoencoder", "DEC": "imgclust.deep.dec",
            "MultiViewClusterer": "imgclust.deep.ensemble", "ContrastiveClusterer": "imgclust.deep.contrastive",
            "NeighbourConsistency": "imgclust.deep.nnc", "DeepCluster": "imgclust.deep.deepcluster"}


AUTO_K_UMAP_DIMS = 10
"""UMAP dimensions of the N2D-style refits when k is chosen after the embedding (``k="auto"``); N2D embeds into
as many dimensions as clusters (McConville et al. 2020), and 10 is that for the 10-class sets it was made on."""


AUTO_K_METHODS = ("simclr", "convae", "n2d", "dec", "idec", "nnc")
"""Methods whose network does not depend on k, so ``create_deep(method, k="auto")`` chooses k with the pipeline's
sweep (:mod:`imgclust.cluster.choose_k`) on a trained embedding: after training (``simclr``, ``convae``, ``n2d``)
or after pretraining, where the fine-tuners place their initial centroids (``dec``, ``idec``, ``nnc``). Their
ConvAE then embeds into :data:`AUTO_K_UMAP_DIMS` dims (it is k-wide when k is given)."""


def create_deep(method: str, *, k: int | Literal["auto"], epochs: int = 20, max_iter: int = 2000, seed: int = 0,
                device: str = "auto", checkpoint_dir: str | None = None, **extra: Any) -> DeepEstimator:
    """The estimator for ``method`` with the project's defaults; ``extra`` overrides parameters.

    Training names (``epochs``, ``max_iter``, ``seed``, ``device``, ``checkpoint_dir`` and, in ``extra``,
    ``batch_size``, ``lr``, ``checkpoint_every``) go into the estimator's
    :class:`~imgclust.deep.training.TrainingConfig` (``training=``); the rest are method parameters.

    ``epochs`` is the autoencoder (pre)training length; ``max_iter`` the fine-tuning steps of
    DEC/IDEC/NNC. Fine-tuning methods pretrain their conv autoencoder (ConvAE) themselves and, by
    default here, start from the N2D partition of its embedding (``init="umap"``: UMAP + k-means,
    McConville et al., ICPR 2020; see :func:`imgclust.deep.dec.initial_centroids`) instead of the
    papers' k-means on the embedding: on a Fashion-MNIST *train* subset (used once to choose this,
    never the test split) the N2D start partition was more accurate than k-means on the same ConvAE
    embedding, and DEC kept that lead. Pass ``init="kmeans"`` for the papers' initialisation.

    ``k="auto"`` (methods of :data:`AUTO_K_METHODS`, whose network does not depend on k): k is chosen by the
    pipeline's sweep on the (UMAP-mapped, :data:`AUTO_K_UMAP_DIMS` dims) embeddings, after training or, for the
    fine-tuners, after pretraining; the fitted estimator's ``n_clusters_`` is the chosen k and ``k_sweep_`` the
    sweep. The others (k-wide layers or k pseudo-labels in training) raise :class:`ConfigError`.
    """
    if method not in DEEP_METHODS:
        raise UnknownNameError(f"unknown deep method {method!r}; choose one of {', '.join(DEEP_METHODS)}")
    common: dict[str, Any] = {"seed": seed, "device": device, "checkpoint_dir": checkpoint_dir}
    pretrain: dict[str, Any] = {"arch": "convae", "epochs": epochs}
    dims: int | Literal["auto"] = k  # UMAP dimensions of the N2D-style last stages
    if k == AUTO_K:
        if method not in AUTO_K_METHODS:
            raise ConfigError(f"deep method {method!r} trains with k (it cannot choose it afterwards); give k, or "
                              f"use one of {', '.join(AUTO_K_METHODS)} with k='auto', or let the pipeline choose k "
                              "(imgclust run without --k) and refine that model (imgclust refine trains with its k "
                              "and chooses again on the refit)")
        dims = pretrain["embed_dim"] = AUTO_K_UMAP_DIMS  # the ConvAE's embedding is k-wide when k is given
        if method in ("convae", "n2d"):
            extra = {"embed_dim": AUTO_K_UMAP_DIMS, **extra}
    if method == "n2d-ensemble":
        from imgclust.deep.ensemble import MultiViewClusterer

        return MultiViewClusterer.with_training(n_clusters=k, epochs=epochs, **common, **extra)
    if method == "simclr":
        from imgclust.deep.contrastive import ContrastiveClusterer

        return ContrastiveClusterer.with_training(n_clusters=k, epochs=epochs,
                                                  **_with_clusterer({"umap_components": dims, **common}, extra))
    if method in ("ascae", "scae", "convae", *N2D_RECIPES):
        from imgclust.deep.autoencoder import AutoencoderClusterer

        arch: dict[str, Any] = {"arch": method}
        if method in N2D_RECIPES:
            arch = {**N2D_RECIPES[method], "umap_components": dims}
        return AutoencoderClusterer.with_training(n_clusters=k, epochs=epochs,
                                                  **_with_clusterer({**arch, **common}, extra))
    finetune: dict[str, Any] = {"init": "umap", "autoencoder": pretrain, **common, **extra}
    if "pretrained" in extra:
        finetune.pop("autoencoder")
    if method in ("dec", "idec"):
        from imgclust.deep.dec import DEC

        return DEC.with_training(n_clusters=k, idec=method == "idec", max_iter=max_iter, **finetune)
    if method == "nnc":
        from imgclust.deep.nnc import NeighbourConsistency

        return NeighbourConsistency.with_training(n_clusters=k, max_iter=max_iter, **finetune)
    from imgclust.deep.deepcluster import DeepCluster

    return DeepCluster.with_training(n_clusters=k, epochs=epochs, **common, **extra)


def _with_clusterer(defaults: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``extra``; ``clusterer="scan"`` without an explicit ``umap_components`` drops the
    recipe's UMAP (SCAN clusters the embedding itself)."""
    params = {**defaults, **extra}
    if extra.get("clusterer") == "scan" and "umap_components" not in extra:
        params["umap_components"] = None
    return params


OWN_ARGUMENTS = ("k", "n_clusters", "epochs", "max_iter", "seed", "device", "checkpoint_dir")
"""What the refine flow sets itself (its own parameters / CLI flags), so ``options`` may not name them."""


def check_deep_options(method: str, k: int | Literal["auto"], options: dict[str, Any] | None) -> None:
    """ConfigError, before any work, unless ``create_deep(method, k=k, **options)`` builds a valid estimator
    (unknown option names, names the refine flow sets itself, bad values)."""
    clash = sorted(set(options or {}) & set(OWN_ARGUMENTS))
    if clash:
        raise ConfigError(f"options may not set {', '.join(clash)}: the refine flow sets them (use its own "
                          "parameters, e.g. --epochs, --k, --seed, --device, --max-iter)")
    try:
        create_deep(method, k=k, **(options or {}))._validate_params()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad options for deep method {method!r}: {exc}; see its class's parameters") from exc


def refit_recipe(method: str, k: int | str, seed: int, options: dict[str, Any] | None = None) -> Recipe:
    """How the pipeline clusters the features a trained ``method``'s encoder extracts (refine flow):
    ``n2d`` / ``n2d-scae`` / ``simclr`` as they were trained (UMAP to k dims with 20 neighbours, or
    :data:`AUTO_K_UMAP_DIMS` with ``k="auto"``, then the GMM consensus);
    ``n2d-ensemble`` the same on its encoder's output, the scaled views side by side (one joint UMAP: the
    pipeline's refit has one feature space, where the estimator maps each view on its own); every other method
    k-means on the embeddings (what its own ``labels_`` come from), cosine k-means for ASCAE/SCAE
    (their :data:`~imgclust.deep.autoencoder.ARCH_DEFAULTS`). A method trained with ``options``
    ``{"clusterer": "scan"}`` is refitted with SCAN's head on the features, neighbours found after whitening as
    in training (:mod:`imgclust.cluster.scan`)."""
    features = ReduceConfig(method="none", n_components=None)
    if (options or {}).get("clusterer") == "scan":
        return Recipe(reduce=features, cluster=ClusterConfig(method="scan", k=k, seed=seed, scan_whiten=True))
    if method in N2D_RECIPES or method in ("n2d-ensemble", "simclr"):
        dims = AUTO_K_UMAP_DIMS if k == AUTO_K else max(2, int(k))
        return Recipe(reduce=ReduceConfig(method="none", n_components=None, umap_components=dims, umap_neighbors=20),
                      cluster=ClusterConfig(method="gmm", k=k, seed=seed, consensus_runs=N2D_CONSENSUS_RUNS))
    from imgclust.deep.autoencoder import ARCH_DEFAULTS

    spherical = bool(ARCH_DEFAULTS.get(method, {}).get("spherical", False))
    return Recipe(reduce=features, cluster=ClusterConfig(k=k, seed=seed, n_redo=5, spherical=spherical))


def load_deep(location: str | os.PathLike[str]) -> DeepEstimator:
    """Load a deep estimator saved at ``location`` (folder or URL), whatever its class."""
    fs, root = fsspec.core.url_to_fs(os.fspath(location))
    try:
        name = json.loads(fs.cat_file(f"{root.rstrip('/')}/estimator.json"))["class"]
    except FileNotFoundError as err:
        raise CorruptArtifactError(f"{location} has no estimator.json: not a saved deep model (or half-written)") \
            from err
    if name not in _CLASSES:
        raise ConfigError(f"{location} holds a {name}, not a deep clusterer ({', '.join(_CLASSES)})")
    cls = getattr(importlib.import_module(_CLASSES[name]), name)
    return cls.load(os.fspath(location))  # type: ignore[no-any-return]
