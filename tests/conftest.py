"""Session fixtures: a real Prefect API (test harness), a real Dask LocalCluster, real image corpora."""
from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
# numba-parallel code (UMAP's transform, pynndescent) reduces in thread-dependent order; one thread makes
# "same seed, same result" checks exact. Set before numba is imported (also inherited by Dask workers).
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
# Hermetic: no test downloads weights from the internet, whatever the machine can reach (`imgclust run`'s
# default extractor would otherwise pick a downloadable model there). The download tests unset it and serve
# their checkpoints on loopback (tests/extract/test_weights_download.py).
os.environ["IMGCLUST_OFFLINE"] = "1"

from imgclust.data.datasets import FASHION_CLASSES, fashion_mnist_available, load_fashion_mnist  # noqa: E402

if TYPE_CHECKING:
    from imgclust.config import ClusterConfig, ExtractConfig, ReduceConfig
    from imgclust.io.store import Store
    from imgclust.models.model import ClusterModel

requires_fashion = pytest.mark.skipif(
    not fashion_mnist_available(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); `make test` installs it",
)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API server (SQLite) for the whole session; its URL is exported for Dask workers."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        url = str(PREFECT_API_URL.value())
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # worker processes started from now on report here
        try:
            yield url
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


@pytest.fixture(scope="session")
def dask_address(prefect_api: str) -> Iterator[str]:
    """A real distributed.LocalCluster with 2 worker processes (started after the Prefect API)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def fashion_test_subset(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded ``n``-image subset of the Fashion-MNIST test split (images ``(n, 28, 28)`` uint8, labels),
    in file order; skips the test when the dataset is not installed."""
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    x, y = load_fashion_mnist("test")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[idx], y[idx]


def write_fashion_corpus(root: Path, n: int, seed: int) -> dict[str, int]:
    """``n`` Fashion-MNIST test images as PNG files under ``root/<class>/``; returns class counts."""
    x, y = load_fashion_mnist("test")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    counts: dict[str, int] = {}
    for i in idx:
        name = FASHION_CLASSES[int(y[i])]
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(root / name / f"{i:05d}.png")
        counts[name] = counts.get(name, 0) + 1
    return counts


def write_bad_files(root: Path) -> dict[str, str]:
    """A handful of hostile files; returns file name -> expected quarantine error_kind."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not an image\n" * 10)
    (root / "page.png").write_text("<html><body>hi</body></html>")
    rng = np.random.default_rng(7)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    img.save(root / "full.jpg", quality=90)
    data = (root / "full.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "full.jpg").unlink()
    return {"empty.jpg": "empty", "notes.jpg": "not_an_image", "page.png": "not_an_image",
            "truncated.jpg": "truncated"}


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for the test, restored afterwards (deep-model modules use it for every test).

    Tiny networks gain nothing from intra-op threads, and on a busy 2-core machine spinning OpenMP threads made
    2 threads several times slower than 1. Set before every test, not once: a UMAP step can reset the
    process-wide OpenMP count, and bit-identical weights across fits need one thread count throughout.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def swap_env(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set the environment variables ``values`` (``None``: unset) and return their previous values, which
    ``swap_env`` takes back to restore them (also in Dask worker plugins: this module is importable there)."""
    previous = {var: os.environ.get(var) for var in values}
    for var, value in values.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    return previous


def uneven_source(X: np.ndarray, seed: int, *, max_block: int = 400,
                  calls: list[int] | None = None) -> Callable[[], Iterator[np.ndarray]]:
    """A BatchSource over the rows of ``X`` ``(n, D)`` in seeded blocks of 1 to ``max_block - 1`` rows; each call
    appends to ``calls`` when given (to count the passes an estimator makes)."""

    def source() -> Iterator[np.ndarray]:
        if calls is not None:
            calls.append(1)
        rng = np.random.default_rng(seed)
        start = 0
        while start < X.shape[0]:
            size = int(rng.integers(1, max_block))
            yield X[start:start + size]
            start += size

    return source


def extract_fit_label(store: Store, extract: ExtractConfig, *, reduce: ReduceConfig,
                      cluster: ClusterConfig) -> tuple[str, ClusterModel]:
    """The nightly pipeline in this process on an ingested ``store``: extract every planned shard, fit a model on
    them, promote it and label every shard. Returns the extractor key and the model."""
    from imgclust.config import Recipe
    from imgclust.extract.shard import extract_shard
    from imgclust.io.features import done_shards
    from imgclust.io.manifest import plan_shards
    from imgclust.models.labels import label_shard
    from imgclust.models.model import fit_from_store, promote

    key = ""
    for spec in plan_shards(store, shard_size=extract.shard_size):
        key = extract_shard(store, spec, extract)["extractor_key"]
    model = fit_from_store(store, key, recipe=Recipe(reduce=reduce, cluster=cluster), extract=extract)
    promote(store, model.model_id)
    for sid in done_shards(store, key):
        label_shard(store, model.model_id, key, sid)
    return key, model


def registered_classes() -> set[str]:
    """Names of the classes decorated with ``@register_estimator`` anywhere in ``imgclust/``."""
    names: set[str] = set()
    for path in (Path(__file__).resolve().parents[1] / "imgclust").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(d, "id", getattr(d, "attr", None)) == "register_estimator" for d in node.decorator_list):
                names.add(node.name)
    return names
