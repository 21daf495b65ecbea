"""Fit sizes capped to what a small corpus supports, and the one refusal: fewer rows than clusters.

The defaults are made for corpora of thousands of images (50 PCA components, UMAP with 15 neighbours into 10
dimensions, HDBSCAN clusters of at least 50 rows, SCAN's 20 neighbours). A folder of 17 images supports less,
and :func:`cap_to_data` lowers each size that depends on the rows ``n`` (or the feature dimension ``D``) to the
largest value the data supports:

- PCA components ``<= min(D, n - 1)``: ``n`` centred rows span at most ``n - 1`` directions (the rest would have
  zero variance, and IncrementalPCA refuses a first batch with fewer rows than components);
- UMAP neighbours ``<= m - 1`` and dimensions ``<= m - 2`` for a fit sample of ``m = min(n, fit_sample)`` rows
  (UMAP's spectral initialisation takes ``dimensions + 1`` eigenvectors of the ``m x m`` graph); no UMAP below
  3 rows;
- HDBSCAN's ``min_cluster_size <= max(2, m // 2)`` (a larger minimum leaves room for one cluster at most);
- SCAN's neighbours ``<= m - 1``.

The number of clusters ``k`` (when given rather than chosen, ``k="auto"``) is what the user asked and is never changed: fewer rows than clusters cannot work
and is refused (:func:`check_enough_rows`), by the pipeline before any extraction (manifest rows) and by the fit
(rows with features, the quarantine named). :func:`imgclust.models.model.fit_model` applies the caps where it fits, logs
them in one warning and records them in ``model.json`` (``capped``); the configuration recorded beside them is
the one asked for, so a refit on a grown corpus uses the full sizes again.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from imgclust.cluster.density import MIN_ROWS as DENSITY_MIN_ROWS
from imgclust.cluster.registry import clusterer_spec
from imgclust.config import ClusterConfig, Recipe, ReduceConfig, fixed_k
from imgclust.exceptions import ConfigError

__all__ = ["FitSizes", "PCA_MAX_COMPONENTS", "cap_embedding_fit", "cap_to_data",
           "check_enough_rows", "min_rows"]

PCA_MAX_COMPONENTS = 256
"""Components fitted before a ``variance_target`` chooses among them (the PCA estimators' ``max_components``)."""
UMAP_MIN_ROWS = 3
"""UMAP cannot embed fewer rows (one neighbour and one dimension need three)."""


def _scan_neighbors_default() -> int:
    from imgclust.cluster.scan import ScanClusterer

    return int(inspect.signature(ScanClusterer.__init__).parameters["n_neighbors"].default)


def min_rows(cluster: ClusterConfig) -> int:
    """Fewest rows ``cluster`` can be fitted on: ``k`` (one per cluster), ``k_min`` when k is chosen
    (``k="auto"``); for HDBSCAN, which has no k, 2 with a given ``min_cluster_size``, else what the density rule
    needs (:data:`imgclust.cluster.density.MIN_ROWS`)."""
    if cluster.method == "hdbscan":  # the density rule's own minimum
        return 2 if cluster.min_cluster_size is not None else DENSITY_MIN_ROWS
    k = fixed_k(cluster)
    return cluster.k_min if k is None else k


def check_enough_rows(n_rows: int, cluster: ClusterConfig, *, what: str) -> None:
    """Raise :class:`ConfigError` when ``n_rows`` cannot be clustered as ``cluster`` asks (fewer rows than
    :func:`min_rows`). ``what`` says whose rows these are (``"the manifest holds 7 images"``)."""
    need = min_rows(cluster)
    if n_rows >= need:
        return
    if cluster.method == "hdbscan":
        raise ConfigError(f"{what}, but HDBSCAN needs at least {need}: add images")
    if fixed_k(cluster) is None:
        raise ConfigError(f"{what}, but choosing k needs at least k_min={need} images: add images or lower k_min")
    raise ConfigError(f"{what}, but k={cluster.k} clusters need at least {cluster.k} images: ask for fewer "
                      f"clusters (--k / ClusterConfig.k, at most {max(n_rows, 0)}) or add images")


@dataclass(frozen=True)
class FitSizes:
    """The sizes a fit uses, given its rows (:func:`cap_to_data`).

    ``pca_components`` (None: variance target, or no PCA), ``pca_max_components``, ``umap_components`` (None: no
    UMAP; HDBSCAN's default included), ``umap_neighbors``, ``min_cluster_size`` (HDBSCAN; None: chosen for the embedding,
    :mod:`imgclust.cluster.density`), ``scan_neighbors``;
    ``capped`` maps each lowered setting to ``(asked, used)``.
    """

    n_rows: int
    n_features: int
    pca_components: int | None
    pca_max_components: int
    umap_components: int | None
    umap_neighbors: int
    min_cluster_size: int | None
    scan_neighbors: int
    capped: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: what was capped to what, and why."""
        changes = ", ".join(f"{name} {asked} -> {'none' if used is None else used}"
                            for name, (asked, used) in self.capped.items())
        return (f"small corpus: {self.n_rows} rows of {self.n_features} features support less than the "
                f"configuration asks; capped {changes}")

    def record(self) -> dict[str, Any]:
        """What ``model.json`` keeps under ``capped`` (empty ``values`` when nothing was capped)."""
        return {"rows": self.n_rows, "features": self.n_features,
                "values": {name: {"asked": asked, "used": used} for name, (asked, used) in self.capped.items()}}


def cap_to_data(reduce: ReduceConfig, cluster: ClusterConfig, *, n_rows: int, n_features: int) -> FitSizes:
    """The sizes to fit ``reduce`` + ``cluster`` on ``n_rows`` rows of ``n_features`` features (module
    docstring for the rules). Raises :class:`ConfigError` when there are fewer rows than :func:`min_rows`."""
    check_enough_rows(n_rows, cluster, what=f"the fit has {n_rows} rows")
    if n_features < 1:
        raise ConfigError(f"the features have {n_features} dimensions; re-extract them")
    capped: dict[str, tuple[int | None, int | None]] = {}

    def cap(name: str, asked: int, limit: int) -> int:
        if asked > limit:
            capped[name] = (asked, limit)
            return limit
        return asked

    n, m = n_rows, min(n_rows, cluster.fit_sample)
    pca_components: int | None = None
    pca_max = PCA_MAX_COMPONENTS
    if reduce.method != "none":
        if reduce.n_components is not None:
            pca_components = cap("reduce.n_components", reduce.n_components, min(n_features, n - 1))
        elif n - 1 < min(PCA_MAX_COMPONENTS, n_features):  # a variance target chooses among these
            pca_max = cap("PCA max_components", PCA_MAX_COMPONENTS, n - 1)
    asked_dims = reduce.umap_components or clusterer_spec(cluster.method).default_umap
    umap_dims: int | None = asked_dims
    neighbors = reduce.umap_neighbors
    if asked_dims is not None:
        if m < UMAP_MIN_ROWS:
            capped["reduce.umap_components"] = (asked_dims, None)
            umap_dims = None
        else:
            umap_dims = cap("reduce.umap_components", asked_dims, m - 2)
            neighbors = cap("reduce.umap_neighbors", neighbors, m - 1)
    min_size = cluster.min_cluster_size
    if cluster.method == "hdbscan" and min_size is not None:  # None: imgclust.cluster.density sizes it to the rows
        min_size = cap("cluster.min_cluster_size", min_size, max(2, m // 2))
    scan_neighbors = _scan_neighbors_default()
    if cluster.method == "scan":
        scan_neighbors = cap("SCAN n_neighbors", scan_neighbors, m - 1)
    return FitSizes(n_rows=n, n_features=n_features, pca_components=pca_components, pca_max_components=pca_max,
                    umap_components=umap_dims, umap_neighbors=neighbors, min_cluster_size=min_size,
                    scan_neighbors=scan_neighbors, capped=capped)


def cap_embedding_fit(n_rows: int, n_features: int, recipe: Recipe) -> FitSizes:
    """:func:`cap_to_data` for a deep method's own clustering of its embeddings ``(n_rows, n_features)``: ``recipe``
    (no linear reduction; UMAP, when it has one, fitted on every row). The methods validate their recipe's
    parameters themselves (one cluster is allowed there), so it comes unvalidated and every row is the clustering
    sample."""
    cluster = recipe.cluster.model_copy(update={"fit_sample": n_rows})
    return cap_to_data(recipe.reduce, cluster, n_rows=n_rows, n_features=n_features)
