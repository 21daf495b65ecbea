"""StreamingPCA against full PCA (oracle), streaming vs in-memory equivalence, UMAP smoke test."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import uneven_source
from sklearn.datasets import load_digits, make_blobs
from sklearn.decomposition import PCA

from imgclust.batches import as_batch_source
from imgclust.exceptions import ConfigError
from imgclust.reduce.streaming import StreamingPCA, UMAPReducer, rechunk


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data.astype(np.float32)  # (1797, 64)


def test_rechunk_exact_sizes_and_order() -> None:
    blocks = [np.arange(n, dtype=np.float32).reshape(-1, 1) + off for n, off in [(5, 0), (7, 5), (3, 12)]]
    out = list(rechunk(blocks, batch_size=4, min_last=3))
    assert [c.shape[0] for c in out] == [4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(out).ravel(), np.arange(15))
    merged = list(rechunk(blocks, batch_size=4, min_last=4))
    assert [c.shape[0] for c in merged] == [4, 4, 7]  # short tail merged into the previous chunk
    np.testing.assert_array_equal(np.concatenate(merged).ravel(), np.arange(15))
    assert [c.shape[0] for c in rechunk(blocks[:1], batch_size=8, min_last=2)] == [5]


def test_ipca_matches_pca_up_to_sign(digits: np.ndarray) -> None:
    ref = PCA(n_components=10, svd_solver="full").fit(digits)
    est = StreamingPCA(n_components=10, batch_size=300).fit(digits)
    cos = np.abs(np.sum(est.components_ * ref.components_, axis=1))
    assert np.all(cos[:5] > 0.99), cos
    np.testing.assert_allclose(est.explained_variance_[:5], ref.explained_variance_[:5], rtol=0.02)
    np.testing.assert_allclose(est.explained_variance_ratio_[:5], ref.explained_variance_ratio_[:5], rtol=0.02)
    np.testing.assert_allclose(est.mean_, ref.mean_, atol=1e-4)
    Z, Zref = est.transform(digits), ref.transform(digits)
    assert Z.dtype == np.float32 and Z.shape == (1797, 10)
    for j in range(3):  # projections agree up to the component's sign
        assert abs(np.corrcoef(Z[:, j], Zref[:, j])[0, 1]) > 0.99
    assert est.n_samples_seen_ == 1797 and est.n_components_ == 10


def test_stream_with_uneven_blocks_equals_array(digits: np.ndarray) -> None:
    calls: list[int] = []
    # batch_size 199: 1797 = 9 * 199 + 6, a tail shorter than n_components that must be merged
    a = StreamingPCA(n_components=10, batch_size=199).fit(digits)
    b = StreamingPCA(n_components=10, batch_size=199).fit(uneven_source(digits, seed=3, calls=calls))
    assert calls == [1]  # a single pass over the source
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_array_equal(a.explained_variance_, b.explained_variance_)
    assert b.n_samples_seen_ == 1797
    c = StreamingPCA(n_components=10, batch_size=199).fit(as_batch_source(digits, batch_size=1000))
    np.testing.assert_array_equal(a.components_, c.components_)


def reusing_source(X: np.ndarray, size: int):
    """A BatchSource that refills one buffer for every block (as some readers do)."""

    def source() -> Iterator[np.ndarray]:
        buf = np.empty((size, X.shape[1]), dtype=np.float32)
        for start in range(0, X.shape[0], size):
            part = X[start:start + size]
            buf[:len(part)] = part
            yield buf[:len(part)]

    return source


def test_source_that_reuses_its_buffer(digits: np.ndarray) -> None:
    a = StreamingPCA(n_components=10, batch_size=250).fit(digits)
    b = StreamingPCA(n_components=10, batch_size=250).fit(reusing_source(digits, 100))
    np.testing.assert_array_equal(a.components_, b.components_)


def test_variance_target_picks_smallest_k(digits: np.ndarray) -> None:
    cum = np.cumsum(PCA(svd_solver="full").fit(digits).explained_variance_ratio_)
    for target in (0.5, 0.9, 0.95):
        est = StreamingPCA(variance_target=target, batch_size=400).fit(uneven_source(digits, seed=1))
        expected = int(np.searchsorted(cum, target) + 1)
        assert est.n_components_ == expected, (target, est.n_components_, expected)
        assert est.components_.shape == (expected, 64)
        assert est.explained_variance_ratio_.sum() >= target - 1e-6
        assert est.variance_target_met_ is True


def test_variance_target_unreachable_keeps_all_and_warns(digits: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="imgclust.reduce.streaming"):
        est = StreamingPCA(variance_target=0.99, max_components=5, batch_size=500).fit(digits)
    assert est.n_components_ == 5 and est.variance_target_met_ is False
    assert "below variance_target" in caplog.text


@pytest.mark.parametrize("params", [
    {}, {"n_components": 5, "variance_target": 0.9}, {"n_components": 0}, {"variance_target": 1.5},
    {"n_components": 100, "batch_size": 50}, {"n_components": 65},
])
def test_invalid_params_raise_config_error(params: dict, digits: np.ndarray) -> None:
    with pytest.raises(ConfigError):
        StreamingPCA(**params).fit(digits)


def test_too_few_rows_raises(digits: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="at least 10 rows"):
        StreamingPCA(n_components=10).fit(digits[:5])
    with pytest.raises(ConfigError, match="no rows"):
        StreamingPCA(n_components=2).fit(lambda: iter([]))


def test_whiten_and_l2_output(digits: np.ndarray) -> None:
    est = StreamingPCA(n_components=5, whiten=True, batch_size=600).fit(digits)
    Z = est.transform(digits)
    np.testing.assert_allclose(Z.var(axis=0, ddof=1), 1.0, rtol=0.05)
    est = StreamingPCA(n_components=5, l2_normalize_input=True, l2_normalize_output=True).fit(digits)
    np.testing.assert_allclose(np.linalg.norm(est.transform(digits), axis=1), 1.0, rtol=1e-5)


def test_partial_fit_resumes_after_save_load(digits: np.ndarray, tmp_path) -> None:
    chunks = np.array_split(digits, 6)
    straight = StreamingPCA(n_components=8)
    for c in chunks:
        straight.partial_fit(c)
    first = StreamingPCA(n_components=8)
    for c in chunks[:3]:
        first.partial_fit(c)
    first.save(tmp_path / "ckpt")
    resumed = StreamingPCA.load(tmp_path / "ckpt")
    for c in chunks[3:]:
        resumed.partial_fit(c)
    np.testing.assert_allclose(resumed.components_, straight.components_, atol=1e-6)
    assert resumed.n_samples_seen_ == 1797
    with pytest.raises(ConfigError, match="64"):
        resumed.partial_fit(digits[:, :10])


def test_umap_fit_transform_shape() -> None:
    X, _ = make_blobs(n_samples=500, n_features=16, centers=3, random_state=0)
    est = UMAPReducer(n_components=2, n_neighbors=10, fit_sample=400, random_state=0).fit(X)
    assert est.embedding_.shape == (400, 2) and est.embedding_.dtype == np.float32
    assert est.sample_indices_.shape == (400,) and est.n_samples_seen_ == 500
    Z = est.transform(X[:50].astype(np.float32))
    assert Z.shape == (50, 2) and Z.dtype == np.float32
    with pytest.raises(ConfigError, match="n_neighbors"):
        UMAPReducer(n_neighbors=50, fit_sample=30).fit(X)
