"""Typed configuration for every pipeline stage (pydantic v2).

Defaults live here and only here. Every model validates on construction, so a bad value fails before
any work starts (``ConfigError`` via :func:`validated`). These models double as Prefect flow
parameters, so their field titles/descriptions render as the form in the Prefect UI.
"""
from __future__ import annotations

import datetime as dt
import enum
import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from imgclust.cluster.registry import clusterer_spec, list_methods, method_options, option_owners
from imgclust.exceptions import ConfigError, UnknownNameError

_M = TypeVar("_M", bound=BaseModel)


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


RECOMMENDED_REFINE_METHOD = "simclr"
"""The recommended deep-clustering recipe: the demo's second stage and the scheduled ``refine/weekly`` default
(one place, so the two cannot drift)."""


AUTO_EXTRACTOR = "auto"
"""``imgclust run``'s default ``--extractor``: the best pretrained backbone whose weights are available (cached, or
downloadable unless offline), chosen by the CLI before any work starts and said in its output; raw pixels when none
is. The chosen name is what reaches :class:`ExtractConfig`, whose own default stays ``pixels``: a scheduled flow must
not change feature space with what a machine happens to have cached."""


AUTO_K: Literal["auto"] = "auto"
"""``ClusterConfig.k``'s default: sweep ``k_min..k_max`` on a sample of the clustering space and choose by the rule
of :mod:`imgclust.cluster.choose_k` (the sweep is recorded in ``model.json`` and drawn in the report)."""

ClusterCount = Annotated[int, Field(ge=2, le=1_000_000)] | Literal["auto"]
"""A number of clusters, or ``"auto"`` (:data:`AUTO_K`)."""


class IngestConfig(_Base):
    """How a source is scanned into the manifest."""

    extensions: tuple[str, ...] = Field(
        (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"),
        description="File extensions (case-insensitive) that count as images.",
    )
    recursive: bool = Field(True, description="Descend into sub-folders / sub-prefixes.")
    hash_threads: int = Field(8, ge=1, le=256, description="Threads that read and hash files.")

    @field_validator("extensions")
    @classmethod
    def _dot_lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one extension is required")
        return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in v)


class ExtractConfig(_Base):
    """Feature extraction: which backbone, on what device, in which batches."""

    extractor: str = Field("pixels", description="Backbone name from `imgclust backbones` (e.g. resnet50, pixels, hog).")
    weights: str | None = Field(
        None, description="imagenet | random | PATH to a state_dict; default: the backbone's own default."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the backbone runs.")
    batch_size: int = Field(64, ge=1, le=8192, description="Images per forward pass.")
    decode_threads: int = Field(4, ge=1, le=128, description="Threads decoding images ahead of the model.")
    decode_on: Literal["auto", "cpu", "device"] = Field(
        "auto", description="auto: decode JPEGs with nvJPEG and resize on the GPU when the backbone runs on CUDA, "
        "else on CPU threads; cpu / device force one path (device works on CPU too, for checks)."
    )
    shard_size: int = Field(1000, ge=1, le=1_000_000, description="Images per feature shard (one task each).")
    max_pixels: int = Field(89_478_485, ge=1, description="Images with more pixels are quarantined as too_large.")
    seed: int = Field(0, ge=0, description="Seed for random-init backbones.")


class ReduceConfig(_Base):
    """Dimensionality reduction before clustering: PCA / IncrementalPCA, optionally followed by UMAP."""

    method: Literal["ipca", "pca", "none"] = Field(
        "ipca", description="ipca: IncrementalPCA streamed over shards; pca: exact PCA from per-shard statistics "
        "summed on the workers (one parallel pass); none: cluster the features as they are."
    )
    n_components: int | None = Field(50, ge=1, le=8192, description="Fixed number of PCA components.")
    variance_target: float | None = Field(
        None, gt=0.0, le=1.0, description="Keep the fewest components explaining this share of variance."
    )
    whiten: bool = Field(False, description="Whiten PCA output.")
    l2_normalize: bool = Field(False, description="L2-normalise features before PCA.")
    umap_components: int | None = Field(
        None, ge=2, le=256, description="If set, UMAP to this many dims after PCA (kmeans); hdbscan defaults to 10."
    )
    umap_neighbors: int = Field(15, ge=2, le=200, description="UMAP n_neighbors (N2D uses 20).")

    @model_validator(mode="after")
    def _one_size(self) -> ReduceConfig:
        if self.method != "none" and (self.n_components is None) == (self.variance_target is None):
            raise ValueError(f"give exactly one of n_components or variance_target for {self.method}")
        return self


class ClusterConfig(_Base):
    """The clustering step: Faiss k-means, HDBSCAN, agglomerative, a Gaussian mixture (N2D's clusterer), or SCAN's
    neighbour-consistency head on the features (:mod:`imgclust.cluster.scan`; no UMAP)."""

    method: str = Field(
        "kmeans", description="Clustering algorithm: a method of the registry (imgclust.cluster.registry).",
        json_schema_extra=lambda schema: schema.update(enum=list[JsonValue](list_methods())))
    k: ClusterCount = Field(
        AUTO_K, description="Number of clusters (kmeans, agglomerative, gmm, scan), or auto: fits over k_min..k_max "
        "on a seeded sample and chooses by a documented rule (imgclust.cluster.choose_k; the sweep is in model.json and the "
        "report). HDBSCAN finds its own number.")
    k_min: int = Field(2, ge=2, le=1_000_000, description="k=auto: the smallest k the sweep tries.")
    k_max: int | None = Field(
        None, ge=2, le=1_000_000, description="k=auto: the largest k the sweep tries; default grows with the rows "
        "(imgclust.cluster.choose_k.default_k_max).")
    n_iter: int = Field(25, ge=1, le=1000, description="k-means iterations.")
    n_redo: int = Field(3, ge=1, le=100, description="k-means restarts; the best inertia wins.")
    backend: Literal["faiss", "torch"] = Field(
        "faiss", description="k-means backend: faiss (CPU) or torch (GPU when present, else CPU)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the torch backend runs.")
    spherical: bool = Field(False, description="Cosine k-means (L2-normalised centroids).")
    min_cluster_size: int | None = Field(
        None, ge=2, description="HDBSCAN min_cluster_size; unset: all of HDBSCAN's parameters chosen for the "
        "embedding it runs on (imgclust.cluster.density: 1% of the rows, min_samples 5, leaf selection merged below a "
        "distance scaled to the embedding's density). Given: that size with HDBSCAN's own other defaults.")
    fit_sample: int = Field(50_000, ge=100,
                            description="Rows UMAP/HDBSCAN/GMM/SCAN are fitted on; the rest are predicted.")
    scan_whiten: bool = Field(
        False, description="scan only: find the neighbours after PCA whitening of the features (Jégou & Chum 2012). "
        "Chosen for the deep methods' learned representations. Off by default: on PCA-reduced pixels it was worse "
        "(benchmarks/simclr_encoder.py).")
    consensus_runs: int = Field(
        1, ge=1, le=64, description="gmm only: EM runs combined by evidence accumulation (Fred & Jain 2005) into "
        "the final mixture; 1 = plain EM."
    )
    novelty_quantile: float = Field(
        0.99, gt=0.5, le=1.0, description="Models without a novelty score (fitted before it, or on too few rows): "
        "the per-cluster distance quantile beyond which an image is novel."
    )
    novelty_rate: float = Field(
        0.05, gt=0.0, lt=0.5, description="Target false-novel rate: the share of images of known kinds the "
        "calibrated novelty threshold flags (split-conformal on fitted rows held out of the references).")
    novelty_k: int = Field(20, ge=1, le=1000, description="The novelty score's k-th nearest reference (knn kind).")
    novelty_references: int = Field(
        10_000, ge=100, le=1_000_000, description="Fitted rows kept with the model as the novelty references.")
    novelty_calibration: int = Field(
        5_000, ge=100, le=1_000_000, description="Fitted rows, apart from the references, that set the threshold.")
    seed: int = Field(0, ge=0, description="Random seed.")
    options: dict[str, JsonValue] = Field(
        default_factory=dict, description="Options of a method that declares its own options type (a plugin's "
        "method, imgclust.cluster.registry): validated by it before any work.")

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        try:
            clusterer_spec(v)
        except UnknownNameError as exc:
            raise ValueError(str(exc)) from exc
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ClusterConfig:
        if self.k_max is not None and self.k_max < self.k_min:
            raise ValueError(f"k_max={self.k_max} is below k_min={self.k_min}")
        method_options(self.method, self.options)  # a method's own typed options (a ConfigError is a ValueError)
        for name, owner in option_owners().items():  # fields only one method reads
            if name not in type(self).model_fields:
                raise ValueError(f"method {owner!r} declares option {name!r}, which is not a ClusterConfig field")
            value = getattr(self, name)
            if owner != self.method and value != type(self).model_fields[name].default:
                raise ValueError(f"{name}={value} needs method={owner!r} (got {self.method!r})")
        needed = math.ceil((1.0 - self.novelty_rate) / self.novelty_rate - 1e-9)  # split-conformal: (n+1)(1-a) <= n
        if self.novelty_calibration < needed:
            raise ValueError(f"novelty_calibration={self.novelty_calibration} cannot calibrate novelty_rate="
                             f"{self.novelty_rate}: it needs at least {needed} rows; raise one of them")
        return self


class Recipe(_Base):
    """How a model version clusters feature rows: ``reduce`` (PCA / IncrementalPCA / none, then UMAP when
    ``reduce.umap_components`` is set) then ``cluster`` (a method of :mod:`imgclust.cluster.registry`).

    The one typed recipe of the pipeline's model (:func:`imgclust.models.model.fit_model`), recluster (the CURRENT
    model's recipe, :func:`imgclust.models.model.model_recipe`), refine's refit
    (:func:`imgclust.deep.methods.refit_recipe`) and the deep estimators' last stage
    (:meth:`imgclust.deep.embedding.EmbeddingClusterer.recipe`). Validated as a whole on construction
    (:func:`check_recipe`: e.g. SCAN refuses UMAP coordinates)."""

    reduce: ReduceConfig = ReduceConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _compatible(self) -> Recipe:
        check_recipe(self.reduce, self.cluster)  # a ConfigError is a ValueError: pydantic reports it
        return self

    @property
    def k(self) -> int | None:
        """The number of clusters asked for; None when the fit chooses it (``k="auto"``) or the method finds it."""
        return fixed_k(self.cluster)

    def describe(self) -> str:
        """One line, e.g. ``IPCA(50) -> UMAP(10) -> gmm k=10 (consensus of 8 EM runs)``."""
        r, c = self.reduce, self.cluster
        spec = clusterer_spec(c.method)
        steps = []
        if r.method != "none":
            size = f"{r.n_components}" if r.n_components is not None else f"{r.variance_target:g} of the variance"
            steps.append(f"{'IPCA' if r.method == 'ipca' else 'PCA'}({size})")
        umap = r.umap_components or spec.default_umap
        if umap:
            steps.append(f"UMAP({umap})")
        k = "" if spec.finds_k else f" k={c.k}"
        runs = f" (consensus of {c.consensus_runs} EM runs)" if c.method == "gmm" and c.consensus_runs > 1 else ""
        return " -> ".join([*steps, f"{c.method}{k}{runs}"])


class RunnerConfig(_Base):
    """Where tasks run: a local Dask cluster (default), an existing scheduler, or one worker per GPU."""

    kind: Literal["local", "address", "cuda"] = Field("local", description="local | address | cuda")
    workers: int = Field(2, ge=1, le=1024, description="Local Dask worker processes.")
    threads_per_worker: int = Field(1, ge=1, le=64, description="Threads per Dask worker.")
    address: str | None = Field(None, description="Scheduler address (tcp://host:8786) when kind=address.")

    @classmethod
    def choose(cls, *, address: str | None, gpu_cluster: bool, workers: int | None = None) -> RunnerConfig:
        """The one runner rule: an existing scheduler ``address`` wins, then ``gpu_cluster`` (one worker per GPU),
        else ``workers`` local processes (default :attr:`workers`'s). ConfigError for an invalid value."""
        kind = "address" if address else ("cuda" if gpu_cluster else "local")
        given: dict[str, Any] = {"kind": kind, "address": address or None}
        if workers is not None:
            given["workers"] = workers
        return validated(cls, **given)

    @model_validator(mode="after")
    def _address(self) -> RunnerConfig:
        if self.kind == "address" and not self.address:
            raise ValueError("kind=address needs address='tcp://host:port'")
        return self


class PipelineConfig(_Base):
    """Everything one end-to-end run needs."""

    source: str = Field(..., description="Folder or fsspec URL (s3://bucket/prefix) to ingest.")
    store: str = Field(..., description="Store root: folder or s3://bucket/prefix.")
    ingest: IngestConfig = IngestConfig()
    extract: ExtractConfig = ExtractConfig()
    reduce: ReduceConfig = ReduceConfig()
    cluster: ClusterConfig = ClusterConfig()
    truth: Literal["none", "parent_dir"] = Field(
        "none", description="Where ground-truth classes come from for ACC/NMI (parent folder name) or none."
    )
    date: dt.date | None = Field(None, description="Ingestion date partition; default today (UTC).")

    @model_validator(mode="after")
    def _scan_without_umap(self) -> PipelineConfig:
        check_recipe(self.reduce, self.cluster)  # a ConfigError is a ValueError: pydantic reports it
        return self

    @property
    def recipe(self) -> Recipe:
        """The run's :class:`Recipe` (its ``reduce`` and ``cluster`` fields, which the run form shows apart)."""
        return Recipe(reduce=self.reduce, cluster=self.cluster)

    @field_validator("source", "store")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


BUILTIN_BACKBONES: tuple[str, ...] = (
    "clip-vitb32", "clip-vitl14", "colorhist", "convnext-tiny", "dinov2-vitb14", "dinov2-vits14", "efficientnet-b0",
    "hog", "layout", "openclip-test-vit", "pixels", "pixels-rgb32", "resnet101", "resnet152", "resnet18",
    "resnet34", "resnet50", "siglip-vitb16", "timm-test-vit", "tinycnn", "vgg16", "vgg19",
)
"""The names :mod:`imgclust.extract.backbones` registers on import, known without importing torch (a flow's parameter
form is built when the flow module is imported); ``tests/test_layering.py`` checks they equal the registry's."""

Extractor = enum.Enum("Extractor", {n.replace("-", "_"): n for n in BUILTIN_BACKBONES}, type=str)  # type: ignore[misc]
"""A built-in backbone by name: the extractor choice of the backfill run form."""

BackfillStage = Literal["ingest", "extract", "label"]


class BackfillParams(BaseModel):
    """What the backfill flow redoes for which ingestion dates (rendered as the run form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(..., title="Store", description="Store root: folder or s3://bucket/prefix.")
    start: dt.date = Field(..., title="From ingestion date", description="First manifest date to process.")
    end: dt.date = Field(..., title="To ingestion date", description="Last manifest date to process (inclusive).")
    redo: list[BackfillStage] = Field(
        ["extract", "label"], title="Redo", description="Stages to run for the range.")
    sources: list[str] = Field([], title="Sources", description="Folders/URLs to re-scan when redo has ingest.")
    extractor: Extractor | None = Field(  # type: ignore[valid-type]
        None, title="Extractor", description="Backbone for extract; default: the CURRENT model's.")
    force: bool = Field(False, title="Force", description="Recompute even finished shards / existing labels.")

    @model_validator(mode="after")
    def _check(self) -> BackfillParams:
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        if "ingest" in self.redo and not self.sources:
            raise ValueError("redo=ingest needs at least one source")
        if not self.redo:
            raise ValueError("redo must name at least one of ingest, extract, label")
        return self

    def key(self) -> str:
        """Idempotency key of this backfill (same key, same work)."""
        ext = self.extractor.value if self.extractor else "current"
        return f"backfill-{self.start}-{self.end}-{'+'.join(sorted(self.redo))}-{ext}"


def fixed_k(cluster: ClusterConfig) -> int | None:
    """The number of clusters ``cluster`` asks for, or None when it is chosen by the fit (``k="auto"``) or the
    method finds its own (HDBSCAN)."""
    if clusterer_spec(cluster.method).finds_k or cluster.k == AUTO_K:
        return None
    return int(cluster.k)


def check_recipe(reduce: ReduceConfig, cluster: ClusterConfig) -> None:
    """Raise ConfigError, before any work, if ``reduce`` and ``cluster`` cannot be used together: a method that does
    not accept UMAP coordinates (SCAN clusters features by their cosine neighbours) with ``umap_components``."""
    spec = clusterer_spec(cluster.method)
    if not spec.accepts_umap and reduce.umap_components is not None:
        raise ConfigError(f"cluster method {spec.name!r} ({spec.summary}) does not accept UMAP coordinates: drop "
                          f"reduce.umap_components / --umap (got {reduce.umap_components})")


def validated(model: type[_M], **values: Any) -> _M:
    """Build ``model`` from ``values``; turn pydantic's error into one actionable ``ConfigError``."""
    try:
        return model(**values)
    except ValidationError as err:
        parts = [f"{'.'.join(str(p) for p in e['loc']) or model.__name__}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"invalid {model.__name__}: " + "; ".join(parts)) from err
