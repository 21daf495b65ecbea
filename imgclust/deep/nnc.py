"""Neighbour-consistency deep clustering with sample stability (stage 2 of Qian et al., 2025).

Qian et al., 2025, "Research on Image Deep Clustering Algorithm Based on Near Neighbor Consistency Strategy"
("近邻一致性策略下的图像深度聚类算法研究"): start from a pretrained conv
autoencoder (stage 1, :class:`~imgclust.deep.autoencoder.AutoencoderClusterer`), drop the
decoder, run k-means on the embeddings for initial centroids ``m`` and fine-tune encoder and
centroids together with ``L_C = L_NC + L_SS``:

- Student-t soft assignment ``q_ij`` with ``α = 3`` (eq. 2, as DEC's eq. 1 with other ``α``);
- neighbour consistency (eq. 3), :func:`nc_loss`:
  ``L_NC = 1/N Σ_i Σ_j (log q_ij - log q_{N(i) j})²``, ``N(i)`` the nearest neighbour of sample
  ``i`` in embedding space;
- sample stability (eqs. 4-6), from DECS (Deep Embedding Clustering driven by Sample Stability,
  IJCAI 2024), :func:`sample_stability_loss`:
  ``fq(q) = |q - t| / t`` if ``q < t`` else ``|q - t| / (1 - t)``, ``t`` by Otsu's method
  (:func:`otsu_threshold`), ``sq(x_i) = mean_j fq(q_ij) - λ var_j fq(q_ij)`` (λ = 0.8),
  ``L_SS = 1 - mean_i sq(x_i)`` (eq. 6 sums over ``i``; the mean keeps the scale independent of
  the batch size).

Choices where the paper is silent or does not work as written here (decided on label-free signals):

- ``N(i)`` is searched with an exact faiss ``IndexFlatL2`` over the whole training set and
  recomputed every ``knn_interval`` steps, because the embedding moves during fine-tuning; in
  between, each batch looks its neighbours up in that table and embeds them in the same forward
  pass. Gradients flow through both ``q_i`` and ``q_{N(i)}`` (the loss is symmetric in them).
- Otsu's ``t`` is computed per mini-batch over all its ``q`` values, without gradient.
- The initial centroids may come from the N2D partition of the pretrained embedding
  (``init="umap"``, :func:`imgclust.deep.dec.initial_centroids`; the default of
  :func:`imgclust.deep.methods.create_deep`) instead of the paper's k-means on it.
- ``L_NC + L_SS`` has a trivial minimiser (all images mapped to one point, one cluster); a
  cluster-balance term (``balance``, on by default, 0 = the paper's objective) rules it out, see
  :class:`NeighbourConsistency`, whose ``lr`` default is also lower than the paper's.
- The network is fine-tuned in eval mode: BatchNorm keeps the running statistics of
  pretraining (its affine parameters still learn), so the function trained is exactly the one
  that assigns clusters. With batch statistics (train mode, as :class:`~imgclust.deep.dec.DEC`
  does) the assignments drifted towards one cluster despite ``balance``; with frozen statistics the
  sizes stay near those of the initial partition. No augmentation in this stage.
"""
from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from imgclust.config import AUTO_K
from imgclust.deep.autoencoder import AutoencoderClusterer
from imgclust.deep.dec import FineTuner
from imgclust.deep.losses import student_t
from imgclust.deep.training import TrainingConfig, optimise
from imgclust.devices import mixed_precision
from imgclust.exceptions import ConfigError
from imgclust.validation import check_int

logger = logging.getLogger(__name__)

__all__ = ["NeighbourConsistency", "nc_loss", "sample_stability_loss", "stability_fq", "otsu_threshold",
           "balance_loss", "nearest_neighbours"]

_EPS = 1e-12
_RESUMABLE_PARAMS = ("max_iter", "device", "checkpoint_dir", "checkpoint_every", "pretrained")


# ----------------------------------------------------------------------------- pure functions


def otsu_threshold(values: Any, bins: int = 256) -> float:
    """Otsu's threshold (Otsu, "A threshold selection method from gray-level histograms", IEEE
    SMC 1979) of any array of real values, flattened.

    The range ``[min, max]`` is cut into ``bins`` equal bins (edges ``e_0 < ... < e_bins``); for every
    interior edge ``e_c`` the values split into ``C0 = {v < e_c}`` and ``C1 = {v >= e_c}`` and the
    between-class variance ``σ_B² = w0 w1 (μ0 - μ1)²`` (``w`` class fractions, ``μ`` class means) is
    evaluated; the edge with the largest ``σ_B²`` is returned (the lowest one on ties, i.e. just
    above the lower class). Class means come from per-bin sums of the actual values, not bin
    centres, so at the edges the histogram method equals a brute-force search over the raw values.

    Returns a float with ``min < t <= max``; constant input (or a single value) returns that value.
    """
    v = (values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values))
    v = v.astype(np.float64, copy=False).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise ConfigError(f"otsu_threshold needs a non-empty array of finite values; got {v.size} values "
                          "with NaN/inf or none at all")
    check_int("bins", bins, minimum=2)
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return lo
    edges = np.linspace(lo, hi, bins + 1)
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)  # e_b <= v < e_{b+1}
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    sums = np.bincount(idx, weights=v, minlength=bins)
    n0, s0 = np.cumsum(counts)[:-1], np.cumsum(sums)[:-1]  # class C0 = bins 0..c, split at e_{c+1}
    n1, s1 = v.size - n0, sums.sum() - s0
    valid = (n0 > 0) & (n1 > 0)
    mu0 = np.divide(s0, n0, out=np.zeros_like(s0), where=valid)
    mu1 = np.divide(s1, n1, out=np.zeros_like(s1), where=valid)
    between = np.where(valid, n0 * n1 * (mu0 - mu1) ** 2, -1.0) / float(v.size) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def nc_loss(q: torch.Tensor, q_nb: torch.Tensor) -> torch.Tensor:
    """Neighbour consistency ``L_NC = 1/B Σ_i Σ_j (log q_ij - log q_nb_ij)²`` (Qian et al. eq. 3), a scalar.

    ``q`` ``(B, k)`` soft assignments of the samples, ``q_nb`` ``(B, k)`` those of their nearest
    neighbours (row ``i`` of ``q_nb`` belongs to ``N(i)``). Probabilities are clamped at 1e-12
    inside the log.
    """
    if q.shape != q_nb.shape or q.ndim != 2:
        raise ConfigError(f"q and q_nb must both be (B, k); got {tuple(q.shape)} and {tuple(q_nb.shape)}")
    diff = q.clamp_min(_EPS).log() - q_nb.clamp_min(_EPS).log()
    return diff.pow(2).sum(dim=1).mean()


def stability_fq(q: torch.Tensor, t: float) -> torch.Tensor:
    """DECS's certainty ``fq`` (Qian et al. eq. 4) of each entry of ``q`` (any shape) against threshold ``t``:
    ``|q - t| / t`` where ``q < t``, else ``|q - t| / (1 - t)``; 0 at ``t``, 1 at ``q = 0`` and ``q = 1``.

    ``t`` is clamped into ``[1e-6, 1 - 1e-6]`` so neither denominator vanishes.
    """
    t = min(max(float(t), 1e-6), 1.0 - 1e-6)
    return torch.where(q < t, (t - q) / t, (q - t) / (1.0 - t))


def sample_stability_loss(q: torch.Tensor, lam: float = 0.8, t: float | None = None) -> torch.Tensor:
    """Sample stability loss ``L_SS = 1 - mean_i sq(x_i)`` (Qian et al. eqs. 4-6, from DECS, IJCAI 2024), a scalar.

    ``q`` ``(B, k)``; ``sq(x_i) = mean_j fq(q_ij) - lam * var_j fq(q_ij)`` with the population
    variance over the ``k`` clusters (eq. 5 divides by ``k``) and :func:`stability_fq`. ``t`` defaults
    to :func:`otsu_threshold` over all values of ``q`` (detached: the threshold is a constant for
    the gradient). Minimising it drives assignments away from the threshold, towards 0 or 1.
    """
    if q.ndim != 2:
        raise ConfigError(f"q must be (B, k), got {tuple(q.shape)}")
    if t is None:
        t = otsu_threshold(q.detach())
    fq = stability_fq(q, t)
    sq = fq.mean(dim=1) - lam * fq.var(dim=1, unbiased=False)
    return 1.0 - sq.mean()


def balance_loss(q: torch.Tensor) -> torch.Tensor:
    """``log k - H(mean_i q_i)`` (a scalar >= 0, 0 when the batch's mean assignment is uniform) for
    ``q`` ``(B, k)``: the entropy term of SCAN (Van Gansbeke et al., ECCV 2020) that rules out the
    trivial solution of one cluster for everything. Not part of Qian et al.; see
    :class:`NeighbourConsistency`'s ``balance``."""
    if q.ndim != 2:
        raise ConfigError(f"q must be (B, k), got {tuple(q.shape)}")
    p = q.mean(dim=0)
    return math.log(q.shape[1]) + torch.special.xlogy(p, p).sum()


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """Index ``(N,)`` int64 of each row's nearest other row of ``emb`` ``(N, d)`` (exact L2, faiss
    ``IndexFlatL2``). A row never is its own neighbour, also when it has exact duplicates."""
    import faiss  # lazy: loads OpenMP/BLAS

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n = emb.shape[0]
    if n < 2:
        raise ConfigError(f"nearest neighbours need at least 2 samples, got {n}")
    index = faiss.IndexFlatL2(emb.shape[1])
    index.add(emb)
    _, nb = index.search(emb, 2)
    own = nb[:, 0] == np.arange(n)
    return np.where(own, nb[:, 1], nb[:, 0]).astype(np.int64)


# ----------------------------------------------------------------------------- estimator


class NeighbourConsistency(FineTuner):
    """Neighbour-consistency + sample-stability clustering of images (Qian et al. 2025).

    Parameters
    ----------
    n_clusters : k, or ``"auto"`` (chosen where the initial centroids are placed, as for
        :class:`~imgclust.deep.dec.DEC`).
    alpha : Student-t degrees of freedom (3 in the paper).
    lam : λ of the sample stability ``sq`` (0.8 in the paper).
    knn_interval : steps between recomputations of every sample's nearest neighbour on the full
        training set (the embedding moves as the encoder is fine-tuned).
    balance : weight of :func:`balance_loss` (``log k - H(mean_i q_i)`` over the batch) added to
        ``L_C``. **Not in the paper**: mapping every image to one point makes ``L_NC`` 0 (all
        neighbours agree) and leaves ``L_SS`` no reason to object, and ``balance=0`` does collapse to
        one cluster on Fashion-MNIST images, while ``balance=1`` keeps the sizes spread (judged on
        cluster sizes only, no labels). ``balance=0``
        gives the paper's objective exactly. The term assumes roughly balanced clusters; lower it
        for strongly imbalanced data.
    pretrained : a fitted :class:`AutoencoderClusterer` (stage 1; not modified; fitted on the images
        first if it is not fitted), or ``None`` to pretrain one with ``autoencoder`` params (JSON
        dict of flat keywords, defaults ``arch="convae"`` with ``embed_dim = n_clusters``, as in the
        paper). Not saved.
    init : initial centroids ``m``, :func:`imgclust.deep.dec.initial_centroids`: ``"kmeans"`` (the
        paper: k-means on the pretrained embedding) or ``"umap"`` (embedding means of the N2D
        UMAP + k-means partition).
    kmeans_redo : k-means restarts for the initial centroids.
    training : :class:`~imgclust.deep.training.TrainingConfig`: ``max_iter``, ``batch_size``, ``lr`` of Adam
        on encoder + centroids, ``seed``, ``device``, exact-resume checkpoints. The paper runs 20,000
        iterations of batch 256 at lr 1e-3; the default 2,000 is sized for a CPU; raise it on a GPU. The
        default lr is 1e-4, not the paper's 1e-3: at 1e-3 most labels kept changing between refreshes and
        the assignments drifted towards one dominant cluster; at 1e-4 the fraction of changed labels falls
        steadily with stable cluster sizes.

    Attributes
    ----------
    network_ : fine-tuned network (eval mode; its decoder is carried along unused)
    cluster_centers_ : (k, d) float32 learned centroids ``m``; labels_ : (N,) int64 ``argmax q``
    history_ : per epoch ``{"epoch", "step", "loss", "seconds"}`` (loss = ``L_NC + L_SS`` + balance term)
    refreshes_ : per neighbour refresh ``{"step", "delta_label", "neighbour_agreement", "largest", "nc",
        "ss"}``: fraction of labels changed since the previous refresh, fraction of samples whose
        neighbour has the same label, fraction of samples in the largest cluster (1.0 = collapse),
        and mean ``L_NC`` / ``L_SS`` over the steps since the previous refresh
    n_iter_ : optimisation steps done
    """

    _training_defaults: ClassVar[dict[str, Any]] = {"max_iter": 2000, "batch_size": 256, "lr": 1e-4, "seed": 0,
                                                    "device": "auto", "checkpoint_every": 500}
    _ae_defaults: ClassVar[dict[str, Any]] = {"arch": "convae"}
    _tag = "NNC"

    def __init__(self, *, n_clusters: int | Literal["auto"] = 10, alpha: float = 3.0, lam: float = 0.8, knn_interval: int = 100,
                 balance: float = 1.0, pretrained: AutoencoderClusterer | None = None,
                 autoencoder: dict[str, Any] | None = None, init: str = "kmeans", kmeans_redo: int = 10,
                 training: TrainingConfig | None = None) -> None:
        self.lam, self.knn_interval, self.balance = lam, knn_interval, balance
        super().__init__(n_clusters=n_clusters, alpha=alpha, pretrained=pretrained, autoencoder=autoencoder,
                         init=init, kmeans_redo=kmeans_redo, training=training)

    def _validate_params(self) -> None:
        super()._validate_params()
        check_int("knn_interval", self.knn_interval, minimum=1)
        if not self.lam >= 0 or not self.balance >= 0:
            raise ConfigError(f"need lam >= 0 and balance >= 0; got lam={self.lam}, balance={self.balance}")

    def fit(self, images: Any, y: Any = None) -> NeighbourConsistency:
        """Fine-tune on images ``(N, H, W[, C])`` uint8 (N >= 2); ``y`` is ignored."""
        arr = self._begin_fit(images)
        need = 2 if self.n_clusters == AUTO_K else max(2, self.n_clusters)
        if arr.shape[0] < need:
            raise ConfigError(f"NeighbourConsistency needs at least max(2, n_clusters) = {need} "
                              f"images, got {arr.shape[0]}")
        ft = self._start(arr)
        net, model, x, device = ft.net, ft.model, ft.x, ft.device
        st: dict[str, Any] = {"nb": None, "last": None, "refreshes": [], "nc_sum": 0.0, "ss_sum": 0.0, "count": 0}

        def before_step(step: int) -> bool:
            if (step - 1) % self.knn_interval:
                return False
            emb, q = self._full_q(ft)
            nb = torch.from_numpy(nearest_neighbours(emb))
            labels = q.argmax(dim=1)
            rec = {"step": step - 1, "neighbour_agreement": float((labels == labels[nb]).double().mean()),
                   "largest": float(torch.bincount(labels).max()) / labels.shape[0],
                   "delta_label": None if st["last"] is None else float((labels != st["last"]).double().mean()),
                   "nc": st["nc_sum"] / st["count"] if st["count"] else None,
                   "ss": st["ss_sum"] / st["count"] if st["count"] else None}
            st["refreshes"].append(rec)
            logger.info("NNC step %d: neighbours refreshed, %.4f agree, %s of labels changed", step - 1,
                        rec["neighbour_agreement"], rec["delta_label"])
            st.update(nb=nb, last=labels, nc_sum=0.0, ss_sum=0.0, count=0)
            return False

        def step_fn(idx: torch.Tensor, step: int) -> float:
            b = idx.shape[0]
            xb = x[torch.cat([idx, st["nb"][idx]])].to(device)  # samples and their neighbours, one pass
            with mixed_precision(device):
                q = student_t(net.encode(xb), model.mu, self.alpha)  # type: ignore[operator]
                l_nc = nc_loss(q[:b], q[b:])
                l_ss = sample_stability_loss(q[:b], self.lam)
                loss = l_nc + l_ss
                if self.balance:
                    loss = loss + self.balance * balance_loss(q[:b])
            out = optimise(loss, ft.opt)
            st["nc_sum"] += float(l_nc.detach())
            st["ss_sum"] += float(l_ss.detach())
            st["count"] += 1
            return out

        net.eval()  # frozen BatchNorm statistics, see the module docstring
        self._tune(ft, step_fn, before_step, st, name="NNC")
        return self
