"""k-means in torch: the GPU backend behind the same estimator interface as :class:`FaissKMeans`.

faiss-gpu wheels carry no Hopper kernels and need CUDA 12 libraries (ENVIRONMENT.md), so GPU
k-means on current machines is done with plain torch: Lloyd's algorithm (Lloyd, "Least squares
quantization in PCM", IEEE TIT 1982) with distances as ``||c||^2 - 2 x.c`` GEMMs over row chunks,
centroid sums by ``index_add_``, and greedy k-means++ seeding (:mod:`imgclust.cluster.seeding`; Arthur &
Vassilvitskii, SODA 2007) on the device. Runs on the CPU too (the
tests compare it with faiss there).

Sampling, the streaming ``predict`` and persistence are inherited from :class:`FaissKMeans`;
only training and assignment differ. Empty clusters are re-seeded each iteration with the
training rows farthest from their centroid (scikit-learn's relocation rule), so ``k`` clusters
are always returned.
"""
from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import torch

from imgclust.cluster.classic import FaissKMeans
from imgclust.cluster.seeding import kmeans_plusplus
from imgclust.devices import resolve_device
from imgclust.estimator import register_estimator
from imgclust.exceptions import ConfigError
from imgclust.progress import Progress
from imgclust.validation import l2_normalize

logger = logging.getLogger(__name__)

__all__ = ["TorchKMeans"]

_CHUNK_BYTES = 256 << 20  # distance block (rows x k float32) per step: bounds temporary device memory


def _chunk_rows(k: int) -> int:
    return max(1024, _CHUNK_BYTES // (4 * max(k, 1)))


def _nearest(X: torch.Tensor, C: torch.Tensor, x2: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row: labels ``(n,)`` int64 and squared distances ``(n,)`` float32.

    ``X`` (n, D), ``C`` (k, D) on one device; ``x2`` (n,) the rows' squared norms if already known.
    Processed in row chunks of ``_chunk_rows(k)``.
    """
    c2 = (C * C).sum(dim=1)
    labels = torch.empty(X.shape[0], dtype=torch.int64, device=X.device)
    dist = torch.empty(X.shape[0], dtype=torch.float32, device=X.device)
    step = _chunk_rows(C.shape[0])
    for s in range(0, X.shape[0], step):
        x = X[s:s + step]
        d = torch.addmm(c2, x, C.T, beta=1.0, alpha=-2.0)  # (b, k): ||c||^2 - 2 x.c
        best, idx = d.min(dim=1)
        labels[s:s + step] = idx
        dist[s:s + step] = (best + ((x * x).sum(dim=1) if x2 is None else x2[s:s + step])).clamp_min_(0.0)
    return labels, dist


@register_estimator
class TorchKMeans(FaissKMeans):
    """k-means with torch on ``device`` (``auto``: CUDA when present); same contract as FaissKMeans.

    Parameters are FaissKMeans's (``n_clusters``, ``n_iter``, ``n_redo``, ``spherical``, ``seed``,
    ``max_points_per_centroid``, ``init``) plus ``device``. Training runs exactly ``n_iter`` Lloyd
    iterations (like faiss; no early stop) on a seeded sample of at most
    ``max_points_per_centroid * k`` rows held on the device (float32, ``m * D * 4`` bytes).

    Attributes: as :class:`FaissKMeans` (``cluster_centers_`` (k, D) float32, ``inertia_``, ...).
    """

    _centers_t: torch.Tensor | None = None  # device copy of cluster_centers_, built on first assignment

    def __init__(self, *, n_clusters: int, n_iter: int = 25, n_redo: int = 1, spherical: bool = False,
                 seed: int = 0, max_points_per_centroid: int = 256,
                 init: Literal["k-means++", "random"] = "k-means++", device: str = "auto") -> None:
        self._set_common(n_clusters=n_clusters, n_iter=n_iter, n_redo=n_redo, spherical=spherical, seed=seed,
                         max_points_per_centroid=max_points_per_centroid, init=init)
        self.device = device

    def _validate_params(self) -> None:
        self._validate_common()
        self._device()

    def _device(self) -> torch.device:
        return resolve_device(self.device)

    def _lloyd(self, X: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """``n_iter`` Lloyd iterations from ``C`` (k, D) on ``X`` (m, D); empty clusters re-seeded."""
        k, x2 = C.shape[0], (X * X).sum(dim=1)
        for _ in range(self.n_iter):
            labels, dist = _nearest(X, C, x2)
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(C).index_add_(0, labels, X)
            empty = torch.nonzero(counts == 0).flatten()
            if empty.numel():  # relocate to the rows worst served by their centroid
                far = torch.topk(dist, empty.numel()).indices
                sums[empty], counts[empty] = X[far], 1
            C = sums / counts[:, None].to(X.dtype)
            if self.spherical:
                C = torch.nn.functional.normalize(C, dim=1)
        return C

    def _train(self, train: np.ndarray) -> tuple[np.ndarray, float]:
        """Best of ``n_redo`` runs on ``train`` (m, D) (already normalised when spherical)."""
        device, k = self._device(), self.n_clusters
        self._centers_t = None  # a refit invalidates the cached device copy of the centroids
        X = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32)).to(device)
        warm = getattr(self, "_warm", None)
        if warm is not None and warm.shape[1] != X.shape[1]:
            raise ConfigError(f"init_centroids have {warm.shape[1]} features, the data {X.shape[1]}")
        best: tuple[np.ndarray, float] | None = None
        n_runs = 1 if warm is not None else self.n_redo
        with torch.no_grad(), Progress(f"k-means restarts (k={k}, {X.shape[0]} rows, {device})", n_runs, logger,
                                       unit="runs", every=0) as progress:
            for redo in range(n_runs):
                gen = torch.Generator(device=device).manual_seed(self.seed + redo)
                if warm is not None:
                    C0 = torch.from_numpy(l2_normalize(warm) if self.spherical else warm).to(device)
                elif self.init == "random":
                    C0 = X[torch.randperm(X.shape[0], generator=gen, device=device)[:k]].clone()
                else:
                    C0 = kmeans_plusplus(X, k, gen)
                C = self._lloyd(X, C0)
                inertia = float(_nearest(X, C)[1].sum(dtype=torch.float64))
                if best is None or inertia < best[1]:
                    best = (C.cpu().numpy().astype(np.float32), inertia)
                progress.advance()
        assert best is not None
        return best

    def _assign(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of preprocessed rows ``(n, D)``: labels int64 (n,), squared distances float32 (n,)."""
        device = self._device()
        C = self._centers_t
        if C is None or C.device != device:
            C = torch.from_numpy(self.cluster_centers_).to(device)
            self._centers_t = C
        with torch.no_grad():
            labels, dist = _nearest(torch.from_numpy(np.ascontiguousarray(X, np.float32)).to(device), C)
        return labels.cpu().numpy(), dist.cpu().numpy()

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], obj: Any) -> None:
        super()._set_state(meta, arrays, obj)
        self._centers_t = None
