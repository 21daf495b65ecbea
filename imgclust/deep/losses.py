"""Pure tensor losses of the deep clustering methods.

- :func:`student_t` and :func:`target_distribution`: DEC's soft assignment and sharpened target
  (Xie, Girshick & Farhadi, "Unsupervised Deep Embedding for Clustering Analysis", ICML 2016,
  eqs. 1 and 3), also the q of the neighbour-consistency method (Qian et al., 2025,
  "Research on Image Deep Clustering Algorithm Based on Near Neighbor Consistency Strategy", with alpha = 3).
- :func:`kl_clustering_loss`: DEC's ``KL(P || Q)`` (eq. 2); IDEC adds it to the reconstruction
  loss (Guo et al., "Improved Deep Embedded Clustering with Local Structure Preservation", IJCAI 2017).
- :func:`ascae_loss`: the ASCAE objective J (eq. 2 of "基于无监督学习视觉特征的深度聚类方法", Deep clustering
  based on unsupervised learning of visual features, Journal of Nanjing University of Aeronautics &
  Astronautics 53(5), 2021).
- :func:`nt_xent`: SimCLR's normalised temperature-scaled cross entropy (Chen et al., ICML 2020).

No state, no side effects: every function maps tensors to tensors and is differentiable where
training needs it.
"""
from __future__ import annotations

import torch

from imgclust.exceptions import ConfigError

__all__ = ["student_t", "target_distribution", "kl_clustering_loss", "ascae_loss", "squared_distances", "nt_xent"]

_EPS = 1e-12


def squared_distances(z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``||z_i - mu_j||²`` as ``(N, k)`` for ``z`` ``(N, d)`` and ``mu`` ``(k, d)``.

    Computed from explicit differences (not the ``|a|² + |b|² - 2ab`` expansion), so it is exact
    and never negative; memory is ``O(N k d)``, fine for mini-batches.
    """
    if z.ndim != 2 or mu.ndim != 2 or z.shape[1] != mu.shape[1]:
        raise ConfigError(f"z must be (N, d) and mu (k, d) with the same d; got {tuple(z.shape)} and {tuple(mu.shape)}")
    return (z[:, None, :] - mu[None, :, :]).pow(2).sum(dim=-1)


def student_t(z: torch.Tensor, mu: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Soft assignment ``q`` ``(N, k)`` of embeddings ``z`` ``(N, d)`` to centroids ``mu`` ``(k, d)``.

    DEC eq. 1 (Xie et al. 2016): ``q_ij = (1 + ||z_i - mu_j||² / α)^(-(α+1)/2)`` normalised over
    ``j``, a Student's t kernel with ``α`` degrees of freedom (DEC uses α = 1, Qian et al. 2025 α = 3).
    Rows sum to 1.
    """
    if not alpha > 0:
        raise ConfigError(f"alpha (Student-t degrees of freedom) must be > 0, got {alpha}")
    kernel = (1.0 + squared_distances(z, mu) / alpha).pow(-(alpha + 1.0) / 2.0)
    return kernel / kernel.sum(dim=1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's auxiliary target ``p`` ``(N, k)`` from ``q`` ``(N, k)`` (Xie et al. 2016, eq. 3).

    ``p_ij = (q_ij² / f_j) / Σ_j' (q_ij'² / f_j')`` with soft cluster frequencies
    ``f_j = Σ_i q_ij``: squaring sharpens confident assignments, dividing by ``f_j`` stops large
    clusters from absorbing everything. Computed without gradient (it is a fixed target).
    """
    with torch.no_grad():
        weight = q.pow(2) / q.sum(dim=0, keepdim=True).clamp_min(_EPS)
        return weight / weight.sum(dim=1, keepdim=True).clamp_min(_EPS)


def kl_clustering_loss(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q) = Σ_ij p_ij log(p_ij / q_ij)``, averaged over the ``N`` rows (scalar).

    DEC eq. 2 (Xie et al. 2016); ``q`` ``(N, k)`` soft assignments, ``p`` ``(N, k)`` targets (held
    fixed). Terms with ``p_ij = 0`` contribute 0; ``q`` is clamped away from 0 inside the log.
    """
    if q.shape != p.shape:
        raise ConfigError(f"q and p must have the same shape; got {tuple(q.shape)} and {tuple(p.shape)}")
    p = p.detach()
    return (torch.special.xlogy(p, p) - p * q.clamp_min(_EPS).log()).sum() / q.shape[0]


def ascae_loss(x: torch.Tensor, recon: torch.Tensor, f: torch.Tensor, d3: torch.Tensor,
               lam: float) -> torch.Tensor:
    """ASCAE objective (the ASCAE paper's eq. 2): ``J = 1/N Σ_i ||x_i - f(x_i)||² + λ/N Σ_i ||b_i - g_i||²``.

    ``x``, ``recon`` ``(N, C, H, W)``; ``f`` (= b, the F layer) and ``d3`` (= g, the D3 layer)
    ``(N, 50)``. Squared norms are summed over each sample's elements and averaged over ``N``,
    literally as in the paper (not a per-pixel mean): with raw 0..255 pixels the paper picks λ = 20
    from [0, 40]. Gradients flow into both F and D3, so the encoder is also pulled towards features
    the fully connected part can reproduce.
    """
    if x.shape != recon.shape or f.shape != d3.shape:
        raise ConfigError(f"shape mismatch: x {tuple(x.shape)} vs recon {tuple(recon.shape)}, "
                          f"f {tuple(f.shape)} vs d3 {tuple(d3.shape)}")
    n = x.shape[0]
    rec = (x - recon).pow(2).reshape(n, -1).sum(dim=1).mean()
    fc = (f - d3).pow(2).reshape(n, -1).sum(dim=1).mean()
    return rec + lam * fc


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen, Kornblith, Norouzi & Hinton, ICML 2020, eq. 1), averaged over the ``2N`` anchors.

    ``z1``, ``z2`` ``(N, d)``: projections of two augmented views of the same ``N`` images (row ``i`` of
    each is a positive pair). With ``u`` the ``2N`` rows L2-normalised and ``s_ab = u_a·u_b / τ``, anchor
    ``a`` with positive ``p(a)`` costs ``-log(exp(s_a,p(a)) / Σ_{b≠a} exp(s_ab))``: the other ``2N - 2``
    views in the batch are its negatives.
    """
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ConfigError(f"z1 and z2 must both be (N, d) with N >= 2; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    u = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = (u @ u.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=sim.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return torch.nn.functional.cross_entropy(sim, positive)
