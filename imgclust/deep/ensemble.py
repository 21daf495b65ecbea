"""``n2d-ensemble``: N2D's last stages on several views at once, combined by evidence accumulation.

One SCAE encoder (the symmetric variant of the ASCAE paper, :class:`~imgclust.deep.networks.SCAE`) clusters
Fashion-MNIST's upper-body garments (T-shirt / pullover / coat / shirt) differently from seed to seed in the
``n2d-scae`` recipe (SCAE F -> UMAP -> GMM). :class:`MultiViewClusterer` trains
``members`` SCAE encoders (seeds ``seed * members + i``) and adds the pixels as one more view (PCA);
each view is mapped by its own UMAP (``n_clusters``-d, ``umap_neighbors`` neighbours, min_dist 0:
McConville et al., ICPR 2020) and clustered by ``gmm_runs`` single EM runs of a full-covariance GMM.
All those partitions are pooled into one co-association matrix and cut by average linkage with the
outlier-aware cut of :func:`~imgclust.cluster.consensus.consensus_labels` (Fred & Jain, TPAMI 2005): the split
inside the garment blob that most (encoder, map, EM) runs agree on wins, not one encoder's.

The views and their number were chosen on a Fashion-MNIST *train* subset (``benchmarks/view_ensemble.py``);
the gain over one encoder found there did not carry over to the test split, where the views agree on the same
merges and splits.

Prediction for new images: each view through its encoder and fitted UMAP (``transform``), the
coordinates concatenated, and the Gaussian mixture estimated from the consensus partition in that joint
space (:meth:`~imgclust.cluster.gmm.GaussianMixtureClusterer.fit_labels`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch

from imgclust.cluster.consensus import MAX_CONSENSUS_ROWS, MIN_CLUSTER_FRACTION, consensus_labels
from imgclust.cluster.gmm import GaussianMixtureClusterer
from imgclust.deep.autoencoder import AutoencoderClusterer
from imgclust.deep.base import DeepEstimator
from imgclust.deep.networks import ASCAE_F_DIM, MultiViewNet, build_network, input_geometry
from imgclust.deep.training import TrainingConfig, to_float_images
from imgclust.devices import resolve_device
from imgclust.exceptions import ConfigError
from imgclust.reduce.streaming import StreamingPCA, UMAPReducer
from imgclust.validation import check_int

logger = logging.getLogger(__name__)

__all__ = ["MultiViewClusterer", "MAX_MEMBERS"]

MAX_MEMBERS = 16
"""Most SCAE encoders of one ensemble (each view's UMAP is a sub-estimator ``umap<i>/`` of the artifact)."""
_UMAP_SLOTS = {f"umap{i}": f"umap{i}_" for i in range(MAX_MEMBERS + 1)}


class MultiViewClusterer(DeepEstimator):
    """Pixels + ``members`` SCAE encoders, a UMAP and ``gmm_runs`` GMM partitions per view, one consensus.

    Parameters
    ----------
    n_clusters : k (also each SCAE's D2 width and each UMAP's output size)
    members : SCAE encoders, 1..16 (5 chosen on the train subset)
    pixel_components : principal components of the pixel view; 0 = no pixel view
    lam, init : each SCAE's loss J with λ = ``lam`` and weight init (:class:`AutoencoderClusterer`, raw
        0..255 pixels)
    umap_neighbors : each view's UMAP ``n_neighbors`` (N2D: 20)
    gmm_runs : single EM runs per view (seeds 0..gmm_runs-1) pooled into the consensus
    min_cluster_fraction : the consensus cut's outlier threshold (:func:`~imgclust.cluster.consensus.consensus_labels`)
    training : :class:`~imgclust.deep.training.TrainingConfig` of each SCAE (as :class:`AutoencoderClusterer`'s,
        default 20 epochs), except: member ``i``'s encoder and UMAP use seed ``seed * members + i`` (the pixel
        UMAP uses ``seed``), and member ``i`` checkpoints in ``checkpoint_dir/member<i>`` (resume after a crash
        retrains only the unfinished members)

    Attributes
    ----------
    network_ : :class:`~imgclust.deep.networks.MultiViewNet`; ``transform`` gives its scaled views
        ``(N, pixel_components + 50 * members)``
    umap<i>_ : UMAPReducer of view ``i``; gmm_ : the mixture of the consensus clusters in the joint UMAP
        space ``(N, n_clusters * n_views)``
    labels_ : (N,) int64, the consensus partition of the training images (the mixture's prediction for
        rows beyond the consensus' 20,000-row sample); history_ : the members' training logs
    view_seeds_ : UMAP seed of each view
    """

    _meta_attrs = (*DeepEstimator._meta_attrs, "history_", "view_seeds_")
    _tensor_attrs = ("labels_",)
    _sub_estimators: ClassVar[dict[str, str]] = {"gmm": "gmm_", **_UMAP_SLOTS}

    def __init__(self, *, n_clusters: int = 10, members: int = 5, pixel_components: int = 50, lam: float = 20.0,
                 init: Literal["paper", "torch"] = "paper", umap_neighbors: int = 20, gmm_runs: int = 8,
                 min_cluster_fraction: float = MIN_CLUSTER_FRACTION, training: TrainingConfig | None = None) -> None:
        self.n_clusters = n_clusters
        self.members = members
        self.pixel_components = pixel_components
        self.lam = lam
        self.init = init
        self.umap_neighbors = umap_neighbors
        self.gmm_runs = gmm_runs
        self.min_cluster_fraction = min_cluster_fraction
        self._set_training(training)

    def _validate_params(self) -> None:
        super()._validate_params()
        check_int("n_clusters", self.n_clusters, minimum=2)
        check_int("members", self.members, minimum=1)
        check_int("pixel_components", self.pixel_components, minimum=0)
        check_int("umap_neighbors", self.umap_neighbors, minimum=2)
        check_int("gmm_runs", self.gmm_runs, minimum=1)
        if self.members > MAX_MEMBERS:
            raise ConfigError(f"members must be at most {MAX_MEMBERS}, got {self.members}")
        if not 0.0 <= self.min_cluster_fraction <= 1.0:
            raise ConfigError(f"min_cluster_fraction must be in [0, 1], got {self.min_cluster_fraction}")

    def _member(self, i: int) -> AutoencoderClusterer:
        root = self.training.checkpoint_dir
        training = replace(self.training, seed=self.seed * self.members + i,
                           checkpoint_dir=None if root is None else os.path.join(root, f"member{i}"))
        return AutoencoderClusterer(arch="scae", n_clusters=self.n_clusters, lam=self.lam, init=self.init,
                                    kmeans_redo=1, training=training)

    def fit(self, images: Any, y: Any = None) -> MultiViewClusterer:
        """Train the members on images ``(N, H, W[, C])`` (uint8), then UMAP, GMM runs and the consensus.
        ``y`` is ignored (API symmetry)."""
        arr = self._begin_fit(images)
        x = to_float_images(arr, scale=1.0)  # SCAE's raw 0..255 (ARCH_DEFAULTS); PCA is scale-free for UMAP
        flat_dim = int(np.prod(x.shape[1:]))
        if self.pixel_components > min(flat_dim, x.shape[0]):
            raise ConfigError(f"pixel_components={self.pixel_components} exceeds the pixel count {flat_dim} or the "
                              f"image count {x.shape[0]}")
        spec: dict[str, Any] = {"arch": "multiview", **input_geometry(arr), "k": self.n_clusters,
                                "members": self.members, "pixel_components": self.pixel_components,
                                "init": self.init}
        net = cast(MultiViewNet, build_network(spec))
        self.history_: list[dict[str, Any]] = []
        for i in range(self.members):
            logger.info("n2d-ensemble: training SCAE member %d/%d (seed %d)", i + 1, self.members,
                        self.seed * self.members + i)
            member = self._member(i).fit(arr)
            net.members[i].load_state_dict(member.network_.state_dict())
            self.history_ += [{**h, "member": i} for h in member.history_]
        if self.pixel_components:
            pca = StreamingPCA(n_components=self.pixel_components).fit(x.flatten(1).numpy())
            net.pca_mean.copy_(torch.from_numpy(pca.mean_))
            net.pca_components.copy_(torch.from_numpy(pca.components_))
        device = resolve_device(self.device)
        net.to(device).eval()
        with torch.inference_mode():
            views = _views_batched(net, x, self._inference_batch(), device)
        whole = [torch.cat(view) for view in views]  # each view (N, view_dims[j]), computed once
        norms = torch.stack([v.norm(dim=1).mean().clamp_min(1e-12) for v in whole])
        net.scales.copy_(norms.to(net.scales.device))
        self._set_network(net, spec, arr.shape[1:], 1.0, net.embed_dim)
        # network_.encode's output, without encoding the training images a second time
        self._fit_clusters(torch.cat([v / sc for v, sc in zip(whole, net.scales.cpu(), strict=True)], dim=1).numpy())
        return self

    def _view_slices(self) -> list[slice]:
        dims = ([self.pixel_components] if self.pixel_components else []) + [ASCAE_F_DIM] * self.members
        bounds = np.cumsum([0, *dims])
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _fit_clusters(self, emb: np.ndarray) -> None:
        """Per view UMAP + ``gmm_runs`` EM partitions, the pooled consensus, the joint mixture; sets labels_."""
        if not np.isfinite(emb).all():
            raise ConfigError("an SCAE member produced NaN/inf features (training diverged); lower lr")
        k, n = self.n_clusters, emb.shape[0]
        offset = 1 if self.pixel_components else 0
        self.view_seeds_ = ([self.seed] if offset else []) + [self.seed * self.members + i for i in range(self.members)]
        sample = np.arange(n)
        if n > MAX_CONSENSUS_ROWS:
            sample = np.sort(np.random.default_rng(self.seed).choice(n, MAX_CONSENSUS_ROWS, replace=False))
        coords, partitions = [], []
        for i, (sl, vseed) in enumerate(zip(self._view_slices(), self.view_seeds_, strict=True)):
            umap = UMAPReducer(n_components=k, n_neighbors=self.umap_neighbors, min_dist=0.0, random_state=vseed,
                               fit_sample=None).fit(emb[:, sl])
            setattr(self, f"umap{i}_", umap)
            c = umap.embedding_
            coords.append(c)
            partitions += [GaussianMixtureClusterer(n_clusters=k, fit_sample=None, random_state=r).fit(c).predict(c)
                           for r in range(self.gmm_runs)]
        for j in range(len(coords), MAX_MEMBERS + 1):
            setattr(self, f"umap{j}_", None)
        joint = np.hstack(coords)
        labels = consensus_labels(np.stack(partitions, axis=1)[sample], k, min_cluster_fraction=self.min_cluster_fraction)
        self.gmm_ = GaussianMixtureClusterer(n_clusters=k, fit_sample=None, random_state=self.seed).fit_labels(
            joint[sample], labels)
        if n > MAX_CONSENSUS_ROWS:
            self.labels_ = self.gmm_.predict(joint)
        else:
            self.labels_ = labels
        logger.info("n2d-ensemble: consensus of %d partitions (%d views x %d EM runs) over %d rows -> %d clusters",
                    len(partitions), len(coords), self.gmm_runs, sample.size, k)

    @property
    def cluster_centers_(self) -> np.ndarray:
        """``(k, n_clusters * n_views)`` float32 means of the consensus clusters in the joint UMAP space."""
        self._check_fitted("gmm_")
        return self.gmm_.cluster_centers_

    def cluster_features(self, images: Any) -> np.ndarray:
        """Joint UMAP coordinates ``(N, n_clusters * n_views)``: each view through its fitted UMAP."""
        emb = self.transform(images)
        return np.hstack([getattr(self, f"umap{i}_").transform(emb[:, sl])
                          for i, sl in enumerate(self._view_slices())])

    def predict(self, images: Any) -> np.ndarray:
        """Cluster ``(N,)`` int64: the most probable consensus cluster under the joint mixture."""
        self._check_fitted("gmm_")
        return self.gmm_.predict(self.cluster_features(images))


def _views_batched(net: MultiViewNet, x: torch.Tensor, batch: int, device: torch.device) -> list[list[torch.Tensor]]:
    """Unscaled views of ``x`` ``(N, C, H, W)`` in batches: ``[view][batch] -> (b, view_dims[view])`` on the CPU."""
    out: list[list[torch.Tensor]] = [[] for _ in net.view_dims]
    for start in range(0, x.shape[0], batch):
        for j, v in enumerate(net.views(x[start:start + batch].to(device))):
            out[j].append(v.cpu())
    return out
