"""A fitted model version: reducer (+ optional UMAP) + clusterer + novelty score + stable ids.

Stored under ``models/<model_id>/`` as ``reducer/``, ``umap/``, ``clusterer/``, ``novelty/``, ``tree/`` (the merge
tree of the clusters, :mod:`imgclust.cluster.hierarchy`) estimator folders, ``model_arrays.npz`` (thresholds, stable ids, per-cluster centroids in the clustering space) and
``model.json`` written last (its presence means the version is complete; its ``novelty`` entry records the
score, rate and threshold; ``k_sweep`` how ``k="auto"`` chose k). ``models/CURRENT`` names the promoted version and is replaced atomically.

Assignment of one feature row ``x`` (D,): ``z = umap(pca(x))``; the clusterer gives the raw cluster
``c`` (HDBSCAN: approximate_predict, -1 = noise, and a noise row is given its nearest centroid's cluster with a low
confidence, :data:`NOISE_CONFIDENCE`); the distance ``d`` is ``||z - mu_c||`` to that cluster's centroid. Novelty is scored before UMAP (:mod:`imgclust.models.novelty`): ``is_novel`` when the
:class:`~imgclust.models.novelty.NoveltyScorer` score exceeds its split-conformal threshold at the target false-novel
rate. ``cluster_id = stable_ids[c]``, or -1 when novel. Models without a novelty part (fitted before it,
or on too few rows) keep the per-cluster rule: novel when noise or ``d > threshold_c``, the
``novelty_quantile`` of the fit sample's distances in cluster c.
Confidence: HDBSCAN's membership strength, a Gaussian mixture's posterior of ``c``, otherwise
``1 - d_1 / d_2`` (nearest vs second-nearest centroid).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgclust.batches import ArrayOrSource, BatchSource, as_batch_source, columns_of, sample_rows
from imgclust.cluster.classic import squared_distances
from imgclust.cluster.hierarchy import ClusterTree
from imgclust.config import ClusterConfig, ExtractConfig, Recipe, ReduceConfig
from imgclust.estimator import Estimator, load_estimator
from imgclust.exceptions import ConfigError, CorruptArtifactError, StoreError
from imgclust.io import layout as layout
from imgclust.io.store import Store
from imgclust.models.capping import FitSizes, cap_to_data, check_enough_rows
from imgclust.models.novelty import NoveltyScorer, fit_novelty, novelty_rows
from imgclust.models.recipe import fit_clusters, fit_umap
from imgclust.progress import tracked
from imgclust.reduce.pca import ExactPCA, LinearProjection, ScatterStats, merge_all
from imgclust.reduce.streaming import StreamingPCA, UMAPReducer

log = logging.getLogger(__name__)

NOISE_CONFIDENCE = 0.5
"""HDBSCAN's noise rows get their nearest cluster with this share of the centroid margin ``1 - d_1 / d_2`` as
confidence: never more than half, so filtering on confidence drops them before confident members."""
_PARTS = ("reducer", "umap", "clusterer", "novelty", "tree")


def new_model_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"m{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def embed_rows(reducer: LinearProjection | None, umap: UMAPReducer | None, X: np.ndarray) -> np.ndarray:
    """Features ``(n, D)`` -> the clustering space ``(n, d)``: the reducer's projection, then UMAP's transform (each
    when present)."""
    Z = reducer.transform(X) if reducer is not None else np.ascontiguousarray(X, np.float32)
    return umap.transform(Z) if umap is not None else Z


@dataclass
class Assignment:
    """Labels of n rows: ``cluster_id`` int32 (stable, -1 novel/noise), ``raw`` int64 (clusterer's own
    index, -1 noise), ``distance`` float32, ``confidence`` float32 in [0, 1], ``is_novel`` bool,
    ``novelty_score`` float32 (NaN when the model has no novelty score)."""

    cluster_id: np.ndarray
    raw: np.ndarray
    distance: np.ndarray
    confidence: np.ndarray
    is_novel: np.ndarray
    novelty_score: np.ndarray


@dataclass
class ClusterModel:
    """One fitted model version (see module docstring)."""

    model_id: str
    extractor_key: str
    reducer: LinearProjection | None
    umap: UMAPReducer | None
    clusterer: Estimator  # a registered method's estimator (imgclust.cluster.registry)
    centroids: np.ndarray  # (k, d) in the clustering space
    thresholds: np.ndarray  # (k,) float32
    stable_ids: np.ndarray  # (k,) int32
    meta: dict[str, Any] = field(default_factory=dict)
    novelty: NoveltyScorer | None = None
    tree: ClusterTree | None = None

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def representation_dim(self) -> int | None:
        """The leading feature columns the model clusters when its features carry novelty statistics after
        them (``deep:`` extractors, :func:`~imgclust.io.features.feature_layout`); None: every column."""
        r = self.meta.get("representation_dim")
        return None if r is None else int(r)

    def representation(self, X: np.ndarray) -> np.ndarray:
        """Features (n, D) -> the columns the model clusters (n, D') (:attr:`representation_dim`).

        A model fitted on features without statistics refuses wider rows with a :class:`ConfigError` that says
        to refit (its extractor now appends statistics, e.g. a ``simclr`` model fitted before the ``deep:``
        extractor stored them)."""
        r = self.representation_dim
        if r is not None:
            return X[:, :r]
        first = next((p for p in (self.reducer, self.umap, self.clusterer) if p is not None), None)
        width = getattr(first, "n_features_in_", None)
        if width is not None and X.ndim == 2 and X.shape[1] > int(width):
            raise ConfigError(f"model {self.model_id} was fitted on {width}-column features ({self.extractor_key}); "
                              f"these rows have {X.shape[1]} columns: the extractor's output changed since (a "
                              "`deep:` extractor of a contrastive encoder now stores novelty statistics after the "
                              "representation). Refit on the new features: `imgclust recluster` or the refine flow")
        return X

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Features (n, D) -> clustering space (n, d)."""
        return embed_rows(self.reducer, self.umap, self.representation(X))

    def assign_embedded(self, Z: np.ndarray) -> Assignment:
        """Assign rows already in the clustering space (n, d)."""
        n = Z.shape[0]
        k = self.n_clusters
        est: Any = self.clusterer  # its confidence: a membership strength, a posterior, or the centroid margin
        own_confidence = hasattr(est, "predict_with_strength") or hasattr(est, "predict_proba")
        if hasattr(est, "predict_with_strength"):
            raw, strength = est.predict_with_strength(Z)
            confidence = strength.astype(np.float32)
        elif hasattr(est, "predict_proba"):
            posterior = est.predict_proba(Z)
            raw = posterior.argmax(axis=1)
            confidence = posterior[np.arange(n), raw].astype(np.float32)
        else:
            raw = est.predict(Z)
            confidence = np.ones(n, np.float32)
        raw = np.asarray(raw, np.int64)
        d2 = squared_distances(Z, self.centroids) if k else np.zeros((n, 0), np.float32)
        noise = raw < 0
        given = raw.copy()  # the cluster each row is given: HDBSCAN's noise gets its nearest centroid
        if k:
            given[noise] = d2[noise].argmin(axis=1)
        valid = given >= 0
        distance = np.full(n, np.nan, np.float32)
        distance[valid] = np.sqrt(d2[np.flatnonzero(valid), given[valid]])
        margin = np.ones(n, np.float32)
        if k > 1:
            part = np.sqrt(np.partition(d2, 1, axis=1)[:, :2])  # nearest and second nearest
            margin = (1.0 - part[:, 0] / np.maximum(part[:, 1], 1e-12)).astype(np.float32)
        if not own_confidence:
            confidence = margin
        confidence = np.where(noise, NOISE_CONFIDENCE * margin, confidence).astype(np.float32)
        is_novel = ~valid
        if self.novelty is None:  # the per-cluster rule of older models: noise is novel
            is_novel |= noise
        is_novel[valid] |= distance[valid] > self.thresholds[given[valid]]
        cluster_id = np.full(n, -1, np.int32)
        keep = ~is_novel
        cluster_id[keep] = self.stable_ids[given[keep]]
        return Assignment(cluster_id, raw, distance, np.clip(confidence, 0, 1), is_novel,
                          np.full(n, np.nan, np.float32))

    def novelty_input(self, X: np.ndarray) -> np.ndarray:
        """Features (n, D) -> the rows the novelty scorer scores (n, d): :func:`~imgclust.models.novelty.novelty_rows`
        for the ``knn`` score with the residual, the features themselves otherwise."""
        if self.novelty is None:
            raise StoreError(f"model {self.model_id} has no novelty score (fitted before it or on too few rows)")
        if self.novelty.kind == "knn" and self.novelty.residual:
            assert self.reducer is not None  # kind_for chose the residual only with a reducer
            return novelty_rows(self.reducer, self.representation(X))
        r = self.representation_dim
        if self.novelty.kind == "mahalanobis" and r is not None:
            return np.ascontiguousarray(X[:, r:], np.float32)  # the novelty statistics after the representation
        return np.ascontiguousarray(X, np.float32)

    def novelty_threshold(self, rate: float | None = None) -> float:
        """The calibrated threshold at the fitted rate, or at ``rate`` from the stored calibration scores."""
        if self.novelty is None:
            raise StoreError(f"model {self.model_id} has no novelty score (fitted before it or on too few rows)")
        return self.novelty.threshold_ if rate is None else self.novelty.threshold_for(rate)

    def assign(self, X: np.ndarray, *, novelty_rate: float | None = None) -> Assignment:
        """Features (n, D) -> :class:`Assignment`; ``novelty_rate`` overrides the fitted target false-novel rate
        (models with a novelty score only)."""
        a = self.assign_embedded(self.embed(X))
        if self.novelty is None:
            if novelty_rate is not None:
                raise ConfigError(f"model {self.model_id} has no calibrated novelty score, so a novelty rate cannot "
                                  "be set; refit it (imgclust recluster) to get one")
            return a
        a.novelty_score = self.novelty.score(self.novelty_input(X))
        a.is_novel = a.novelty_score > self.novelty_threshold(novelty_rate)
        a.cluster_id[a.is_novel] = -1
        return a

    def level_ids(self, n_groups: int) -> np.ndarray:
        """The stable id of each fitted cluster's group ``(k,)`` int32 when the cluster tree is cut into
        ``n_groups`` groups: a group takes the smallest stable id among its clusters."""
        if self.tree is None:
            raise StoreError(f"model {self.model_id} has no cluster tree (fitted before it); refit it "
                             "(imgclust recluster) to browse coarser levels")
        if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) \
                or not 1 <= n_groups <= self.n_clusters:
            raise ConfigError(f"level {n_groups!r} is outside 1..{self.n_clusters}: model {self.model_id} has "
                              f"{self.n_clusters} clusters, so its tree can be cut into 1 to {self.n_clusters} groups")
        groups = self.tree.cut(int(n_groups))
        smallest = {int(g): int(self.stable_ids[groups == g].min()) for g in np.unique(groups)}
        return np.array([smallest[int(g)] for g in groups], np.int32)

    def at_level(self, cluster_ids: np.ndarray, n_groups: int) -> np.ndarray:
        """Stable cluster ids ``(n,)`` -> the ids of their groups at ``n_groups`` (:meth:`level_ids`); -1 (novel,
        noise) and ids this model does not know stay -1."""
        table = dict(zip(self.stable_ids.tolist(), self.level_ids(n_groups).tolist(), strict=True))
        return np.fromiter((table.get(int(c), -1) for c in cluster_ids), np.int32, len(cluster_ids))

    # ---- persistence ---------------------------------------------------------------------
    def save(self, store: Store) -> str:
        """Write ``models/<model_id>/`` (model.json last); returns that folder's store path."""
        base = layout.model_dir(self.model_id)
        if store.exists(layout.model_json(self.model_id)):
            raise StoreError(f"model {self.model_id} already exists in {store.url}; model versions are immutable")
        parts: dict[str, str | None] = {}
        for name, est in zip(_PARTS, (self.reducer, self.umap, self.clusterer, self.novelty, self.tree), strict=True):
            if est is not None:
                est.save(store.path(layout.model_part(self.model_id, name)), fs=store.fs)
            parts[name] = type(est).__name__ if est is not None else None
        buf = io.BytesIO()
        np.savez(buf, centroids=self.centroids, thresholds=self.thresholds, stable_ids=self.stable_ids)
        store.write_bytes(layout.model_arrays(self.model_id), buf.getvalue())
        store.write_json(layout.model_json(self.model_id), {
            "model_id": self.model_id, "extractor_key": self.extractor_key, "parts": parts,
            "n_clusters": self.n_clusters, **self.meta})
        return base

    @classmethod
    def load(cls, store: Store, model_id: str) -> ClusterModel:
        base = layout.model_dir(model_id)
        if not store.exists(layout.model_json(model_id)):
            raise CorruptArtifactError(f"{store.uri(base)} has no model.json: the model is missing or half-written")
        info = store.read_json(layout.model_json(model_id))
        ests: dict[str, Estimator | None] = {}
        for name in _PARTS:
            part = store.path(layout.model_part(model_id, name))
            ests[name] = load_estimator(part, fs=store.fs) if info["parts"].get(name) else None
        try:
            arrays = np.load(io.BytesIO(store.read_bytes(layout.model_arrays(model_id))), allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CorruptArtifactError(f"{store.uri(base)}/model_arrays.npz is unreadable: {err}") from err
        meta = {k: v for k, v in info.items() if k not in ("model_id", "extractor_key", "parts", "n_clusters")}
        return cls(model_id=info["model_id"], extractor_key=info["extractor_key"],
                   reducer=ests["reducer"], umap=ests["umap"], clusterer=ests["clusterer"],  # type: ignore[arg-type]
                   centroids=arrays["centroids"], thresholds=arrays["thresholds"],
                   stable_ids=arrays["stable_ids"], meta=meta, novelty=ests["novelty"],  # type: ignore[arg-type]
                   tree=ests["tree"])  # type: ignore[arg-type]


WarmStart = Callable[[Callable[[np.ndarray], np.ndarray]], "np.ndarray | None"]
"""Given ``embed`` (features (n, D) -> clustering space (n, d)), return k-means init centroids (k, d) or None."""


def fit_model(source: ArrayOrSource, *, extractor_key: str, recipe: Recipe, model_id: str | None = None,
              warm_start: WarmStart | None = None, reducer: LinearProjection | None = None,
              n_rows: int | None = None, representation_dim: int | None = None) -> ClusterModel:
    """Fit ``recipe`` (reducer, optional UMAP, clusterer) on features ``(n, D)``: an array, or a stream of feature
    blocks (never all in memory at once).

    Pass 1 fits the reducer: IncrementalPCA (``ipca``) or exact PCA from scatter statistics
    (``pca``), unless an already fitted ``reducer`` is given (e.g. exact PCA from statistics summed
    on Dask workers, :func:`write_pca_statistics`). The stages after it are :mod:`imgclust.models.recipe`'s: UMAP
    and HDBSCAN fit on a seeded sample of ``cluster.fit_sample`` rows of the reduced stream; k-means trains on its
    own sample.

    ``n_rows``: the rows of ``source`` when known (:func:`fit_from_store` reads the shards' Parquet footers);
    otherwise a pass counts them. The sizes that depend on them (PCA components, UMAP neighbours and dimensions,
    HDBSCAN's minimum cluster size, SCAN's neighbours) are capped to what the rows support
    (:func:`imgclust.models.capping.cap_to_data`): one warning, and ``capped`` in the model's metadata; fewer rows than
    ``cluster.k`` raise :class:`ConfigError`. ``k="auto"`` is resolved on the clustering sample
    (:func:`imgclust.cluster.choose_k.resolve_k`); the sweep is kept in ``meta["k_sweep"]`` and the configuration
    asked (``"auto"``) in ``meta["cluster"]``, so a refit chooses again. Each pass over the stream and each long
    step logs its progress (:mod:`imgclust.progress`).

    ``representation_dim`` (r < D): the features are a representation (the first r columns: everything above
    fits on them) followed by novelty statistics (the ``deep:`` extractor's,
    :func:`~imgclust.io.features.feature_layout`), which the novelty score is fitted on (``mahalanobis``).
    """
    reduce, asked = recipe.reduce, recipe.cluster
    source = as_batch_source(source) if isinstance(source, np.ndarray) else source
    n_rows, n_features = _source_shape(source, n_rows)
    statistics: BatchSource | None = None
    if representation_dim is not None and representation_dim != n_features:
        if not 0 < representation_dim < n_features:
            raise ConfigError(f"representation_dim={representation_dim} must be in 1..{n_features} (the features' "
                              "columns)")
        source, statistics = (columns_of(source, 0, representation_dim),
                              columns_of(source, representation_dim, n_features))
        n_features = representation_dim
    sizes = cap_to_data(reduce, asked, n_rows=n_rows, n_features=n_features)
    if sizes.capped:
        log.warning("%s", sizes.describe())
    if reducer is None and reduce.method == "ipca":
        reducer = StreamingPCA(n_components=sizes.pca_components, variance_target=reduce.variance_target,
                               max_components=sizes.pca_max_components, whiten=reduce.whiten,
                               l2_normalize_input=reduce.l2_normalize
                               ).fit(tracked(source, "fit: IncrementalPCA pass", n_rows, log))
    elif reducer is None and reduce.method == "pca":
        reducer = _exact_pca(reduce, sizes).fit(tracked(source, "fit: PCA statistics pass", n_rows, log))
    if reducer is not None:
        log.info("%s: %d components explain %.3f of the variance", type(reducer).__name__,
                 reducer.n_components_, float(np.sum(reducer.explained_variance_ratio_)))

    def reduced() -> Any:
        for block in source():
            yield reducer.transform(block) if reducer is not None else block

    umap = fit_umap(tracked(reduced, "fit: UMAP sample pass", n_rows, log), recipe, sizes,
                    fit_sample=asked.fit_sample) if sizes.umap_components else None

    def final() -> Any:
        for block in reduced():
            yield umap.transform(block) if umap is not None else block

    sample = sample_rows(tracked(final, "fit: clustering sample pass" + (" (UMAP transform)" if umap else ""),
                                 n_rows, log), asked.fit_sample, asked.seed).rows
    r = n_features  # a warm start embeds stored feature rows, statistics included
    start = (lambda: warm_start(lambda X: embed_rows(reducer, umap, X[:, :r]))) if warm_start is not None else None
    # without UMAP the stream is cheap and a method may pass over every row; with UMAP every pass pays a
    # transform, so it trains on the sample already drawn (fit_sample rows)
    stage = fit_clusters(sample, recipe, sizes, n_rows=n_rows, warm_start=start, stream=tracked(
        final, f"fit: {asked.method} pass", n_rows, log) if umap is None else None)
    fitted, cluster, sweep = stage.fitted, stage.cluster, stage.sweep
    k = fitted.centroids.shape[0]
    model = ClusterModel(model_id=model_id or new_model_id(), extractor_key=extractor_key, reducer=reducer,
                         umap=umap, clusterer=fitted.estimator,
                         centroids=np.ascontiguousarray(fitted.centroids, np.float32),
                         thresholds=np.full(k, np.inf, np.float32), stable_ids=np.arange(k, dtype=np.int32),
                         meta={"reduce": reduce.model_dump(), "cluster": asked.model_dump(),
                               "capped": sizes.record(),
                               "created_at": dt.datetime.now(dt.timezone.utc).isoformat()})
    if statistics is not None:
        model.meta["representation_dim"] = n_features
    if sweep is not None:
        model.meta["k_sweep"] = sweep.to_json()
    model.meta.update(fitted.meta)
    model.tree = fit_tree(model.centroids, fitted.sample_labels)
    model.novelty = fit_novelty(source, reducer, cluster, n_rows, statistics=statistics)
    if model.novelty is None:
        model.thresholds = novelty_thresholds(model, sample, cluster.novelty_quantile)
        model.meta["novelty"] = {"score": "cluster-distance", "quantile": cluster.novelty_quantile,
                                 "reason": f"{n_rows} rows are too few to calibrate rate {cluster.novelty_rate}"}
    else:
        model.meta["novelty"] = model.novelty.describe()
    return model


def fit_tree(centroids: np.ndarray, sample_labels: np.ndarray) -> ClusterTree | None:
    """The merge tree (:class:`~imgclust.cluster.hierarchy.ClusterTree`) of the clusters with means ``centroids`` ``(k, d)``,
    weighted by how many rows of the clustering sample each holds (``sample_labels`` ``(m,)``, noise -1 left out);
    None for a model of no cluster (HDBSCAN that found none)."""
    k = centroids.shape[0]
    if k == 0:
        return None
    return ClusterTree().fit(centroids, np.bincount(sample_labels[sample_labels >= 0], minlength=k))


def _source_shape(source: BatchSource, n_rows: int | None) -> tuple[int, int]:
    """``(rows, features)`` of ``source``: the features from its first block, the rows counted by a pass unless
    ``n_rows`` gives them. An empty stream is refused."""
    blocks = iter(source())
    try:
        first = next(blocks, None)
        if first is None:
            raise ConfigError("the feature stream has no rows: nothing to fit; extract features first")
        if n_rows is None:
            n_rows = int(first.shape[0]) + sum(int(b.shape[0]) for b in blocks)
        return n_rows, int(first.shape[1])
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def novelty_thresholds(model: ClusterModel, Z: np.ndarray, quantile: float) -> np.ndarray:
    """Per-cluster distance threshold: the ``quantile`` of member distances in the sample ``Z`` (m, d).

    A cluster with no sample members gets +inf (nothing is novel against it)."""
    saved = model.thresholds
    model.thresholds = np.full(model.n_clusters, np.inf, np.float32)
    a = model.assign_embedded(Z)
    model.thresholds = saved
    out = np.full(model.n_clusters, np.inf, np.float32)
    for c in range(model.n_clusters):
        d = a.distance[a.raw == c]
        if d.size:
            out[c] = np.quantile(d, quantile)
    return out


def promote(store: Store, model_id: str) -> None:
    """Point ``models/CURRENT`` at ``model_id`` (atomic replace)."""
    if not store.exists(layout.model_json(model_id)):
        raise StoreError(f"cannot promote {model_id}: {store.uri(layout.model_dir(model_id))} is not a complete model")
    store.write_bytes(layout.CURRENT, model_id.encode())


def current_model_id(store: Store) -> str | None:
    """The promoted model id, or None when nothing was promoted yet."""
    if not store.exists(layout.CURRENT):
        return None
    return store.read_bytes(layout.CURRENT).decode().strip() or None


def require_current_model_id(store: Store) -> str:
    """The promoted model id; a StoreError saying what to run when nothing was promoted yet."""
    model_id = current_model_id(store)
    if model_id is None:
        raise StoreError(f"{store.uri(layout.CURRENT)} does not exist: no model is promoted yet; run "
                         "`imgclust run` or `imgclust recluster` first")
    return model_id


def _exact_pca(reduce: ReduceConfig, sizes: FitSizes | None = None) -> ExactPCA:
    """The exact PCA of ``reduce``, with the component counts of ``sizes`` when given (capped to the rows)."""
    if sizes is None:
        return ExactPCA(n_components=reduce.n_components, variance_target=reduce.variance_target,
                        whiten=reduce.whiten, l2_normalize_input=reduce.l2_normalize)
    return ExactPCA(n_components=sizes.pca_components, variance_target=reduce.variance_target,
                    max_components=sizes.pca_max_components, whiten=reduce.whiten,
                    l2_normalize_input=reduce.l2_normalize)


def feature_source(store: Store, extractor_key: str, shard_ids: list[str], batch_size: int = 65536, *,
                   representation: bool = False) -> BatchSource:
    """A :data:`BatchSource` over the feature rows ``(n_i, D)`` of ``shard_ids`` (empty blocks skipped);
    ``representation``: their representation columns only (:func:`~imgclust.io.features.iter_feature_batches`)."""
    from imgclust.io.features import iter_feature_batches

    def source() -> Iterator[np.ndarray]:
        for _, X in iter_feature_batches(store, extractor_key, shard_ids, batch_size=batch_size,
                                         representation=representation):
            if X.shape[0]:
                yield X

    return source


def pca_statistics_path(extractor_key: str, shard_ids: list[str], reduce: ReduceConfig) -> str:
    """Deterministic store path of the PCA statistics of a group of shards (a retry overwrites it)."""
    token = hashlib.sha256(json.dumps([extractor_key, sorted(shard_ids), reduce.l2_normalize]).encode())
    return layout.pca_statistics_path(extractor_key, token.hexdigest()[:24])


def write_pca_statistics(store: Store, extractor_key: str, shard_ids: list[str], reduce: ReduceConfig,
                         batch_size: int = 65536) -> str:
    """Summarise the representation columns of the features of ``shard_ids`` (n, D) into :class:`ScatterStats`
    and write them (one ``.npz``, D x D float64) to the store; returns the store-relative path. Run per shard group
    on Dask workers; :func:`fit_from_store` merges the groups with ``pca_statistics=...``."""
    rows = _row_counts(store, extractor_key, shard_ids)[0]
    source = feature_source(store, extractor_key, shard_ids, batch_size, representation=True)  # statistics: not reduced
    stats = _exact_pca(reduce).statistics(tracked(source, f"PCA statistics of {len(shard_ids)} shards", rows, log))
    rel = pca_statistics_path(extractor_key, shard_ids, reduce)
    store.write_bytes(rel, stats.to_bytes())
    return rel


def fit_from_store(store: Store, extractor_key: str, *, recipe: Recipe,
                   extract: ExtractConfig | None = None, shard_ids: list[str] | None = None,
                   batch_size: int = 65536, save: bool = True, warm_start: WarmStart | None = None,
                   pca_statistics: list[str] | None = None) -> ClusterModel:
    """Fit a model on the done feature shards of ``extractor_key`` (streamed); save it unless ``save=False``.

    ``extract`` (the configuration that produced the features) is recorded in the model so that
    nightly labeling extracts new images the same way. With ``recipe.reduce.method == "pca"``,
    ``pca_statistics`` (paths written by :func:`write_pca_statistics` covering exactly ``shard_ids``)
    are merged instead of a pass over the features, and deleted once the model is saved (with
    ``save=False`` the caller deletes them with :func:`discard_pca_statistics` after saving).
    """
    from imgclust.io.features import done_shards, feature_layout

    shards = shard_ids if shard_ids is not None else done_shards(store, extractor_key)
    if not shards:
        raise StoreError(f"no finished feature shards under {store.uri(layout.features_dir(extractor_key))}; "
                         "run extraction first")
    n_rows, n_quarantined = _row_counts(store, extractor_key, shards)
    quarantine = (f" ({n_quarantined} more were quarantined, their reasons are in "
                  f"{store.uri(layout.quarantine_dir(extractor_key))})" if n_quarantined else "")
    reduce = recipe.reduce
    check_enough_rows(n_rows, recipe.cluster, what=f"{n_rows} images have {extractor_key} features{quarantine}")
    source = feature_source(store, extractor_key, shards, batch_size)
    representation_dim = feature_layout(store, extractor_key, shards[0])[1]

    reducer: LinearProjection | None = None
    if pca_statistics:
        if reduce.method != "pca":
            raise ConfigError(f"PCA statistics were given but reduce.method is {reduce.method!r}; use 'pca'")
        missing = [p for p in pca_statistics if not store.exists(p)]
        if missing:
            raise StoreError(f"PCA statistics {store.uri(missing[0])} (and {len(missing) - 1} more) are gone; "
                             "re-run the flow: the statistics are recomputed")
        stats = merge_all(ScatterStats.from_bytes(store.read_bytes(p), where=store.uri(p)) for p in pca_statistics)
        sizes = cap_to_data(reduce, recipe.cluster, n_rows=stats.n, n_features=stats.dim)
        reducer = _exact_pca(reduce, sizes).fit_stats(stats)
    model = fit_model(source, extractor_key=extractor_key, recipe=recipe, warm_start=warm_start, reducer=reducer,
                      n_rows=n_rows, representation_dim=representation_dim)
    model.meta["n_shards"] = len(shards)
    if extract is not None:
        model.meta["extract"] = extract.model_dump()
    if save:
        model.save(store)
        log.info("saved model %s (%d clusters) to %s", model.model_id, model.n_clusters, store.uri(layout.MODELS_DIR))
        discard_pca_statistics(store, pca_statistics)
    return model


def _row_counts(store: Store, extractor_key: str, shard_ids: list[str]) -> tuple[int, int]:
    """``(rows with features, rows quarantined)`` of the given shards, from their Parquet footers."""
    n_features = n_quarantined = 0
    for sid in shard_ids:
        n_features += store.parquet_num_rows(layout.feature_path(extractor_key, sid), what="feature shard")
        if store.exists(layout.quarantine_path(extractor_key, sid)):
            n_quarantined += store.parquet_num_rows(layout.quarantine_path(extractor_key, sid),
                                                    what="quarantine shard")
    return n_features, n_quarantined


def discard_pca_statistics(store: Store, paths: list[str] | None) -> None:
    """Delete PCA statistics files once the model that merged them is saved (scratch space)."""
    for p in paths or []:
        store.remove(p)


def model_info(store: Store, model_id: str) -> dict[str, Any]:
    """A model version's ``model.json`` (ids, parts, n_clusters, recipe, k_sweep, capped, lineage, ...)."""
    return dict(store.read_json(layout.model_json(model_id)))


def n_clusters_of(store: Store, model_id: str) -> int:
    """The number of clusters of a fitted model version, without loading it."""
    return int(model_info(store, model_id)["n_clusters"])


def extract_config_of(store: Store, model_id: str) -> ExtractConfig:
    """The ExtractConfig a model's features came from (recorded at fit time)."""
    info = model_info(store, model_id)
    if "extract" not in info:
        raise CorruptArtifactError(f"model {model_id} records no extract configuration; refit it with this version")
    return ExtractConfig(**info["extract"])


def model_recipe(store: Store, model_id: str) -> Recipe:
    """The :class:`~imgclust.config.Recipe` a model version was fitted with, as asked (``k="auto"`` stays auto, so a
    refit chooses again); recorded at fit time, fields added since take their defaults."""
    info = model_info(store, model_id)
    return Recipe(reduce=ReduceConfig(**info["reduce"]), cluster=ClusterConfig(**info["cluster"]))


def save_metrics(store: Store, model_id: str, metrics: dict[str, Any]) -> None:
    """Evaluation results of a model version (``models/<id>/metrics.json``), read by the promotion gate."""
    store.write_json(layout.model_metrics(model_id), metrics)


def load_metrics(store: Store, model_id: str) -> dict[str, Any] | None:
    rel = layout.model_metrics(model_id)
    return store.read_json(rel) if store.exists(rel) else None


def save_gate_decision(store: Store, model_id: str, decision: dict[str, Any]) -> None:
    """The promotion gate's decision on a model version and why the run was started
    (``models/<id>/gate.json``: promoted, reason, previous, metric values, trigger)."""
    store.write_json(layout.model_gate(model_id), decision)


def load_gate_decision(store: Store, model_id: str) -> dict[str, Any] | None:
    rel = layout.model_gate(model_id)
    return store.read_json(rel) if store.exists(rel) else None
