"""Greedy k-means++ seeding in torch, shared by :class:`~imgclust.cluster.classic.FaissKMeans` and
:class:`~imgclust.cluster.kmeans_torch.TorchKMeans`.

k-means++ (Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007) in
scikit-learn's greedy variant: each of the ``k`` steps draws ``2 + log k`` candidates with probability
proportional to the squared distance to the nearest chosen seed, and keeps the candidate that lowers the
total the most. The work is ``O(m k D log k)`` over ``m`` rows in ``k`` sequential steps, so the steps must
be fast: here each is one GEMM and a few whole-tensor operations, multi-threaded on the CPU and on the GPU.
It replaces scikit-learn's ``kmeans_plusplus``, which does mostly single-threaded numpy per step;
``benchmarks/kmeans.py`` times the k-means fits that include it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["kmeans_plusplus", "kmeans_plusplus_numpy"]


def kmeans_plusplus(X: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeds ``(k, D)`` from the rows of ``X`` ``(n, D)``, drawn with ``gen`` (same device)."""
    n = X.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen, device=gen.device).item())
    centers = [X[first]]
    closest = ((X - X[first]) ** 2).sum(dim=1)
    x2 = (X * X).sum(dim=1)
    for _ in range(1, k):
        total = closest.sum()
        if float(total) <= 0.0:  # fewer distinct rows than k: any row is as good as another
            cand = torch.randint(n, (trials,), generator=gen, device=gen.device)
        else:
            cand = torch.multinomial(closest / total, trials, replacement=True, generator=gen)
        Y = X[cand]  # (t, D)
        d = (x2[:, None] + (Y * Y).sum(dim=1)[None, :] - 2.0 * (X @ Y.T)).clamp_min_(0.0)  # (n, t)
        d = torch.minimum(d, closest[:, None])
        best = int(torch.argmin(d.sum(dim=0)).item())
        centers.append(Y[best])
        closest = d[:, best].contiguous()
    return torch.stack(centers)


def kmeans_plusplus_numpy(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """:func:`kmeans_plusplus` on the CPU for a float32 array ``(n, D)``: seeds ``(k, D)`` float32, seeded."""
    with torch.no_grad():
        seeds = kmeans_plusplus(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)), k,
                                torch.Generator().manual_seed(seed))
    return seeds.numpy().astype(np.float32, copy=False)
