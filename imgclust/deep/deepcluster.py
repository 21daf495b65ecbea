"""DeepCluster: alternate k-means pseudo-labels and classification training.

Caron, Bojanowski, Joulin & Douze, "Deep Clustering for Unsupervised Learning of Visual
Features", ECCV 2018. Every epoch:

1. embed all images with the CNN (eval mode), PCA-reduce, whiten and L2-normalise the features
   (the paper: 4096 -> 256 dims with faiss ``PCAMatrix(eigen_power=-0.5)``; here
   :class:`~imgclust.reduce.streaming.StreamingPCA` with ``whiten`` and ``l2_normalize_output``);
2. k-means (:class:`~imgclust.cluster.classic.FaissKMeans`) into ``n_pseudo`` clusters -> pseudo-labels;
   the paper over-clusters (k = 10,000 for ImageNet's 1,000 classes), so ``n_pseudo`` defaults to
   ``10 * n_clusters``;
3. avoid trivial solutions (paper §3.4): an empty cluster is re-seeded by splitting the largest one
   (:func:`reseed_empty_clusters`); the classifier head is re-initialised (N(0, 0.01²), zero bias,
   fresh optimizer state); images are sampled uniformly over pseudo-labels (weight
   ``1 / |cluster|``, :func:`uniform_label_weights`);
4. train CNN + head one epoch with cross-entropy on the pseudo-labels, SGD with momentum 0.9,
   lr 0.05, weight decay 1e-5 (the paper's settings), on augmented images (random horizontal flip
   plus small rotation / translation / crop, the grey-image analogue of the paper's random resized
   crop + flip). The paper's fixed Sobel filter only removes colour and is not used.

The CNN is the encoder of :class:`~imgclust.deep.networks.ConvAE` (four stride-2 convs with
BatchNorm, a linear layer to ``embed_dim``) from random init, as in the paper; its decoder is built
(so :func:`~imgclust.deep.networks.build_network` can rebuild the saved network) but never used or
trained. After the last epoch the final clusters are k-means with ``n_clusters`` on the same
PCA / whitening / L2 features of the final embeddings.
"""
from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imgclust.cluster.classic import FaissKMeans
from imgclust.deep.base import DeepEstimator
from imgclust.deep.networks import build_network, input_geometry
from imgclust.deep.training import TrainingConfig, encode_batched, optimise, random_affine, to_float_images
from imgclust.devices import mixed_precision
from imgclust.exceptions import ConfigError
from imgclust.metrics import nmi
from imgclust.reduce.streaming import StreamingPCA
from imgclust.validation import check_int

logger = logging.getLogger(__name__)

__all__ = ["DeepCluster", "reseed_empty_clusters", "uniform_label_weights"]

_PSEUDO_KMEANS_ITER = 20  # Lloyd iterations per epoch (Caron et al.'s faiss setting)


def reseed_empty_clusters(features: np.ndarray, labels: np.ndarray, centroids: np.ndarray, *,
                          rng: np.random.Generator, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray, int]:
    """Give every empty cluster members by splitting the currently largest cluster (Caron et al. §3.4).

    ``features`` ``(N, D)``, ``labels`` ``(N,)`` int in ``[0, K)``, ``centroids`` ``(K, D)``. For each
    empty ``j``: take the largest cluster ``c``, draw a random unit direction ``u``, set
    ``m_j = m_c + δu`` and ``m_c = m_c - δu`` with ``δ = eps * max(||m_c||, 1)``, and move the members
    of ``c`` that are closer to ``m_j`` than to the new ``m_c`` (the half-space beyond the
    hyperplane through the old centroid) to ``j``. If that leaves one side empty (all members
    identical) a random half moves instead. Since ``K <= N``, the largest cluster has at least two
    members whenever one is empty, so every cluster ends non-empty.

    Returns new ``labels`` ``(N,)`` int64, ``centroids`` ``(K, D)`` float32 (copies) and the number of
    clusters re-seeded.
    """
    labels = np.asarray(labels, dtype=np.int64).copy()
    centroids = np.array(centroids, dtype=np.float32, copy=True)
    features = np.asarray(features, dtype=np.float32)
    k = centroids.shape[0]
    if labels.shape[0] != features.shape[0] or features.shape[1] != centroids.shape[1]:
        raise ConfigError(f"features {features.shape}, labels {labels.shape} and centroids {centroids.shape} "
                          "do not match: need (N, D), (N,) and (K, D)")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ConfigError(f"labels must lie in [0, {k}), got range [{labels.min()}, {labels.max()}]")
    if k > labels.shape[0]:
        raise ConfigError(f"cannot fill {k} clusters with {labels.shape[0]} samples; use at most as many "
                          "clusters as samples")
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0)
    for j in empty:
        c = int(np.argmax(counts))
        u = rng.standard_normal(centroids.shape[1], dtype=np.float32)
        u /= max(float(np.linalg.norm(u)), 1e-12)
        delta = eps * max(float(np.linalg.norm(centroids[c])), 1.0)
        m_j, m_c = centroids[c] + delta * u, centroids[c] - delta * u
        members = np.flatnonzero(labels == c)
        pts = features[members]
        to_j = ((pts - m_j) ** 2).sum(1) < ((pts - m_c) ** 2).sum(1)
        if to_j.all() or not to_j.any():
            to_j = np.zeros(members.size, dtype=bool)
            to_j[rng.permutation(members.size)[: members.size // 2]] = True
        labels[members[to_j]] = j
        centroids[j], centroids[c] = m_j, m_c
        counts[j], counts[c] = int(to_j.sum()), int(counts[c] - to_j.sum())
    if empty.size:
        logger.info("DeepCluster: re-seeded %d empty pseudo-label cluster(s) by splitting large ones", empty.size)
    return labels, centroids, int(empty.size)


def uniform_label_weights(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Per-sample weights ``(N,)`` float64 ``1 / |cluster(i)|``, normalised to sum 1: sampling with
    them picks every non-empty pseudo-label with equal probability (Caron et al. §3.4)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_labels).astype(np.float64)
    w = 1.0 / counts[labels]
    return w / w.sum()


class _Model(nn.Module):
    """CNN plus the linear classifier head over the pseudo-labels: one state_dict for checkpoints."""

    def __init__(self, net: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.net = net
        self.head = head


class DeepCluster(DeepEstimator):
    """DeepCluster (Caron et al., ECCV 2018) on raw images with a small conv net.

    Parameters
    ----------
    n_clusters : k of the final clustering.
    n_pseudo : pseudo-label clusters per epoch (at most the number of images); ``None`` =
        ``10 * n_clusters`` (the paper's 10x over-clustering of ImageNet), or the number of images
        when there are fewer.
    embed_dim : CNN feature size (the ConvAE encoder's linear output).
    pca_dim : PCA (whitened, then L2-normalised) dimension of the features k-means sees (the paper
        reduces to 256; capped by ``embed_dim``).
    momentum, weight_decay : SGD's (the paper: 0.9, 1e-5; ``training.lr`` its learning rate).
    augment : random horizontal flip + rotation (±15°) / translation (±10 %) / crop (≥ 85 %) of
        each training batch (pixels are scaled to [0, 1] first).
    kmeans_redo : restarts of the final k-means with ``n_clusters`` (the per-epoch k-means runs once).
    training : :class:`~imgclust.deep.training.TrainingConfig`: ``epochs`` = clustering / training rounds
        (the paper: 500 on ImageNet; the default 20 is sized for a CPU), ``batch_size`` and ``lr`` of SGD (the
        paper: 256, 0.05, the defaults), ``seed``, ``device``, ``checkpoint_dir`` / ``checkpoint_every``
        (exact-resume checkpoints every that many steps; ``None``, the default here, = once per epoch;
        always at the end).

    Attributes
    ----------
    network_ : the CNN (eval mode); labels_ : (N,) int64 final clusters of the training images
    pca_ : StreamingPCA (whitening + L2) of the final features; kmeans_ : FaissKMeans on them
    cluster_centers_ : (n_clusters, pca dim) float32 in that space
    history_ : per epoch ``{"epoch", "step", "loss", "seconds"}`` (mean cross-entropy)
    assignments_ : per epoch ``{"epoch", "nmi_prev", "reseeded", "largest", "smallest"}``: NMI of the
        pseudo-labels with the previous epoch's (the paper's stability curve), re-seeded clusters,
        largest / smallest pseudo-cluster size
    """

    _meta_attrs = (*DeepEstimator._meta_attrs, "history_", "assignments_", "n_pseudo_")
    _tensor_attrs = ("labels_",)
    _sub_estimators: ClassVar[dict[str, str]] = {"pca": "pca_", "kmeans": "kmeans_"}
    _training_defaults: ClassVar[dict[str, Any]] = {**DeepEstimator._training_defaults, "lr": 0.05,
                                                    "checkpoint_every": None}
    _resumable_params = (*DeepEstimator._resumable_params, "kmeans_redo")

    def __init__(self, *, n_clusters: int = 10, n_pseudo: int | None = None, embed_dim: int = 64,
                 pca_dim: int = 32, momentum: float = 0.9, weight_decay: float = 1e-5, augment: bool = True,
                 kmeans_redo: int = 10, training: TrainingConfig | None = None) -> None:
        self.n_clusters = n_clusters
        self.n_pseudo = n_pseudo
        self.embed_dim = embed_dim
        self.pca_dim = pca_dim
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.augment = augment
        self.kmeans_redo = kmeans_redo
        self._set_training(training)

    def _validate_params(self) -> None:
        super()._validate_params()
        for name in ("n_clusters", "embed_dim", "pca_dim", "kmeans_redo"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("n_pseudo", self.n_pseudo, minimum=2, allow_none=True)
        if not 0 <= self.momentum < 1 or not self.weight_decay >= 0:
            raise ConfigError(f"need 0 <= momentum < 1 and weight_decay >= 0; got momentum={self.momentum}, "
                              f"weight_decay={self.weight_decay}")

    def _features(self, emb: np.ndarray) -> tuple[StreamingPCA, np.ndarray]:
        """Fit PCA + whitening + L2 on embeddings ``(N, embed_dim)``; return it and the ``(N, m)`` features."""
        m = min(self.pca_dim, emb.shape[1], emb.shape[0])
        pca = StreamingPCA(n_components=m, whiten=True, l2_normalize_output=True, batch_size=max(4096, m))
        return pca, pca.fit_transform(emb)

    def fit(self, images: Any, y: Any = None) -> DeepCluster:
        """Train on images ``(N, H, W[, C])`` uint8 and cluster them; ``y`` is ignored."""
        arr = self._begin_fit(images)
        n = int(arr.shape[0])
        if self.n_clusters > n or n < 2:
            raise ConfigError(f"DeepCluster needs at least max(2, n_clusters={self.n_clusters}) images, got {n}")
        if self.n_pseudo is not None and self.n_pseudo > n:
            raise ConfigError(f"n_pseudo={self.n_pseudo} exceeds the {n} images; use at most {n} pseudo-labels")
        n_pseudo = self.n_pseudo or min(10 * self.n_clusters, n)
        if n_pseudo < 10 * self.n_clusters and self.n_pseudo is None:
            logger.info("DeepCluster: only %d images, so n_pseudo defaults to %d instead of 10 * n_clusters", n, n)
        x = to_float_images(arr)
        device, gen = self._seeded_device()
        spec = {"arch": "convae", **input_geometry(arr), "embed_dim": self.embed_dim}
        net = build_network(spec).to(device)
        model = _Model(net, nn.Linear(self.embed_dim, n_pseudo)).to(device)
        cnn_params = [p for name, p in net.named_parameters() if name.startswith(("encoder.", "embed."))]
        opt = torch.optim.SGD(cnn_params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        head_opt = torch.optim.SGD(model.head.parameters(), lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        st: dict[str, Any] = {"pseudo": None, "samples": None, "assignments": []}
        infer = self._inference_batch()
        steps_per_epoch = math.ceil(n / self.batch_size)

        def before_step(step: int) -> bool:
            if (step - 1) % steps_per_epoch:
                return False
            epoch = (step - 1) // steps_per_epoch
            _, feats = self._features(encode_batched(net, x, batch_size=infer, device=device))
            km = FaissKMeans(n_clusters=n_pseudo, n_iter=_PSEUDO_KMEANS_ITER, seed=self.seed + epoch).fit(feats)
            pseudo, _, reseeded = reseed_empty_clusters(feats, km.predict(feats), km.cluster_centers_,
                                                        rng=np.random.default_rng([self.seed, epoch]))
            sizes = np.bincount(pseudo, minlength=n_pseudo)
            prev = st["pseudo"]
            st["assignments"].append({"epoch": epoch + 1, "nmi_prev": None if prev is None else nmi(prev.numpy(), pseudo),
                                      "reseeded": reseeded, "largest": int(sizes.max()), "smallest": int(sizes.min())})
            logger.info("DeepCluster epoch %d: %d pseudo-labels, sizes %d..%d, NMI with previous %s", epoch + 1,
                        n_pseudo, sizes.min(), sizes.max(), st["assignments"][-1]["nmi_prev"])
            weights = torch.from_numpy(uniform_label_weights(pseudo, n_pseudo))
            sampler = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            st["pseudo"] = torch.from_numpy(pseudo)
            st["samples"] = torch.multinomial(weights, n, replacement=True, generator=sampler)
            with torch.no_grad():  # fresh classifier head and optimizer state each round (paper §3.4)
                nn.init.normal_(model.head.weight, std=0.01)
                nn.init.zeros_(model.head.bias)
            head_opt.state.clear()
            return False

        def step_fn(pos: torch.Tensor, step: int) -> float:
            idx = st["samples"][pos]
            xb, yb = x[idx].to(device), st["pseudo"][idx].to(device)
            if self.augment:
                flip = torch.rand(xb.shape[0]) < 0.5
                xb = torch.where(flip.to(device)[:, None, None, None], xb.flip(-1), xb)
                xb = random_affine(xb)
            with mixed_precision(device):
                loss = F.cross_entropy(model.head(net.encode(xb)), yb)  # type: ignore[operator]
            return optimise(loss, opt, head_opt)

        net.train()
        self._train(name="DeepCluster", n=n, generator=gen,
                    stateful={"model": model, "optimizer": opt, "head_optimizer": head_opt}, step_fn=step_fn,
                    spec=spec, data=(arr,), before_step=before_step, state=st)
        self.assignments_ = list(st["assignments"])
        self.n_pseudo_ = int(n_pseudo)
        self._set_network(net, spec, arr.shape[1:], 1 / 255, self.embed_dim)
        self.pca_, feats = self._features(encode_batched(net, x, batch_size=infer, device=device))
        self.kmeans_ = FaissKMeans(n_clusters=self.n_clusters, n_redo=self.kmeans_redo, seed=self.seed).fit(feats)
        self.labels_ = self.kmeans_.predict(feats)
        return self

    @property
    def cluster_centers_(self) -> np.ndarray:
        """``(n_clusters, m)`` float32 final k-means centroids in the PCA / whitened / L2 feature space."""
        self._check_fitted("kmeans_")
        return self.kmeans_.cluster_centers_

    def cluster_features(self, images: Any) -> np.ndarray:
        """The features k-means clusters: PCA-whitened, L2-normalised embeddings ``(N, m)`` float32."""
        self._check_fitted("pca_")
        return self.pca_.transform(self.transform(images))

    def predict(self, images: Any) -> np.ndarray:
        """Cluster ``(N,)`` int64 of each image: nearest final centroid of :meth:`cluster_features`."""
        self._check_fitted("kmeans_")
        return self.kmeans_.predict(self.cluster_features(images))
