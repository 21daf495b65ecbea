"""DEC and IDEC: fine-tune a pretrained autoencoder's encoder together with cluster centroids.

DEC (Xie, Girshick & Farhadi, "Unsupervised Deep Embedding for Clustering Analysis", ICML 2016):
k-means on the pretrained embeddings gives centroids ``mu``; then encoder and ``mu`` minimise
``KL(P || Q)`` with ``Q`` the Student-t soft assignment (α = 1) and ``P`` its sharpened target,
recomputed on the full data every ``update_interval`` steps; training stops when fewer than
``tol`` of the labels changed between two refreshes (0.1 %).

IDEC (Guo, Gao, Liu & Yin, "Improved Deep Embedded Clustering with Local Structure
Preservation", IJCAI 2017) keeps the decoder and minimises ``L_rec + γ·KL`` (γ = 0.1) so the
embedding keeps the local structure the reconstruction needs. The convolutional setting with
Adam and T = 140 follows DCEC (Guo et al., ICONIP 2017).

:func:`initial_centroids` also serves :mod:`imgclust.deep.nnc`: ``init="kmeans"`` is the papers'
start, ``init="umap"`` the N2D partition of the same embedding (McConville et al., ICPR 2020).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from imgclust.cluster.choose_k import KSweep, resolve_k
from imgclust.cluster.classic import FaissKMeans
from imgclust.cluster.gmm import GaussianMixtureClusterer
from imgclust.config import AUTO_K, ClusterConfig, fixed_k
from imgclust.deep.autoencoder import AutoencoderClusterer
from imgclust.deep.base import DeepEstimator
from imgclust.deep.losses import kl_clustering_loss, student_t, target_distribution
from imgclust.deep.networks import build_network
from imgclust.deep.training import TrainingConfig, encode_batched, optimise, to_float_images
from imgclust.devices import mixed_precision
from imgclust.exceptions import ConfigError
from imgclust.validation import check_int

logger = logging.getLogger(__name__)

__all__ = ["DEC", "FineTuner", "initial_centroids", "CENTROID_INITS", "UMAP_INIT"]

CENTROID_INITS = ("kmeans", "umap")
"""How DEC / IDEC / NNC pick their initial centroids, see :func:`initial_centroids`."""
UMAP_INIT = {"n_components": 10, "n_neighbors": 20, "min_dist": 0.0}
"""N2D's UMAP settings (McConville et al., ICPR 2020: n_components = k = 10, 20 neighbours, min_dist 0)."""


def initial_centroids(emb: np.ndarray, *, init: str, n_clusters: int | Literal["auto"], kmeans_redo: int,
                      seed: int) -> tuple[np.ndarray, KSweep | None]:
    """Initial centroids ``(k, d)`` float32 in the space of the pretrained embeddings ``emb`` ``(N, d)``, and
    (``n_clusters="auto"``) the sweep of :func:`~imgclust.cluster.choose_k.resolve_k` that chose k in the space
    the partition is found in (k-means on the embeddings, or the GMM on their UMAP coordinates); None otherwise.

    - ``"kmeans"``: k-means on the embeddings (DEC, Xie et al. 2016 §3.2; stage 2 of Qian et al., 2025).
    - ``"umap"``: the N2D partition (McConville et al., "N2D: (Not Too) Deep Clustering via
      Clustering the Local Manifold of an Autoencoded Embedding", ICPR 2020): UMAP of the
      embeddings (:data:`UMAP_INIT`, seeded), a full-covariance Gaussian mixture there (N2D's
      clusterer, :mod:`imgclust.cluster.gmm`), and each centroid is the mean *embedding* of its cluster. N2D's point is that the local manifold separates the classes
      better than the raw embedding; the fine-tuning then starts from that partition instead of a
      worse one of the same embedding. Costs one UMAP fit.
    """
    if init not in CENTROID_INITS:
        raise ConfigError(f"init must be one of {list(CENTROID_INITS)}, got {init!r}")
    if init == "kmeans":
        k, sweep = _resolve(emb, "kmeans", n_clusters, seed)
        return FaissKMeans(n_clusters=k, n_redo=kmeans_redo, seed=seed).fit(emb).cluster_centers_.copy(), sweep
    from imgclust.reduce.streaming import UMAPReducer  # lazy: umap + numba take seconds to import

    if emb.shape[0] <= UMAP_INIT["n_neighbors"]:
        raise ConfigError(f"init='umap' needs more than {UMAP_INIT['n_neighbors']} images, got {emb.shape[0]}; "
                          "use init='kmeans'")
    u = UMAPReducer(**UMAP_INIT, random_state=seed, fit_sample=None).fit(emb).embedding_  # type: ignore[arg-type]
    k, sweep = _resolve(u, "gmm", n_clusters, seed)
    labels = GaussianMixtureClusterer(n_clusters=k, fit_sample=None, random_state=seed).fit(u).predict(u)
    counts = np.bincount(labels, minlength=k)
    if (counts == 0).any():
        raise ConfigError(f"the mixture on the UMAP coordinates left cluster(s) {np.flatnonzero(counts == 0).tolist()} "
                          "empty, so they have no mean; use init='kmeans'")
    sums = np.zeros((k, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, emb.astype(np.float64))
    logger.info("initial centroids: embedding means of the N2D (UMAP + GMM) partition, sizes %s", counts.tolist())
    return (sums / counts[:, None]).astype(np.float32), sweep


def _resolve(rows: np.ndarray, method: Literal["kmeans", "gmm"], n_clusters: int | Literal["auto"],
             seed: int) -> tuple[int, KSweep | None]:
    """``n_clusters`` as given, or chosen on ``rows`` ``(N, d)`` by the pipeline's sweep with ``method``."""
    if n_clusters != AUTO_K:
        return int(n_clusters), None
    cluster, sweep = resolve_k(rows, ClusterConfig(method=method, k=AUTO_K, seed=seed))  # logs its choice
    return int(fixed_k(cluster) or 0), sweep


class ClusteringModule(nn.Module):
    """A network (autoencoder or encoder) plus trainable centroids ``mu`` ``(k, d)``: one state_dict for
    checkpoints (DEC/IDEC here, neighbour consistency in :mod:`imgclust.deep.nnc`)."""

    def __init__(self, net: nn.Module, mu: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.mu = nn.Parameter(mu)


@dataclass
class FineTuning:
    """What :meth:`FineTuner._start` sets up: the pretrained autoencoder ``ae``, images ``x`` ``(N, C, H, W)``
    float32 (CPU), the device, the data-order generator, the network being tuned, ``model`` (network +
    centroids), its Adam optimizer, the inference batch size and the arrays the checkpoints are keyed by
    (images, pretrained weights)."""

    ae: AutoencoderClusterer
    x: torch.Tensor
    device: torch.device
    generator: torch.Generator
    net: nn.Module
    model: ClusteringModule
    opt: torch.optim.Optimizer
    infer: int
    data: tuple[np.ndarray | torch.Tensor, ...]


class FineTuner(DeepEstimator):
    """Base of the fine-tuners of a pretrained autoencoder with Student-t centroids (:class:`DEC` / IDEC,
    :class:`~imgclust.deep.nnc.NeighbourConsistency`): the common parameters ``n_clusters``, ``alpha``,
    ``pretrained``, ``autoencoder``, ``init``, ``kmeans_redo`` and ``training`` (counted in ``max_iter``
    steps), the set-up (:meth:`_start`), the end (:meth:`_finish`) and the prediction."""

    _meta_attrs = (*DeepEstimator._meta_attrs, "history_", "refreshes_", "n_iter_", "n_clusters_", "k_sweep_")
    _tensor_attrs = ("cluster_centers_", "labels_")
    _unsaved_params = ("pretrained",)
    _steps = "max_iter"
    _resumable_params = (*DeepEstimator._resumable_params, "pretrained")
    _ae_defaults: ClassVar[dict[str, Any]] = {}
    """Autoencoder parameters under ``autoencoder``'s (when it pretrains one)."""
    _tag: ClassVar[str] = "FineTuner"

    cluster_centers_: np.ndarray

    def __init__(self, *, n_clusters: int | Literal["auto"], alpha: float, pretrained: AutoencoderClusterer | None,
                 autoencoder: dict[str, Any] | None, init: str, kmeans_redo: int,
                 training: TrainingConfig | None) -> None:
        self.n_clusters, self.alpha, self.init, self.kmeans_redo = n_clusters, alpha, init, kmeans_redo
        self.pretrained, self.autoencoder = pretrained, autoencoder
        self._set_training(training)

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.n_clusters != AUTO_K:
            check_int("n_clusters", self.n_clusters, minimum=1)
        elif self.pretrained is None:
            try:  # the autoencoder's own rule: with "auto", only a network free of k
                self._new_autoencoder()._validate_params()
            except ConfigError as exc:
                raise ConfigError(f"{type(self).__name__}: n_clusters='auto' needs an autoencoder whose network does not "
                                  "depend on k: autoencoder={'arch': 'convae', 'embed_dim': D, ...} (create_deep sets "
                                  f"it), or a pretrained one ({exc})") from exc
        check_int("kmeans_redo", self.kmeans_redo, minimum=1)
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if self.pretrained is not None and not isinstance(self.pretrained, AutoencoderClusterer):
            raise ConfigError("pretrained must be an AutoencoderClusterer or None, got "
                              f"{type(self.pretrained).__name__}")
        if self.pretrained is not None and self.autoencoder is not None:
            raise ConfigError("pass either pretrained (a fitted autoencoder) or autoencoder (params to pretrain "
                              "one), not both")
        if self.init not in CENTROID_INITS:
            raise ConfigError(f"init must be one of {list(CENTROID_INITS)}, got {self.init!r}")

    def _new_autoencoder(self) -> AutoencoderClusterer:
        """The (unfitted) autoencoder ``autoencoder``'s params describe, with this estimator's k, seed and device."""
        params = {**self._ae_defaults, "n_clusters": self.n_clusters, "seed": self.seed, "device": self.device,
                  **(self.autoencoder or {})}
        return AutoencoderClusterer.with_training(**params)

    def _pretrained(self, images: Any) -> AutoencoderClusterer:
        ae = self.pretrained
        if ae is None:
            ae = self._new_autoencoder()
            logger.info("%s: pretraining an autoencoder %s", self._tag, ae.get_params())
            return ae.fit(images)
        if getattr(ae, "network_", None) is None:
            logger.info("%s: the given autoencoder is not fitted; fitting it on these images first", self._tag)
            ae.fit(images)
        return ae

    def _start(self, arr: np.ndarray | torch.Tensor) -> FineTuning:
        """Pretrain (or take) the autoencoder, seed, copy its network and place the initial centroids."""
        ae = self._pretrained(arr)
        ae._check_images(arr)  # same per-image shape as the autoencoder was trained on
        x = to_float_images(arr, scale=ae.input_scale_)
        device, gen = self._seeded_device()
        net = build_network(ae.network_spec_)
        net.load_state_dict(ae.network_.state_dict())
        net.to(device)
        infer = max(self.batch_size, 1024)
        mu0, sweep = initial_centroids(encode_batched(net, x, batch_size=infer, device=device), init=self.init,
                                       n_clusters=self.n_clusters, kmeans_redo=self.kmeans_redo, seed=self.seed)
        self.n_clusters_: int = int(mu0.shape[0])
        self.k_sweep_: dict[str, Any] | None = None if sweep is None else sweep.to_json()
        model = ClusteringModule(net, torch.from_numpy(mu0)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)  # decoder params without grad: Adam skips them
        return FineTuning(ae=ae, x=x, device=device, generator=gen, net=net, model=model, opt=opt, infer=infer,
                          data=(arr, *ae.network_.state_dict().values()))

    def _full_q(self, ft: FineTuning) -> tuple[np.ndarray, torch.Tensor]:
        """Embeddings ``(N, d)`` and soft assignments ``q`` ``(N, k)`` (CPU) of every training image (eval mode)."""
        emb = encode_batched(ft.net, ft.x, batch_size=ft.infer, device=ft.device)
        return emb, student_t(torch.from_numpy(emb), ft.model.mu.detach().cpu(), self.alpha)

    def _tune(self, ft: FineTuning, step_fn: Callable[[torch.Tensor, int], float],
              before_step: Callable[[int], bool], state: dict[str, Any], name: str) -> None:
        """Run the resumable fine-tuning (:meth:`DeepEstimator._train`; ``name`` in its log lines), then set
        the fitted attributes."""
        self._train(name=name, n=ft.x.shape[0], generator=ft.generator,
                    stateful={"model": ft.model, "optimizer": ft.opt}, step_fn=step_fn, spec=ft.ae.network_spec_,
                    data=ft.data, before_step=before_step, state=state)
        self.n_iter_ = int(self.history_[-1]["step"]) if self.history_ else 0
        self.refreshes_ = list(state["refreshes"])
        self._set_network(ft.net, ft.ae.network_spec_, ft.ae.input_shape_, ft.ae.input_scale_,
                          ft.net.embed_dim)  # type: ignore[arg-type]
        self.cluster_centers_ = ft.model.mu.detach().cpu().numpy().astype(np.float32)
        self.labels_ = self._full_q(ft)[1].argmax(dim=1).numpy().astype(np.int64)

    def predict_proba(self, images: Any) -> np.ndarray:
        """Student-t soft assignments ``q`` ``(N, k)`` float32 of images to the learned centroids."""
        self._check_fitted("cluster_centers_")
        q = student_t(torch.from_numpy(self.transform(images)), torch.from_numpy(self.cluster_centers_), self.alpha)
        return q.numpy().astype(np.float32)

    def predict(self, images: Any) -> np.ndarray:
        """Cluster ``(N,)`` int64 of each image: ``argmax_j q_ij``."""
        return self.predict_proba(images).argmax(axis=1).astype(np.int64)


class DEC(FineTuner):
    """DEC / IDEC clustering of images, starting from a pretrained :class:`AutoencoderClusterer`.

    Parameters
    ----------
    n_clusters : k, or ``"auto"``: chosen on the pretrained embedding where the initial centroids are placed
        (:func:`initial_centroids`); ``n_clusters_`` is the number fitted, ``k_sweep_`` the sweep.
    idec : keep the decoder and add its reconstruction loss (IDEC) instead of pure KL (DEC).
    gamma : weight of the KL term in IDEC's ``L_rec + gamma * KL`` (0.1 in the paper).
    alpha : Student-t degrees of freedom (1 in DEC).
    update_interval : T, steps between refreshes of the target ``P`` on the full data.
    tol : stop when the fraction of labels that changed since the last refresh is below this.
    pretrained : a fitted :class:`AutoencoderClusterer` (not modified; fitted on the images if it
        is not fitted yet), or ``None`` to pretrain one with ``autoencoder`` params (JSON dict, flat
        keywords, e.g. ``{"arch": "convae", "epochs": 50}``). Not saved (the fine-tuned network is).
    init : initial centroids, :func:`initial_centroids`: ``"kmeans"`` (the paper: k-means on the
        pretrained embedding) or ``"umap"`` (embedding means of the N2D UMAP + k-means partition).
    kmeans_redo : k-means restarts for the initial centroids (DEC: 20).
    training : :class:`~imgclust.deep.training.TrainingConfig`: ``max_iter`` Adam steps, ``batch_size``,
        ``lr`` (DCEC: 20,000 at lr 1e-3, batch 256, the defaults), ``seed``, ``device``, checkpoints.

    Attributes
    ----------
    network_ : fine-tuned autoencoder (eval mode); cluster_centers_ : (k, d) float32 centroids
    labels_ : (N,) int64 ``argmax q`` of the training images
    history_ : per epoch ``{"epoch", "step", "loss", "seconds"}`` (loss: KL for DEC, total for IDEC)
    refreshes_ : per target refresh ``{"step", "delta_label"}``
    n_iter_ : optimisation steps done; converged_ : bool, stopped by ``tol``
    """

    _meta_attrs = (*FineTuner._meta_attrs, "converged_")
    _training_defaults: ClassVar[dict[str, Any]] = {"max_iter": 20000, "batch_size": 256, "lr": 1e-3, "seed": 0,
                                                    "device": "auto", "checkpoint_every": 500}
    _tag = "DEC"

    def __init__(self, *, n_clusters: int | Literal["auto"] = 10, idec: bool = False, gamma: float = 0.1, alpha: float = 1.0,
                 update_interval: int = 140, tol: float = 0.001, pretrained: AutoencoderClusterer | None = None,
                 autoencoder: dict[str, Any] | None = None, init: str = "kmeans", kmeans_redo: int = 20,
                 training: TrainingConfig | None = None) -> None:
        self.idec, self.gamma, self.update_interval, self.tol = idec, gamma, update_interval, tol
        super().__init__(n_clusters=n_clusters, alpha=alpha, pretrained=pretrained, autoencoder=autoencoder,
                         init=init, kmeans_redo=kmeans_redo, training=training)

    def _validate_params(self) -> None:
        super()._validate_params()
        check_int("update_interval", self.update_interval, minimum=1)
        if not self.gamma >= 0 or not 0 <= self.tol < 1:
            raise ConfigError(f"need gamma >= 0 and 0 <= tol < 1; got gamma={self.gamma}, tol={self.tol}")

    def fit(self, images: Any, y: Any = None) -> DEC:
        """Fine-tune on images ``(N, H, W[, C])`` uint8; ``y`` is ignored."""
        ft = self._start(self._begin_fit(images))
        net, model, x, device = ft.net, ft.model, ft.x, ft.device
        st: dict[str, Any] = {"p": None, "last": None, "refreshes": [], "converged": False}

        def before_step(step: int) -> bool:
            if (step - 1) % self.update_interval:
                return False
            q = self._full_q(ft)[1]
            labels = q.argmax(dim=1)
            if st["last"] is not None:
                delta = float((labels != st["last"]).double().mean())
                st["refreshes"].append({"step": step - 1, "delta_label": delta})
                logger.info("DEC step %d: %.4f%% of labels changed", step - 1, 100 * delta)
                if delta < self.tol:
                    st["converged"] = True
                    return True
            st["p"], st["last"] = target_distribution(q), labels
            return False

        recon_loss: Callable[..., torch.Tensor] = ft.ae.reconstruction_loss

        def step_fn(idx: torch.Tensor, step: int) -> float:
            xb, p = x[idx].to(device), st["p"][idx].to(device)
            with mixed_precision(device):
                if self.idec:
                    recon, extras = net(xb)
                    z = extras["z"] if "z" in extras else extras["f"]
                    loss = recon_loss(xb, recon, extras) + self.gamma * kl_clustering_loss(
                        student_t(z, model.mu, self.alpha), p)
                else:
                    loss = kl_clustering_loss(student_t(net.encode(xb), model.mu, self.alpha), p)  # type: ignore[operator]
            return optimise(loss, ft.opt)

        net.train()
        self._tune(ft, step_fn, before_step, st, name="IDEC" if self.idec else "DEC")
        self.converged_ = bool(st["converged"])
        if not self.converged_:
            logger.warning("DEC stopped at max_iter=%d before fewer than tol=%g of labels changed; raise max_iter "
                           "for a converged run", self.training.max_iter, self.tol)
        return self
