"""Gaussian mixture clustering: the last stage of N2D (UMAP of an autoencoded embedding, then a GMM).

McConville, Santos-Rodriguez, Piechocki & Craddock, "N2D: (Not Too) Deep Clustering via Clustering
the Local Manifold of an Autoencoded Embedding", ICPR 2020, cluster the UMAP coordinates with a
full-covariance Gaussian mixture (EM, Dempster, Laird & Rubin 1977) rather than k-means: UMAP
clusters are elongated and of unequal spread, which k-means' equal spherical Voronoi cells cut
badly. Chosen over k-means on the same UMAP coordinates by ``benchmarks/n2d_choice.py``.

EM runs in scikit-learn (``GaussianMixture``) on a seeded sample; the fitted means, weights and
precision Cholesky factors are kept as plain arrays, so prediction is numpy (chunked, any number of
rows) and the model saves like every other estimator (``arrays.npz``, no pickle).

``consensus_runs = R > 1``: EM from R seeds, their partitions of the sample combined by evidence
accumulation (Fred & Jain, TPAMI 2005; :mod:`imgclust.cluster.consensus`), and the final mixture estimated
from the consensus partition in one M-step (weights, means, covariances of its clusters), so
prediction stays one numpy posterior. A single EM run splits a large UMAP blob (several similar
classes) at a seed-dependent place; the consensus keeps what the runs agree on. The gain over a single
run is small and not uniform across feature views; it comes mostly from never landing on the worst single
runs (``benchmarks/gmm_consensus.py``).
"""
from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

from imgclust.batches import ArrayOrSource, sample_rows
from imgclust.cluster.consensus import MAX_CONSENSUS_ROWS, consensus_labels
from imgclust.estimator import Estimator, register_estimator
from imgclust.exceptions import ConfigError
from imgclust.progress import Progress
from imgclust.validation import check_int

logger = logging.getLogger(__name__)

__all__ = ["GaussianMixtureClusterer"]

_CHUNK = 65536
_COVARIANCES = ("full", "diag")


@register_estimator
class GaussianMixtureClusterer(Estimator):
    """Gaussian mixture model clustering: label = component of highest posterior.

    Parameters
    ----------
    n_clusters : mixture components k
    covariance_type : ``"full"`` (N2D's choice; ``k * D * D`` parameters, fine for D <= ~100) or ``"diag"``
    n_init : EM restarts (k-means++-seeded by scikit-learn), the best lower bound is kept
    max_iter, tol, reg_covar : EM settings (scikit-learn's meaning)
    fit_sample : rows EM is fitted on (seeded uniform sample; ``None`` = all rows)
    random_state : seed of the sample and of EM's initialisation
    consensus_runs : 1 (plain EM) or R > 1 EM runs (seeds ``random_state .. random_state + R - 1``)
        combined by evidence accumulation, the mixture then estimated from the consensus partition
        (module docstring); the consensus sees at most 20,000 rows of the sample (dense pairwise matrix)

    Attributes
    ----------
    means_ : (k, D) float64; weights_ : (k,) float64
    precisions_cholesky_ : (k, D, D) for "full", (k, D) for "diag", float64
    converged_ : bool (every run); n_iter_ : int (EM iterations, all runs); lower_bound_ : float
        (per-row log-likelihood bound of the best run; with a consensus, the final mixture's mean
        log-likelihood of the consensus rows)
    n_samples_seen_ : int; n_train_samples_ : int; n_features_in_ : int
    """

    _array_attrs = ("means_", "weights_", "precisions_cholesky_")
    _meta_attrs = ("n_features_in_", "n_samples_seen_", "n_train_samples_", "converged_", "n_iter_", "lower_bound_")

    def __init__(self, *, n_clusters: int, covariance_type: Literal["full", "diag"] = "full", n_init: int = 1,
                 max_iter: int = 200, tol: float = 1e-3, reg_covar: float = 1e-6, fit_sample: int | None = 100000,
                 random_state: int = 0, consensus_runs: int = 1) -> None:
        self.n_clusters = n_clusters
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.fit_sample = fit_sample
        self.random_state = random_state
        self.consensus_runs = consensus_runs

    def _validate_params(self) -> None:
        check_int("n_clusters", self.n_clusters, minimum=1)
        check_int("n_init", self.n_init, minimum=1)
        check_int("max_iter", self.max_iter, minimum=1)
        check_int("fit_sample", self.fit_sample, minimum=2, allow_none=True)
        check_int("random_state", self.random_state, minimum=0)
        check_int("consensus_runs", self.consensus_runs, minimum=1)
        if self.covariance_type not in _COVARIANCES:
            raise ConfigError(f"covariance_type must be one of {list(_COVARIANCES)}, got {self.covariance_type!r}")
        if not self.tol > 0 or not self.reg_covar >= 0:
            raise ConfigError(f"tol must be > 0 and reg_covar >= 0; got tol={self.tol}, reg_covar={self.reg_covar}")

    def fit(self, X: ArrayOrSource) -> GaussianMixtureClusterer:
        """Fit EM on a seeded sample of ``X`` (array ``(n, D)`` or :data:`BatchSource`)."""
        self._validate_params()
        sample = sample_rows(X, self.fit_sample, self.random_state)
        rows = sample.rows.astype(np.float64)
        if rows.shape[0] < self.n_clusters:
            raise ConfigError(f"a {self.n_clusters}-component mixture needs at least {self.n_clusters} rows, "
                              f"got {rows.shape[0]}; use fewer clusters or more data")
        stage = "GMM consensus: EM runs" if self.consensus_runs > 1 else "GMM: EM"
        runs = []
        with Progress(stage, self.consensus_runs, logger, unit="runs", every=0) as progress:
            for r in range(self.consensus_runs):
                runs.append(self._em(rows, self.random_state + r))
                progress.advance(detail=f"{int(runs[-1].n_iter_)} iterations")
        self.converged_, self.n_iter_ = all(gm.converged_ for gm in runs), sum(int(gm.n_iter_) for gm in runs)
        if self.consensus_runs == 1:
            self.means_ = np.asarray(runs[0].means_, dtype=np.float64)
            self.weights_ = np.asarray(runs[0].weights_, dtype=np.float64)
            self.precisions_cholesky_ = np.asarray(runs[0].precisions_cholesky_, dtype=np.float64)
            self.lower_bound_ = float(runs[0].lower_bound_)
        else:
            self._fit_consensus(rows, runs)
        self.n_samples_seen_, self.n_train_samples_ = sample.n_total, rows.shape[0]
        self.n_features_in_ = rows.shape[1]
        logger.info("GMM: %d components (%s) on %d of %d rows, %d EM iterations", self.n_clusters,
                    self.covariance_type, rows.shape[0], sample.n_total, self.n_iter_)
        return self

    def _em(self, rows: np.ndarray, seed: int) -> Any:
        """One scikit-learn EM fit (``n_init`` restarts) of ``rows`` ``(n, D)`` float64 with ``seed``."""
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(n_components=self.n_clusters, covariance_type=self.covariance_type,
                             n_init=self.n_init, max_iter=self.max_iter, tol=self.tol, reg_covar=self.reg_covar,
                             random_state=seed).fit(rows)
        if not gm.converged_:
            logger.warning("GMM: EM did not converge in max_iter=%d iterations (tol %g); raise max_iter",
                           self.max_iter, self.tol)
        return gm

    def _fit_consensus(self, rows: np.ndarray, runs: list[Any]) -> None:
        """Evidence-accumulation consensus of the runs' partitions, then one M-step from it.

        Rows beyond :data:`~imgclust.cluster.consensus.MAX_CONSENSUS_ROWS` are left out of the consensus
        (seeded subset). The mixture's weights, means and covariances (``+ reg_covar`` on the
        diagonal) are those of the consensus clusters, as EM's M-step computes them from hard
        responsibilities.
        """
        if rows.shape[0] > MAX_CONSENSUS_ROWS:
            keep = np.sort(np.random.default_rng(self.random_state).choice(rows.shape[0], MAX_CONSENSUS_ROWS,
                                                                           replace=False))
            rows = rows[keep]
        partitions = np.stack([gm.predict(rows) for gm in runs], axis=1)
        self._m_step(rows, consensus_labels(partitions, self.n_clusters))
        logger.info("GMM consensus of %d EM runs on %d rows", len(runs), rows.shape[0])

    def fit_labels(self, X: np.ndarray, labels: np.ndarray) -> GaussianMixtureClusterer:
        """The mixture whose components are the given clusters: one M-step from hard labels.

        Args:
            X: ``(n, D)`` rows; labels: ``(n,)`` int in ``0..n_clusters-1``, every cluster non-empty
                (a partition found elsewhere, e.g. a consensus over several feature views).

        Weights, means and covariances (``+ reg_covar`` on the diagonal) are those of the labelled
        clusters, so :meth:`predict` assigns new rows to the most probable of them.
        """
        self._validate_params()
        rows = np.asarray(X, dtype=np.float64)
        lab = np.asarray(labels)
        if rows.ndim != 2 or lab.shape != (rows.shape[0],):
            raise ConfigError(f"X must be (n, D) and labels (n,); got {rows.shape} and {lab.shape}")
        counts = np.bincount(lab, minlength=self.n_clusters) if lab.size and lab.min() >= 0 else np.zeros(0)
        if counts.size != self.n_clusters or not (counts > 1).all():
            raise ConfigError(f"labels must give each of the {self.n_clusters} clusters 0..{self.n_clusters - 1} "
                              f"at least 2 rows; got counts {counts.tolist()}")
        self._m_step(rows, lab.astype(np.int64))
        self.converged_, self.n_iter_ = True, 0
        self.n_samples_seen_ = self.n_train_samples_ = rows.shape[0]
        self.n_features_in_ = rows.shape[1]
        return self

    def _m_step(self, rows: np.ndarray, labels: np.ndarray) -> None:
        """Set weights, means, precision Cholesky factors and ``lower_bound_`` from hard ``labels`` of ``rows``."""
        k, d = self.n_clusters, rows.shape[1]
        counts = np.bincount(labels, minlength=k).astype(np.float64)
        self.weights_ = counts / counts.sum()
        self.means_ = np.stack([rows[labels == j].mean(axis=0) for j in range(k)])
        if self.covariance_type == "full":
            chol = np.empty((k, d, d), dtype=np.float64)
            for j in range(k):
                diff = rows[labels == j] - self.means_[j]
                cov = diff.T @ diff / counts[j] + self.reg_covar * np.eye(d)
                lower = np.linalg.cholesky(cov)
                chol[j] = np.linalg.solve(lower, np.eye(d)).T  # sklearn's precisions_cholesky_ convention
            self.precisions_cholesky_ = chol
        else:
            var = np.stack([((rows[labels == j] - self.means_[j]) ** 2).mean(axis=0) for j in range(k)])
            self.precisions_cholesky_ = 1.0 / np.sqrt(var + self.reg_covar)
        from scipy.special import logsumexp

        lp = self._weighted_log_prob(rows)
        self.lower_bound_ = float(np.mean(logsumexp(lp, axis=1)))
        agree = float(np.mean(lp.argmax(axis=1) == labels))
        logger.info("GMM from %d labelled rows: the mixture reproduces %.3f of the labels", rows.shape[0], agree)

    @property
    def cluster_centers_(self) -> np.ndarray:
        """``(k, D)`` float32 component means (the clusters' centres for reports and labels)."""
        self._check_fitted()
        return self.means_.astype(np.float32)

    def _weighted_log_prob(self, X: np.ndarray) -> np.ndarray:
        """``log w_j + log N(x | mu_j, Sigma_j)`` ``(n, k)`` float64 for rows ``X`` ``(n, D)``."""
        X = X.astype(np.float64)
        n, d = X.shape
        chol = self.precisions_cholesky_
        out = np.empty((n, self.n_clusters), dtype=np.float64)
        if chol.ndim == 3:  # full: y = (x - mu) @ L_j, log|L_j| from its diagonal
            log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
            for j in range(self.n_clusters):
                y = X @ chol[j] - self.means_[j] @ chol[j]
                out[:, j] = np.einsum("ij,ij->i", y, y)
        else:  # diag: precisions_cholesky_ holds 1 / sigma per feature
            log_det = np.log(chol).sum(axis=1)
            for j in range(self.n_clusters):
                y = (X - self.means_[j]) * chol[j]
                out[:, j] = np.einsum("ij,ij->i", y, y)
        return -0.5 * (d * np.log(2 * np.pi) + out) + log_det + np.log(self.weights_)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Posterior responsibilities ``(n, k)`` float64 (rows sum to 1)."""
        self._check_fitted()
        X = self._check_dim(X)
        out = np.empty((X.shape[0], self.n_clusters), dtype=np.float64)
        for start in range(0, X.shape[0], _CHUNK):
            lp = self._weighted_log_prob(X[start:start + _CHUNK])
            lp -= lp.max(axis=1, keepdims=True)
            p = np.exp(lp)
            out[start:start + _CHUNK] = p / p.sum(axis=1, keepdims=True)
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Component of highest posterior ``(n,)`` int64 for each row of ``X`` ``(n, D)``."""
        self._check_fitted()
        X = self._check_dim(X)
        labels = np.empty(X.shape[0], dtype=np.int64)
        for start in range(0, X.shape[0], _CHUNK):
            labels[start:start + _CHUNK] = self._weighted_log_prob(X[start:start + _CHUNK]).argmax(axis=1)
        return labels
