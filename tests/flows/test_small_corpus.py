"""Small corpora just work: sizes that depend on the number of images are capped (one warning, recorded in
model.json); only fewer images than clusters is refused, before extraction when the manifest already says so.

Real image files, the real pipeline flow under the Prefect test harness on the session's Dask LocalCluster.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from helpers_images import gray_array, jpeg_bytes, png_bytes, truncated_jpeg_bytes, write

from imgclust.config import ClusterConfig, ExtractConfig, PipelineConfig, Recipe, ReduceConfig
from imgclust.exceptions import ConfigError
from imgclust.io.features import done_shards, quarantine_path
from imgclust.io.store import Store
from imgclust.models.capping import cap_to_data, check_enough_rows
from imgclust.models.labels import label_shard, read_labels
from imgclust.models.model import ClusterModel, current_model_id, fit_from_store, fit_model
from imgclust.models.recluster import refit_with_lineage
from imgclust.models.verify import verify_store

N_VALID = 17
BROKEN = {  # file name -> the quarantine error_kind it must get
    "empty.jpg": "empty", "notes.jpg": "not_an_image", "page.png": "not_an_image", "noise.jpg": "not_an_image",
    "trunc_a.jpg": "truncated", "trunc_b.jpg": "truncated", "half.png": "truncated",
}


def write_small_corpus(root: Path, n_valid: int, *, broken: bool = True, seed: int = 0) -> None:
    """``n_valid`` real images (28x28 grey PNGs in two tones, a few RGB JPEGs) and the 7 broken files of BROKEN."""
    for i in range(n_valid):
        if i % 5 == 4:
            write(root / "jpegs" / f"photo_{i:02d}.jpg", jpeg_bytes(seed * 1000 + i))
            continue
        arr = gray_array(seed * 1000 + i)
        write(root / ("dark" if i % 2 else "light") / f"img_{i:02d}.png",
              png_bytes((arr // 4).astype(np.uint8) if i % 2 else arr))
    if not broken:
        return
    bad = root / "bad"
    write(bad / "empty.jpg", b"")
    write(bad / "notes.jpg", b"this is not an image\n" * 10)
    write(bad / "page.png", b"<html><body>hi</body></html>")
    write(bad / "noise.jpg", np.random.default_rng(seed + 3).integers(0, 256, 500, dtype=np.uint8).tobytes())
    write(bad / "trunc_a.jpg", truncated_jpeg_bytes(seed + 1))
    write(bad / "trunc_b.jpg", truncated_jpeg_bytes(seed + 2))
    write(bad / "half.png", png_bytes(gray_array(seed + 99))[:60])


class _Records(logging.Handler):
    """Keeps the ``imgclust`` records of the flow process (the fit runs there)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _run(source: Path, store: Path, dask_address: str, **config: Any) -> dict[str, Any]:
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import pipeline

    cfg = PipelineConfig(source=str(source), store=str(store), **config)
    return pipeline.with_options(task_runner=DaskTaskRunner(address=dask_address))(config=cfg)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class SmallRun:
    """The module's pipeline run: its store folder, the flow's result and the flow's ``imgclust`` log records."""

    store_dir: Path
    result: dict[str, Any]
    records: list[logging.LogRecord]

    def store(self) -> Store:
        """A fresh handle on the run's store."""
        return Store(self.store_dir)

    @property
    def key(self) -> str:
        return str(self.result["extraction"]["extractor_key"])

    @property
    def model_id(self) -> str:
        return str(self.result["build"]["model_id"])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, dask_address: str) -> Iterator[SmallRun]:
    """17 valid + 7 broken images through the pipeline flow with every setting at its default."""
    root = tmp_path_factory.mktemp("small")
    write_small_corpus(root / "images", N_VALID)
    handler = _Records()
    lib = logging.getLogger("imgclust")
    lib.addHandler(handler)
    try:
        result = _run(root / "images", root / "store", dask_address)
    finally:
        lib.removeHandler(handler)
    yield SmallRun(root / "store", result, handler.records)


@pytest.mark.integration
def test_default_run_on_17_images_completes_and_quarantines_7(small_run: SmallRun) -> None:
    store, result, key = small_run.store(), small_run.result, small_run.key
    assert result["ingest"]["new"] == N_VALID + len(BROKEN)
    assert (result["extraction"]["features"], result["extraction"]["quarantined"]) == (N_VALID, len(BROKEN))
    q = pa.concat_tables([store.read_parquet(quarantine_path(key, s)) for s in done_shards(store, key)])
    kinds = {Path(u).name: k for u, k in zip(q.column("uri").to_pylist(), q.column("error_kind").to_pylist(),
                                             strict=True)}
    assert kinds == BROKEN
    assert all(m.strip() for m in q.column("message").to_pylist())  # every quarantined file has its reason
    model_id = small_run.model_id
    assert current_model_id(store) == model_id and result["build"]["promoted"]
    labels = read_labels(store, model_id)
    assert labels.num_rows == N_VALID == result["build"]["labeled"]
    report = verify_store(store, key, model_id=model_id)
    assert report.ok, report.summary()


@pytest.mark.integration
def test_the_caps_are_one_warning_and_recorded_in_model_json(small_run: SmallRun) -> None:
    store, model_id = small_run.store(), small_run.model_id
    capping = [r for r in small_run.records if r.levelno >= logging.WARNING and "capped" in r.getMessage()]
    assert len(capping) == 1, [r.getMessage() for r in capping]
    message = capping[0].getMessage()
    assert "\n" not in message and "17 rows" in message and "reduce.n_components 50 -> 16" in message
    info = store.read_json(f"models/{model_id}/model.json")
    assert info["capped"] == {"rows": 17, "features": info["capped"]["features"],
                              "values": {"reduce.n_components": {"asked": 50, "used": 16}}}
    assert info["reduce"]["n_components"] == 50  # the recipe as asked: a refit on a grown corpus uses it again
    model = ClusterModel.load(store, model_id)
    assert model.reducer is not None and model.reducer.n_components_ == 16
    assert model.n_clusters == 3 == info["k_sweep"]["chosen"]  # k=auto on 17 rows: round(sqrt(17 / 2))
    assert info["k_sweep"]["criterion"] == "rule of thumb" and "too few for the sweep" in info["k_sweep"]["reason"]


@pytest.mark.integration
@pytest.mark.parametrize("method,reduce,cluster", [
    ("gmm+umap consensus", ReduceConfig(method="pca", umap_components=10), ClusterConfig(method="gmm", consensus_runs=8)),
    ("hdbscan (umap 10)", ReduceConfig(), ClusterConfig(method="hdbscan")),
    ("agglomerative+umap", ReduceConfig(umap_components=10), ClusterConfig(method="agglomerative", k=5)),
    ("scan", ReduceConfig(method="pca"), ClusterConfig(method="scan", k=3, seed=1)),
    ("kmeans variance target", ReduceConfig(n_components=None, variance_target=0.9), ClusterConfig(k=17)),
])
def test_every_recipe_fits_and_labels_the_17_images(small_run: SmallRun, method: str, reduce: ReduceConfig,
                                                    cluster: ClusterConfig, caplog: pytest.LogCaptureFixture) -> None:
    store, key = small_run.store(), small_run.key
    with caplog.at_level(logging.WARNING, logger="imgclust"):
        model = fit_from_store(store, key, recipe=Recipe(reduce=reduce, cluster=cluster))
    assert len([r for r in caplog.records if "capped" in r.getMessage()]) == 1
    assert model.meta["capped"]["rows"] == 17 and model.meta["capped"]["values"]
    counts = [label_shard(store, model.model_id, key, s)["n"] for s in done_shards(store, key)]
    assert sum(counts) == 17
    if cluster.method != "hdbscan":
        assert model.n_clusters == (3 if cluster.k == "auto" else cluster.k)  # auto on 17 rows: the rule of thumb


@pytest.mark.integration
def test_recluster_refits_the_small_store_with_lineage(small_run: SmallRun) -> None:
    store = small_run.store()
    model = refit_with_lineage(store, small_run.key, recipe=Recipe(reduce=ReduceConfig(),
                                                                   cluster=ClusterConfig(k=10)), extract=ExtractConfig(),
                               previous_model_id=small_run.model_id)
    assert model.meta["capped"]["values"]["reduce.n_components"] == {"asked": 50, "used": 16}
    assert model.meta["parent_model"] == small_run.model_id and model.n_clusters == 10


@pytest.mark.integration
def test_as_many_images_as_clusters_completes(tmp_path: Path, dask_address: str) -> None:
    """k = n: every image its own cluster; the evaluation reports NaN for what needs fewer clusters than rows."""
    write_small_corpus(tmp_path / "images", 10, broken=False)
    result = _run(tmp_path / "images", tmp_path / "store", dask_address, truth="parent_dir",
                  cluster=ClusterConfig(k=10))
    assert result["build"]["labeled"] == 10 and result["build"]["promoted"]
    metrics = result["build"]["metrics"]
    assert np.isnan(metrics["internal_davies_bouldin"]) and 0.0 <= metrics["nmi"] <= 1.0


@pytest.mark.integration
def test_fewer_images_than_k_is_refused_before_extraction(tmp_path: Path, dask_address: str) -> None:
    write_small_corpus(tmp_path / "images", 4, broken=False)
    with pytest.raises(ConfigError, match=r"holds 4 images .*nothing was extracted.*k=10 clusters need at least 10"):
        _run(tmp_path / "images", tmp_path / "store", dask_address, cluster=ClusterConfig(k=10))
    store = tmp_path / "store"
    assert (store / "manifest").is_dir()  # ingested ...
    assert not (store / "features").exists() and not (store / "quarantine").exists()  # ... but nothing extracted


@pytest.mark.integration
def test_too_few_valid_images_after_the_quarantine_names_both_counts(tmp_path: Path, dask_address: str) -> None:
    write_small_corpus(tmp_path / "images", 5)  # 12 files >= k=10, but 7 of them are broken
    with pytest.raises(ConfigError, match=r"5 images have .* features \(7 more were quarantined, their reasons are "
                                          r"in .*quarantine.*k=10 clusters need at least 10"):
        _run(tmp_path / "images", tmp_path / "store", dask_address, cluster=ClusterConfig(k=10))
    assert list((tmp_path / "store" / "features").rglob("*.parquet"))  # extraction ran
    assert not (tmp_path / "store" / "models").exists()


# ---- the capping rule itself ------------------------------------------------------------------------------
def test_cap_to_data_lowers_only_what_the_rows_cannot_support() -> None:
    big = cap_to_data(ReduceConfig(umap_components=10), ClusterConfig(method="gmm"), n_rows=5000, n_features=784)
    assert big.capped == {} and (big.pca_components, big.umap_components, big.umap_neighbors) == (50, 10, 15)
    small = cap_to_data(ReduceConfig(umap_components=10), ClusterConfig(method="gmm"), n_rows=11, n_features=784)
    assert small.capped == {"reduce.n_components": (50, 10), "reduce.umap_components": (10, 9),
                            "reduce.umap_neighbors": (15, 10)}
    assert (small.pca_components, small.umap_components, small.umap_neighbors) == (10, 9, 10)
    narrow = cap_to_data(ReduceConfig(n_components=64), ClusterConfig(), n_rows=5000, n_features=32)
    assert narrow.capped == {"reduce.n_components": (64, 32)}
    hdb = cap_to_data(ReduceConfig(method="none", n_components=None),
                      ClusterConfig(method="hdbscan", min_cluster_size=50), n_rows=2, n_features=8)
    assert hdb.umap_components is None and hdb.capped["reduce.umap_components"] == (10, None)
    assert hdb.min_cluster_size == 2
    scan = cap_to_data(ReduceConfig(), ClusterConfig(method="scan", k=3), n_rows=9, n_features=784)
    assert scan.scan_neighbors == 8 and scan.capped["SCAN n_neighbors"] == (20, 8)
    target = cap_to_data(ReduceConfig(n_components=None, variance_target=0.9), ClusterConfig(k=2), n_rows=30,
                         n_features=784)
    assert target.pca_max_components == 29 and target.pca_components is None


def test_k_is_never_capped_fewer_rows_than_k_is_refused() -> None:
    with pytest.raises(ConfigError, match="k=10 clusters need at least 10 images.*at most 9"):
        cap_to_data(ReduceConfig(), ClusterConfig(k=10), n_rows=9, n_features=784)
    check_enough_rows(10, ClusterConfig(k=10), what="ten")
    check_enough_rows(2, ClusterConfig(method="hdbscan", min_cluster_size=2), what="two")  # HDBSCAN has no k
    with pytest.raises(ConfigError, match="HDBSCAN needs at least 2"):
        check_enough_rows(1, ClusterConfig(method="hdbscan", min_cluster_size=2), what="one image")
    check_enough_rows(10, ClusterConfig(method="hdbscan"), what="ten")  # the density rule: two clusters of 5
    with pytest.raises(ConfigError, match="HDBSCAN needs at least 10"):
        check_enough_rows(9, ClusterConfig(method="hdbscan"), what="nine images")
    check_enough_rows(2, ClusterConfig(), what="two")  # k=auto: k_min clusters
    with pytest.raises(ConfigError, match="choosing k needs at least k_min=2"):
        check_enough_rows(1, ClusterConfig(), what="one image")


@pytest.mark.parametrize("n", [2, 3, 11])
def test_fit_model_on_a_handful_of_rows_warns_once_and_records_it(n: int, caplog: pytest.LogCaptureFixture) -> None:
    X = np.random.default_rng(n).random((n, 64)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="imgclust"):
        model = fit_model(lambda: iter([X]), extractor_key="k",
                          recipe=Recipe(reduce=ReduceConfig(umap_components=4),
                                        cluster=ClusterConfig(method="gmm", k=2, consensus_runs=3)))
    warned = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert len(warned) == 1 and f"{n} rows of 64 features" in warned[0]
    assert model.meta["capped"]["values"]["reduce.n_components"] == {"asked": 50, "used": n - 1}
    assert model.n_clusters == 2 and model.assign(X).raw.shape == (n,)
