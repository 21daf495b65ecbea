"""The estimator contract battery (tests/cluster/test_cluster.py, "contract battery") over every deep method.

The deep estimators take images ``(N, H, W[, C])``, not feature rows, so the battery is adapted: a wrong
*per-image shape* plays the feature-count mismatch, and float64 images play float64 rows. Each method of
:data:`~imgclust.deep.methods.DEEP_METHODS` is built with :func:`~imgclust.deep.methods.create_deep` and tiny
training options (one epoch / three steps on 60 images of 24x24), fitted once per module and once more for
the same-seed check (issue 20).
"""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imgclust.deep.base import DeepEstimator
from imgclust.deep.methods import _CLASSES, DEEP_METHODS, create_deep, load_deep
from imgclust.exceptions import ConfigError, NotFittedError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 3
SEED = 5
SIZE = 24
"""Image side: ASCAE / SCAE need at least 21x21 pixels (imgclust.deep.networks.ASCAE)."""
UMAP_QUICK: dict[str, Any] = {"umap_neighbors": 5, "consensus_runs": 1}
QUICK: dict[str, dict[str, Any]] = {
    "ascae": {"batch_size": 32, "kmeans_redo": 1},
    "scae": {"batch_size": 32, "kmeans_redo": 1},
    "convae": {"batch_size": 32, "kmeans_redo": 1},
    "n2d": {"batch_size": 32, **UMAP_QUICK},
    "n2d-scae": {"batch_size": 32, **UMAP_QUICK},
    "n2d-ensemble": {"batch_size": 32, "members": 1, "pixel_components": 5, "umap_neighbors": 5,
                     "gmm_runs": 1},
    "simclr": {"batch_size": 32, "width": 4, "proj_dim": 8, **UMAP_QUICK},
    "dec": {"batch_size": 32, "kmeans_redo": 1, "update_interval": 2},
    "idec": {"batch_size": 32, "kmeans_redo": 1, "update_interval": 2},
    "nnc": {"batch_size": 32, "kmeans_redo": 1, "knn_interval": 2},
    "deepcluster": {"batch_size": 32, "n_pseudo": 6, "embed_dim": 8, "pca_dim": 4, "kmeans_redo": 1},
}
"""The battery's cases: every deep method by name, with what makes it quick on tiny images (the fine-tuners
keep create_deep's default ``init="umap"`` start)."""


def _make(method: str) -> DeepEstimator:
    """A fresh, unfitted estimator of ``method``: one epoch (three fine-tuning steps), CPU, seeded."""
    return create_deep(method, k=K, epochs=1, max_iter=3, seed=SEED, device="cpu", **QUICK[method])


def _blob_images(n_per: int, seed: int, size: int = SIZE) -> np.ndarray:
    """Three classes, shuffled: a bright 5x5 square in one of three places, plus noise;
    ``(3 n_per, size, size)`` uint8."""
    rng = np.random.default_rng(seed)
    imgs = []
    for r, c in [(2, 2), (2, size - 7), (size - 7, 5)]:
        for _ in range(n_per):
            img = rng.integers(0, 40, size=(size, size))
            img[r:r + 5, c:c + 5] = 230
            imgs.append(img)
    return rng.permutation(np.asarray(imgs, dtype=np.uint8))


def _outputs(est: DeepEstimator) -> dict[str, Callable[[Any], np.ndarray]]:
    """What a fitted deep estimator answers about new images: labels, embeddings, and the method's extras."""
    out: dict[str, Callable[[Any], np.ndarray]] = {
        "predict": est.predict, "transform": est.transform}  # type: ignore[attr-defined]
    for extra in ("cluster_features", "predict_proba"):
        if hasattr(est, extra):
            out[extra] = getattr(est, extra)
    return out


def _refuses(exc: type[Exception], pattern: str, call: Callable[[Any], Any], arg: Any, *, what: str) -> None:
    """``call(arg)`` raises ``exc`` with a message matching ``pattern``; ``what`` names the call on failure
    (another exception type propagates as is)."""
    try:
        call(arg)
    except exc as err:
        assert re.search(pattern, str(err)), f"{what}: {exc.__name__} without {pattern!r}: {err}"
    else:
        pytest.fail(f"{what}: no {exc.__name__} raised")


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """Training images ``(60, 24, 24)`` and new ones ``(30, 24, 24)``, uint8."""
    return _blob_images(20, seed=0), _blob_images(10, seed=1)


@pytest.fixture(scope="module")
def _one_thread_for_module() -> Iterator[None]:
    """One torch thread while the module-scoped fits run (``one_torch_thread`` is per test and starts after
    them): the same-seed refit inside a test must see the same thread count to be bit-identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(QUICK))
def case(request: pytest.FixtureRequest, images: tuple[np.ndarray, np.ndarray],
         _one_thread_for_module: None) -> tuple[str, DeepEstimator, dict[str, Any]]:
    """``(method, fitted estimator, its get_params() deep-copied before fit)``, one fit per method."""
    method = request.param
    est = _make(method)
    before = copy.deepcopy(est.get_params())
    torch.set_num_threads(1)  # a UMAP step of the previous method may have reset the count
    assert est.fit(images[0]) is est
    return method, est, before


def test_the_battery_covers_every_deep_method_and_class() -> None:
    """Every name in DEEP_METHODS is a case, and the cases build every class load_deep knows."""
    assert set(QUICK) == set(DEEP_METHODS), set(QUICK) ^ set(DEEP_METHODS)
    built = {type(_make(method)).__name__ for method in QUICK}
    assert built == set(_CLASSES), built ^ set(_CLASSES)


def test_contract_params_untouched_by_fit_and_repr(case) -> None:
    method, est, before = case
    assert est.get_params() == before  # fit does not touch the parameters (nor mutate a dict among them)
    assert _make(method).get_params() == est.get_params()
    for e in (est, _make(method)):
        assert repr(e).startswith(type(e).__name__ + "(")


@pytest.mark.parametrize("method", list(QUICK))
def test_contract_not_fitted(method: str, images: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    est = _make(method)
    for name, call in _outputs(est).items():
        _refuses(NotFittedError, "not fitted yet; call fit", call, images[1], what=f"{method}.{name}")
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        est.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_contract_image_shape_mismatch(case, images: tuple[np.ndarray, np.ndarray]) -> None:
    """Images of another per-image shape than the training images: a ConfigError naming both shapes."""
    method, est, _ = case
    new = images[1]
    other_size = new[:, :20, :20]
    colour = np.repeat(new[..., None], 3, axis=-1)
    for name, out in _outputs(est).items():
        what = f"{method}.{name}"
        _refuses(ConfigError, r"\(20, 20\).*fitted on \(24, 24\)", out, other_size, what=f"{what} 20x20")
        _refuses(ConfigError, r"\(24, 24, 3\).*fitted on \(24, 24\)", out, colour, what=f"{what} RGB")


def test_contract_fit_returns_self_same_seed_same_result_dtypes(case, images) -> None:
    method, est, _ = case
    train, new = images
    again = _make(method)
    assert again.fit(train) is again
    np.testing.assert_array_equal(again.labels_, est.labels_)
    first, second = _outputs(est), _outputs(again)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(second[name](new), first[name](new), err_msg=f"{method}.{name}")
    labels, emb = est.predict(new), est.transform(new)  # type: ignore[attr-defined]
    assert labels.shape == (len(new),) and labels.dtype == np.int64
    assert emb.shape == (len(new), est.embed_dim_) and emb.dtype == np.float32
    assert est.labels_.shape == (len(train),) and est.labels_.dtype == np.int64
    # float64 images holding the same 0..255 values are cast: the same outputs, the same dtypes
    wide = new.astype(np.float64)
    for name, out in first.items():
        a, b = out(wide), out(new)
        assert a.dtype == b.dtype, (method, name)
        np.testing.assert_array_equal(a, b, err_msg=f"{method}.{name} on float64 images")


def test_contract_save_load_round_trip(case, images: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    method, est, _ = case
    new = images[1]
    est.save(tmp_path / method)
    assert not list((tmp_path / method).rglob("*.tmp"))
    expected = {name: out(new) for name, out in _outputs(est).items()}
    for loaded in (load_deep(tmp_path / method), type(est).load(str(tmp_path / method))):
        assert type(loaded) is type(est) and loaded.get_params() == est.get_params()
        assert loaded.input_shape_ == est.input_shape_ and loaded.embed_dim_ == est.embed_dim_
        np.testing.assert_array_equal(loaded.labels_, est.labels_)
        for name, out in _outputs(loaded).items():  # the same batch: UMAP's transform depends on the batch
            np.testing.assert_array_equal(out(new), expected[name], err_msg=f"{method}.{name} after load")
    doc = json.loads((tmp_path / method / "estimator.json").read_text())
    assert doc["class"] == type(est).__name__ and "numpy" in doc["versions"]
