"""The one registry of clustering methods: what each accepts, and how it is fitted in the model's clustering space.

A method is a :class:`ClustererSpec`: its name, whether it finds its own number of clusters, whether it accepts UMAP
coordinates, the ``ClusterConfig`` fields only it reads, the clusterer ``k="auto"`` sweeps with, and a ``fit``
function from a :class:`ClusterFitInput` to a :class:`FittedClusterer`. Everything that names methods reads this
registry: ``ClusterConfig`` validation, the CLI's ``--method`` choices, the Prefect forms, :func:`imgclust.models.model.fit_model`,
the k sweep and the nightly novelty rule.

Adding a method is one module that calls :func:`register_clusterer` (its estimator registered with
:func:`imgclust.estimator.register_estimator` so model versions load it). Modules outside the package are named in
the ``IMGCLUST_PLUGINS`` environment variable (:mod:`imgclust.plugins`) and imported by every process that looks a
method up: the CLI, served flows and Dask workers alike.

The fitted estimator is the model's ``clusterer`` part. It must offer ``predict(Z)`` ``(n, d) -> (n,)`` int64;
``predict_proba(Z)`` ``(n, k)`` when it has its own confidence (a posterior), or ``predict_with_strength(Z)``
(labels with -1 for noise, and a membership strength) when it leaves rows unassigned (HDBSCAN).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ValidationError

from imgclust.exceptions import ConfigError, UnknownNameError
from imgclust.plugins import PLUGINS_ENV, load_plugins

if TYPE_CHECKING:
    from imgclust.batches import BatchSource
    from imgclust.config import ClusterConfig
    from imgclust.estimator import Estimator
    from imgclust.models.capping import FitSizes

log = logging.getLogger(__name__)

__all__ = ["ClustererSpec", "ClusterFitInput", "FittedClusterer", "register_clusterer", "clusterer_spec",
           "list_methods", "option_owners"]



@dataclass(frozen=True)
class ClusterFitInput:
    """What a method's ``fit`` gets.

    ``sample``: ``(m, d)`` float32, a seeded sample of at most ``config.fit_sample`` rows of the clustering space;
    ``stream``: every row of that space as a :data:`~imgclust.batches.BatchSource` when a pass is cheap (no UMAP),
    else None; ``k``: the number of clusters (0 for a method that finds its own); ``sizes``: the sizes capped to the
    rows (:mod:`imgclust.models.capping`); ``init``: ``(k, d)`` warm-start centroids or None."""

    sample: np.ndarray
    stream: BatchSource | None
    n_rows: int
    k: int
    config: ClusterConfig
    sizes: FitSizes
    init: np.ndarray | None = None

    @property
    def options(self) -> Any:
        """``config.options`` as the method's own typed options (:attr:`ClustererSpec.options_type`); None for a
        method without them."""
        return method_options(self.config.method, self.config.options)


@dataclass(frozen=True)
class FittedClusterer:
    """A method's result: the fitted ``estimator`` (saved as the model's clusterer), ``centroids`` ``(k, d)``
    float32 in the clustering space, ``sample_labels`` ``(m,)`` int64 of the input's sample rows (-1 = noise), and
    ``meta``: entries ``model.json`` records about the fit."""

    estimator: Estimator
    centroids: np.ndarray
    sample_labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClustererSpec:
    """A clustering method.

    ``finds_k``: it finds its own number of clusters (``k``, ``k_min``, ``k_max`` unused); ``accepts_umap``: False
    refuses UMAP coordinates; ``default_umap``: UMAP dimensions used when the recipe asks for none (None: no UMAP);
    ``options``: ``ClusterConfig`` fields only this method reads (setting one for another method is refused);
    ``options_type``: the method's own options, a pydantic model: ``ClusterConfig.options`` (a JSON object, the CLI's
    ``--cluster-option NAME=VALUE``) is validated by it before any work and reaches ``fit`` typed as
    :attr:`ClusterFitInput.options`, so a method from a plugin adds its parameters without touching the core;
    ``sweep``: the clusterer :func:`imgclust.cluster.choose_k.choose_k` fits per k (``kmeans`` or ``gmm``); ``warm_starts``:
    ``fit`` uses ``init`` centroids (a refit from the previous version); ``estimator``: the name of the registered
    estimator class ``fit`` returns (:func:`imgclust.estimator.register_estimator`; what the model version saves)."""

    name: str
    summary: str
    fit: Callable[[ClusterFitInput], FittedClusterer]
    finds_k: bool = False
    accepts_umap: bool = True
    default_umap: int | None = None
    options: tuple[str, ...] = ()
    sweep: str = "kmeans"
    warm_starts: bool = False
    options_type: type[BaseModel] | None = None
    estimator: str | None = None


_REGISTRY: dict[str, ClustererSpec] = {}


def register_clusterer(spec: ClustererSpec) -> ClustererSpec:
    """Add ``spec`` to the registry (a name registered again is replaced, with a warning); returns it."""
    if not spec.name or spec.name != spec.name.strip() or "," in spec.name:
        raise ConfigError(f"a clustering method needs a plain name, got {spec.name!r}")
    if spec.sweep not in ("kmeans", "gmm"):
        raise ConfigError(f"{spec.name}: sweep must be 'kmeans' or 'gmm', got {spec.sweep!r}")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        log.warning("clustering method %r registered again; the new one replaces it", spec.name)
    _REGISTRY[spec.name] = spec
    return spec


def list_methods() -> list[str]:
    """Names of every registered clustering method, built-in ones first."""
    load_plugins()
    return list(_REGISTRY)


def option_owners() -> dict[str, str]:
    """``ClusterConfig`` field -> the one method that reads it (from the specs' ``options``)."""
    return {name: spec.name for spec in _REGISTRY.values() for name in spec.options}


def method_options(method: str, values: dict[str, Any]) -> Any:
    """``values`` validated by ``method``'s :attr:`~ClustererSpec.options_type` (an instance of it, defaults filled);
    None for a method without one. ConfigError naming the method and the bad option."""
    spec = clusterer_spec(method)
    if spec.options_type is None:
        if values:
            raise ConfigError(f"method {method!r} takes no options of its own (got {', '.join(sorted(values))}); "
                              "set its ClusterConfig fields instead")
        return None
    try:
        return spec.options_type.model_validate(values)
    except ValidationError as err:
        bad = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"bad options for method {method!r}: {bad}") from err


def clusterer_spec(name: str) -> ClustererSpec:
    """The registered method ``name``; :class:`UnknownNameError` lists the known ones."""
    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown clustering method {name!r}; choose one of {list_methods()} (a method "
                               f"from another module: name the module in {PLUGINS_ENV})")
    return _REGISTRY[name]


# ----------------------------------------------------------------------------- the built-in methods


def _fit_kmeans(fi: ClusterFitInput) -> FittedClusterer:
    """Faiss k-means (or the torch twin, ``backend="torch"``): streams every row when ``fi.stream`` is given;
    after UMAP, trains on the sample."""
    from imgclust.cluster.classic import FaissKMeans

    cfg = fi.config
    params: dict[str, Any] = {"n_clusters": fi.k, "n_iter": cfg.n_iter, "n_redo": cfg.n_redo,
                              "spherical": cfg.spherical, "seed": cfg.seed}
    if cfg.backend == "torch":
        from imgclust.cluster.kmeans_torch import TorchKMeans

        est: FaissKMeans = TorchKMeans(device=cfg.device, **params)
    else:
        est = FaissKMeans(**params)
    est.fit(fi.stream if fi.stream is not None else fi.sample, init_centroids=fi.init)
    return FittedClusterer(est, est.cluster_centers_, est.predict(fi.sample))


def _fit_hdbscan(fi: ClusterFitInput) -> FittedClusterer:
    """HDBSCAN on the sample with parameters chosen for it (:func:`imgclust.cluster.density.hdbscan_for`) unless
    ``min_cluster_size`` is given; records its parameters and the noise share."""
    from imgclust.cluster.classic import cluster_means
    from imgclust.cluster.density import hdbscan_for

    est = hdbscan_for(fi.sample, fi.sizes.min_cluster_size, fi.config.seed).fit(fi.sample)
    meta: dict[str, Any] = {"hdbscan": {name: getattr(est, name) for name in (
        "min_cluster_size", "min_samples", "cluster_selection_method", "cluster_selection_epsilon")},
        "noise_share": round(float(np.mean(est.labels_ < 0)), 4)}
    log.info("HDBSCAN: %d clusters, %.1f%% of the %d fitted rows are noise (given their nearest cluster with a "
             "low confidence)", est.n_clusters_, 100 * meta["noise_share"], len(est.labels_))
    return FittedClusterer(est, cluster_means(fi.sample, est.labels_, est.n_clusters_), est.labels_, meta)


def _fit_agglomerative(fi: ClusterFitInput) -> FittedClusterer:
    """Ward (scikit-learn) agglomerative clustering of the sample."""
    from imgclust.cluster.classic import AgglomerativeClusterer

    est = AgglomerativeClusterer(n_clusters=fi.k).fit(fi.sample)
    return FittedClusterer(est, est.cluster_centers_, est.labels_)


def _fit_gmm(fi: ClusterFitInput) -> FittedClusterer:
    """A full-covariance Gaussian mixture on the sample (``consensus_runs`` > 1: evidence accumulation)."""
    from imgclust.cluster.gmm import GaussianMixtureClusterer

    est = GaussianMixtureClusterer(n_clusters=fi.k, fit_sample=None, random_state=fi.config.seed,
                                   consensus_runs=fi.config.consensus_runs).fit(fi.sample)
    return FittedClusterer(est, est.cluster_centers_, est.predict(fi.sample))


def _fit_scan(fi: ClusterFitInput) -> FittedClusterer:
    """SCAN's neighbour-consistency head on the sample's features (no UMAP)."""
    from imgclust.cluster.classic import cluster_means
    from imgclust.cluster.scan import ScanClusterer

    est = ScanClusterer(n_clusters=fi.k, n_neighbors=fi.sizes.scan_neighbors, whiten=fi.config.scan_whiten,
                        fit_sample=None, random_state=fi.config.seed).fit(fi.sample)
    return FittedClusterer(est, cluster_means(fi.sample, est.labels_, fi.k), est.labels_)


HDBSCAN_UMAP_COMPONENTS = 10
"""UMAP dimensions HDBSCAN runs on when the recipe asks for none (density estimates need few dimensions)."""

for _spec in (
    ClustererSpec("kmeans", "Faiss k-means (torch backend on a GPU)", _fit_kmeans, warm_starts=True,
                  estimator="FaissKMeans"),
    ClustererSpec("hdbscan", "HDBSCAN on UMAP coordinates; finds its own number of clusters", _fit_hdbscan,
                  finds_k=True, default_umap=HDBSCAN_UMAP_COMPONENTS, estimator="HDBSCANClusterer"),
    ClustererSpec("agglomerative", "Ward agglomerative clustering of the sample", _fit_agglomerative,
                  estimator="AgglomerativeClusterer"),
    ClustererSpec("gmm", "full-covariance Gaussian mixture (N2D's clusterer)", _fit_gmm, options=("consensus_runs",),
                  sweep="gmm", estimator="GaussianMixtureClusterer"),
    ClustererSpec("scan", "SCAN's neighbour-consistency head on the features (no UMAP)", _fit_scan,
                  accepts_umap=False, options=("scan_whiten",), estimator="ScanClusterer"),
):
    register_clusterer(_spec)
