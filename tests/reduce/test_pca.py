"""Exact PCA from summed per-block statistics: oracle checks against scikit-learn and the Dask flow path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from imgclust.config import ClusterConfig, Recipe, ReduceConfig
from imgclust.estimator import load_estimator
from imgclust.exceptions import ConfigError, CorruptArtifactError
from imgclust.io.features import embeddings_table, feature_path, marker_path
from imgclust.io.store import Store
from imgclust.models.model import ClusterModel, fit_from_store, pca_statistics_path, write_pca_statistics
from imgclust.reduce.pca import GEMM_ROWS, ExactPCA, ScatterStats, float32_scatter_bound, merge_all
from imgclust.reduce.streaming import StreamingPCA


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data.astype(np.float32)  # (1797, 64), real 8x8 digit images


def _gamma(m: int) -> float:
    """Higham's gamma(m) for float32: the relative bound of m accumulated float32 roundings."""
    u = float(np.finfo(np.float32).eps) / 2
    return m * u / (1 - m * u)


def test_eigen_step_matches_sklearn_pca_to_float32_storage(digits: np.ndarray) -> None:
    """From float64 statistics (no float32 sums), axes, variances and coordinates match scikit-learn's
    float64 SVD up to the float32 rounding of the stored results and of ``transform``."""
    X = digits.astype(np.float64)
    C = X - X.mean(axis=0)
    ours = ExactPCA(n_components=20).fit_stats(ScatterStats(n=len(X), mean=X.mean(axis=0), scatter=C.T @ C))
    ref = PCA(n_components=20, svd_solver="full").fit(X)  # float64: its rounding (~1e-12) is negligible here
    angles = subspace_angles(ours.components_.T.astype(np.float64), ref.components_.T)
    assert np.max(angles) < 64 * _gamma(1)  # float32 storage of 64-d unit axes
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=_gamma(1), atol=1e-9)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=_gamma(2))
    signs = np.sign(np.sum(ours.components_ * ref.components_, axis=1))  # sklearn's sign convention differs
    # transform: float32 centring and a 64-term float32 product; + 1 for the stored mean and axes
    bound = _gamma(X.shape[1] + 3) * ((np.abs(X) + np.abs(ref.mean_)) @ np.abs(ref.components_).T)
    assert np.all(np.abs(ours.transform(digits) * signs - ref.transform(X)) <= bound)


def test_matches_sklearn_pca_within_the_float32_scatter_bound(digits: np.ndarray) -> None:
    """End to end (float32 scatter of 8 blocks, merged pairwise): the covariance error ``E`` is bounded
    entrywise by the module's float32 bound, so by Weyl ``|d lambda_i| <= ||E||_2`` and by Davis-Kahan the
    20-d subspace turns by at most ``arcsin(||E||_2 / (lambda_20 - lambda_21 - ||E||_2))``."""
    ours = ExactPCA(n_components=20, batch_size=256).fit(digits)
    X = digits.astype(np.float64)
    ref = PCA(n_components=21, svd_solver="full").fit(X)
    blocks = [digits[i:i + 256] for i in range(0, len(digits), 256)]
    err = float(np.linalg.norm(_scatter_bound(blocks), 2)) / (len(digits) - 1)  # ||E||_2 <= || bound ||_2
    lam = ref.explained_variance_
    np.testing.assert_allclose(ours.explained_variance_, lam[:20], rtol=_gamma(1), atol=err)
    angles = subspace_angles(ours.components_.T.astype(np.float64), ref.components_[:20].T)
    assert np.max(angles) <= np.arcsin(err / (lam[19] - lam[20] - err)) + 64 * _gamma(1)


def test_variance_target_picks_the_same_k_as_sklearn(digits: np.ndarray) -> None:
    ours = ExactPCA(variance_target=0.9).fit(digits)
    assert ours.n_components_ == PCA(n_components=0.9, svd_solver="full").fit(digits).n_components_
    assert ours.variance_target_met_ is True
    capped = ExactPCA(variance_target=0.99, max_components=5).fit(digits)
    assert capped.n_components_ == 5 and capped.variance_target_met_ is False


def _scatter_bound(blocks: list[np.ndarray]) -> np.ndarray:
    """Entrywise bound on the float32 rounding of the summed scatter of ``blocks`` (the module docstring's
    ``gamma(b + 2) |C|^T |C|`` per block, ``b`` the rows accumulated in one float32 product)."""
    bound = np.zeros((blocks[0].shape[1],) * 2)
    for b in blocks:
        absc = np.abs(b.astype(np.float64) - b.mean(axis=0, dtype=np.float64))
        bound += float32_scatter_bound(min(len(b), GEMM_ROWS)) * (absc.T @ absc)
    return bound


def test_merge_is_exact_and_order_independent(digits: np.ndarray) -> None:
    """Merged and whole summaries both equal the float64 scatter within the float32 rounding bound
    (whatever BLAS kernel the CPU picks); the merge algebra itself adds only float64 rounding."""
    X = digits.astype(np.float64)
    C = X - X.mean(axis=0)
    exact = C.T @ C  # float64 reference: its own rounding is ~1e-13 relative, far below the bound
    whole = ScatterStats.of(digits)
    blocks = np.array_split(digits, [100, 101, 900])  # uneven, one of 1 row
    parts = [ScatterStats.of(b) for b in blocks]
    assert np.all(np.abs(whole.scatter - exact) <= _scatter_bound([digits]) + 1e-9)
    for merged in (merge_all(parts), merge_all(parts[::-1]), parts[2].merge(parts[0]).merge(parts[3]).merge(parts[1])):
        assert merged.n == whole.n
        np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)  # float64 sums of non-negative pixels
        assert np.all(np.abs(merged.scatter - exact) <= _scatter_bound(blocks) + 1e-9)
    # the bound is tight enough to catch a real mistake: merging without the between-means term
    wrong = sum(p.scatter for p in parts)
    assert np.any(np.abs(wrong - exact) > _scatter_bound(blocks))


def test_products_accumulate_at_most_gemm_rows_in_float32() -> None:
    """A block longer than GEMM_ROWS is summed in float32 pieces: its error stays within the bound of
    GEMM_ROWS terms, and equals the merge of its pieces up to float64 rounding."""
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((2 * GEMM_ROWS + 5, 16)) * 3 + 100).astype(np.float32)
    C = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
    err = np.abs(ScatterStats.of(X).scatter - C.T @ C)
    assert np.all(err <= float32_scatter_bound(GEMM_ROWS) * (np.abs(C).T @ np.abs(C)))
    with pytest.raises(ConfigError, match="no float32 error bound"):
        float32_scatter_bound(2**24)


def test_same_leading_subspace_as_incremental_pca(digits: np.ndarray) -> None:
    """The two reducers a user can choose agree on real data. IPCA truncates to k components after
    every batch, so only its leading axes match closely (measured: 10th angle ~14 deg, 5th ~1 deg)."""
    exact = ExactPCA(n_components=10).fit(digits)
    ipca = StreamingPCA(n_components=10, batch_size=300).fit(digits)
    lead = subspace_angles(exact.components_[:5].T.astype(np.float64), ipca.components_[:5].T.astype(np.float64))
    assert np.degrees(np.max(lead)) < 5.0
    np.testing.assert_allclose(ipca.explained_variance_[:5], exact.explained_variance_[:5], rtol=0.01)


def _axis_angle_bounds(digits: np.ndarray, block_rows: int, k: int) -> np.ndarray:
    """Per-axis Davis-Kahan bound ``arcsin(||E||_2 / (gap_i - ||E||_2))`` (radians, ``(k,)``) on how far
    each of the first ``k`` axes can turn from the float64 axes when the scatter is summed in float32 over
    blocks of ``block_rows``; ``gap_i`` is the distance of eigenvalue i to its neighbours."""
    blocks = [digits[i:i + block_rows] for i in range(0, len(digits), block_rows)]
    err = float(np.linalg.norm(_scatter_bound(blocks), 2)) / (len(digits) - 1)
    lam = PCA(n_components=k + 1, svd_solver="full").fit(digits.astype(np.float64)).explained_variance_
    gaps = np.minimum(np.r_[np.inf, lam[:k - 1] - lam[1:k]], lam[:k] - lam[1:k + 1])
    assert np.all(gaps > 2 * err), "eigenvalues too close for a bound; pick fewer axes"
    return np.arcsin(err / (gaps - err)) + 64 * _gamma(1)  # + float32 storage of the axes


def _assert_same_axes(a: np.ndarray, b: np.ndarray, bound: np.ndarray) -> None:
    """Same sign (the convention is deterministic) and within ``bound`` radians, axis by axis."""
    dots = np.sum(a.astype(np.float64) * b, axis=1)
    assert np.all(dots > 0), f"an axis flipped sign: {dots}"
    assert np.all(np.arccos(np.clip(dots, -1, 1)) <= bound), (np.arccos(np.clip(dots, -1, 1)), bound)


def test_save_load_roundtrip_and_deterministic_signs(tmp_path: Path, digits: np.ndarray) -> None:
    a = ExactPCA(n_components=8, whiten=True).fit(digits)
    b = ExactPCA(n_components=8, whiten=True, batch_size=97).fit(digits)
    _assert_same_axes(a.components_, b.components_,  # merge order does not flip axes
                      _axis_angle_bounds(digits, len(digits), 8) + _axis_angle_bounds(digits, 97, 8))
    a.save(tmp_path / "pca")
    loaded = load_estimator(tmp_path / "pca")
    assert isinstance(loaded, ExactPCA)
    np.testing.assert_array_equal(loaded.transform(digits[:50]), a.transform(digits[:50]))


def test_bad_inputs_are_clear_errors(digits: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="exceeds the 64 input features"):
        ExactPCA(n_components=65).fit(digits)
    with pytest.raises(ConfigError, match="exactly one"):
        ExactPCA().fit(digits)
    with pytest.raises(ConfigError, match="empty"):
        ExactPCA(n_components=2).fit(lambda: iter([]))
    with pytest.raises(ConfigError, match="different backbones"):
        ScatterStats.of(digits).merge(ScatterStats.of(digits[:, :10]))
    with pytest.raises(CorruptArtifactError, match="not a PCA statistics file"):
        ScatterStats.from_bytes(b"garbage", where="s3://b/x.npz")
    with pytest.raises(ValueError, match="exactly one of n_components or variance_target for pca"):
        ReduceConfig(method="pca", n_components=None)


def _feature_store(root: Path, X: np.ndarray, shard_rows: int, key: str = "k") -> tuple[Store, list[str]]:
    store, shard_ids = Store(root), []
    for s, lo in enumerate(range(0, len(X), shard_rows)):
        sid = f"2026-11-24_20261124T000000Z-t_{s:05d}"
        ids = [f"{i:06d}" for i in range(lo, min(len(X), lo + shard_rows))]
        store.write_parquet(feature_path(key, sid), embeddings_table(ids, X[lo:lo + shard_rows]))
        store.write_json(marker_path(key, sid), {"shard_id": sid})
        shard_ids.append(sid)
    return store, shard_ids


def test_statistics_per_shard_group_give_the_single_pass_model(tmp_path: Path, digits: np.ndarray) -> None:
    store, shards = _feature_store(tmp_path, digits, 200)
    reduce = ReduceConfig(method="pca", n_components=12)
    paths = [write_pca_statistics(store, "k", g, reduce) for g in (shards[:3], shards[3:7], shards[7:])]
    assert paths[0] == pca_statistics_path("k", shards[:3], reduce)  # deterministic: a retry overwrites it
    cluster = ClusterConfig(k=10, n_redo=1, seed=0)
    merged = fit_from_store(store, "k", recipe=Recipe(reduce=reduce,
                                                      cluster=cluster), shard_ids=shards, pca_statistics=paths)
    single = fit_from_store(store, "k", recipe=Recipe(reduce=reduce, cluster=cluster), save=False)
    assert merged.reducer is not None and single.reducer is not None
    _assert_same_axes(merged.reducer.components_, single.reducer.components_,
                      _axis_angle_bounds(digits, 200, 12) + _axis_angle_bounds(digits, len(digits), 12))
    assert not any(store.exists(p) for p in paths)  # scratch statistics are removed once the model is saved
    with pytest.raises(ConfigError, match="use 'pca'"):
        fit_from_store(store, "k", recipe=Recipe(reduce=ReduceConfig(n_components=5),
                                                 cluster=cluster), pca_statistics=paths)


@pytest.mark.integration
def test_build_clusters_flow_sums_statistics_on_dask_workers(tmp_path: Path, digits: np.ndarray,
                                                            dask_address: str) -> None:
    from prefect_dask import DaskTaskRunner

    from flows.build_clusters import build_clusters
    from imgclust.config import ExtractConfig
    from imgclust.extract.shard import backbone_for

    key = backbone_for(ExtractConfig(extractor="pixels")).key()
    X = np.pad(np.repeat(digits, 2, axis=0), ((0, 0), (0, 784 - 64)))  # pixels-28-L is 784-d; zero-variance pad
    store, shards = _feature_store(tmp_path, X, 400, key=key)
    flow = build_clusters.with_options(task_runner=DaskTaskRunner(address=dask_address))
    out = flow(store=str(tmp_path), extract=ExtractConfig(extractor="pixels"),
               reduce=ReduceConfig(method="pca", n_components=12), cluster=ClusterConfig(k=10, n_redo=1, seed=0))
    assert out["labeled"] == len(X)
    model = ClusterModel.load(store, out["model_id"])
    assert isinstance(model.reducer, ExactPCA) and model.reducer.n_samples_seen_ == len(X)
    ref = PCA(n_components=12, svd_solver="full").fit(X)
    assert np.max(subspace_angles(model.reducer.components_.T.astype(np.float64), ref.components_.T)) < 1e-3
    assert not list((tmp_path / "scratch" / "pca").rglob("*.npz"))
