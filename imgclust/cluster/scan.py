"""SCAN's clustering step on fixed features: a softmax head trained to agree with each row's neighbours.

Van Gansbeke, Vandenhende, Georgoulis, Proesmans & Van Gool, "SCAN: Learning to Classify Images without
Labels", ECCV 2020, §2.2, eq. 2. Mine the ``K`` nearest neighbours ``N_X`` of every row in a pretext
representation (here: exact cosine kNN with faiss), then train a clustering function ``Φ`` (soft
assignment ``Φ(X) ∈ [0, 1]^C``) with

    Λ = -1/|D| Σ_X Σ_{k ∈ N_X} log <Φ(X), Φ(k)>  +  λ Σ_c Φ'^c log Φ'^c,      Φ'^c = 1/|D| Σ_X Φ^c(X),

the first term making a row and its neighbours consistent (and confident), the second, the negative
entropy of the mean assignment, keeping every cluster in use (:func:`scan_loss`; one neighbour drawn
per row and step, as the paper's implementation does). Like the paper, ``heads`` heads are trained at
once and the one of lowest loss is kept (label-free selection).

What differs from the paper: the representation is frozen (only the head learns; the paper fine-tunes
the backbone under augmentation, which needs the images), the head is linear on L2-normalised rows,
and the self-labelling step is left out (without augmentation it changed nothing on a *train* subset).
A **neighbour vote** is added: the label of a row is the cluster of highest summed probability over its
``n_neighbors + 1`` nearest rows of the fitted sample (itself included when it was fitted), so prediction
keeps those rows (float16) and their probabilities; it gave a small gain on a *train* subset.

**Neighbours in the whitened space** (``whiten=True``; what the deep methods' ``clusterer="scan"`` uses, and the
pipeline's ``scan`` with ``scan_whiten``): the neighbours mined for training and
those of the vote are found after PCA whitening of the fitted rows (centre, rotate onto the covariance's
eigenvectors, divide each by the square root of its eigenvalue, L2-normalise; Jégou & Chum, "Negative
evidences and co-occurrences in image retrieval: the benefit of PCA and whitening", ECCV 2012), so a few
high-variance directions no longer decide who is near whom; the head itself still reads the unwhitened unit
rows (a linear head on whitened rows did much worse). On a learned representation whitening raised the
neighbours' label agreement and SCAN's accuracy (``benchmarks/simclr_encoder.py``). It is not the default: on
PCA-reduced pixels it lowered them, whitening raising directions that hold little but noise.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from imgclust.batches import ArrayOrSource, sample_rows
from imgclust.cluster.classic import cluster_means
from imgclust.estimator import Estimator, register_estimator
from imgclust.exceptions import ConfigError
from imgclust.progress import Progress
from imgclust.validation import check_int

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["ScanClusterer", "scan_loss", "nearest_neighbours", "whitening"]

_CHUNK = 65536
_COV_CHUNK = 8192
_ROWS_PER_DIRECTION = 10
"""Whitening keeps at most ``n // _ROWS_PER_DIRECTION`` leading directions of an ``n``-row sample. A sample
covariance cannot resolve more: with ``n <= D + 1`` rows, whitening every direction puts all rows at the same
distance from each other; the cap keeps small samples' neighbours as good as unwhitened ones, and from a few
thousand rows on it does not bind at a few hundred dimensions."""
"""Rows per float64 block of the whitening's covariance (2048-d features: 134 MB a block)."""
_EIG_RTOL = 1e-6
"""Whitening keeps the covariance's eigenvectors whose eigenvalue exceeds this fraction of the largest: the
others (a rank-deficient sample, e.g. fewer rows than dimensions) would be noise multiplied by ~1e3 or more."""


def scan_loss(p_anchor: torch.Tensor, p_neighbour: torch.Tensor,
              entropy_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCAN's loss (Van Gansbeke et al. 2020, eq. 2) of one batch.

    Args:
        p_anchor: ``(b, C)`` soft assignments of the rows (each row sums to 1).
        p_neighbour: ``(b, C)`` soft assignments of one neighbour of each row.
        entropy_weight: λ.

    Returns:
        ``(total, consistency, entropy)``: ``consistency = -mean_i log <p_i, p_N(i)>``, ``entropy`` the
        entropy of the batch's mean assignment ``-Σ_c p̄_c log p̄_c``, ``total = consistency - λ·entropy``.
    """
    import torch

    consistency = -torch.log((p_anchor * p_neighbour).sum(dim=1).clamp_min(1e-8)).mean()
    mean = p_anchor.mean(dim=0)
    entropy = -(mean * torch.log(mean.clamp_min(1e-8))).sum()
    return consistency - entropy_weight * entropy, consistency, entropy


def nearest_neighbours(rows: np.ndarray, k: int, queries: np.ndarray | None = None) -> np.ndarray:
    """Indices ``(Q, k)`` int64 of the ``k`` nearest other rows of each query row (``queries``: row indices
    ``(Q,)``; ``None`` = every row) of unit-norm ``rows`` ``(n, D)`` (exact inner product, faiss
    ``IndexFlatIP``); the row itself is dropped wherever it appears (exact duplicates may put it after another
    row), else the farthest of the ``k + 1`` found."""
    import faiss  # lazy: loads OpenMP/BLAS

    q = np.arange(len(rows)) if queries is None else np.asarray(queries)
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    _, nb = index.search(rows[q], k + 1)
    own = nb == q[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones(nb.shape, dtype=bool)
    keep[np.arange(len(q)), drop] = False
    return nb[keep].reshape(len(q), k).astype(np.int64)


def whitening(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA whitening of ``rows`` ``(n, D)``: ``(mean (D,) float32, W (D, r) float32)`` such that
    ``(rows - mean) @ W`` has identity covariance over ``rows`` in its ``r`` directions (Jégou & Chum 2012).
    ``W``'s columns are the leading covariance eigenvectors divided by the square roots of their eigenvalues:
    those of eigenvalue above ``_EIG_RTOL`` times the largest, at most ``n // _ROWS_PER_DIRECTION`` of them
    (covariance accumulated in float64, ``_COV_CHUNK`` rows at a time)."""
    n = len(rows)
    if n < 2:
        raise ConfigError(f"whitening needs at least 2 non-zero rows, got {n}; pass whiten=False or more rows")
    mean = np.asarray(rows).mean(axis=0, dtype=np.float64)
    cov = np.zeros((mean.size, mean.size))
    for start in range(0, n, _COV_CHUNK):
        centred = np.asarray(rows[start:start + _COV_CHUNK], dtype=np.float64) - mean
        cov += centred.T @ centred
    values, vectors = np.linalg.eigh(cov / n)
    values, vectors = values[::-1], vectors[:, ::-1]  # leading first
    keep = int(np.count_nonzero(values > _EIG_RTOL * max(float(values[0]), np.finfo(np.float64).tiny)))
    if keep == 0:
        raise ConfigError(f"cannot whiten {n} identical rows (no variance); pass whiten=False or more rows")
    cap = max(1, n // _ROWS_PER_DIRECTION)
    if keep > cap:
        logger.info("whitening: %d rows estimate %d directions reliably; the leading %d of %d are kept",
                    n, cap, cap, keep)
        keep = cap
    return mean.astype(np.float32), (vectors[:, :keep] / np.sqrt(values[:keep])).astype(np.float32)


def _no_whitening(d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean_, whitening_)`` of ``d``-dimensional rows used as given: zeros ``(d,)`` and ``(d, 0)`` (no columns)."""
    return np.zeros(d, np.float32), np.zeros((d, 0), np.float32)


def _unit_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unit rows (n, D) float32, zero (n,) bool)``: rows of ``X`` L2-normalised; all-zero rows (no direction)
    stay zero and are flagged, with a warning (SCAN cannot place them: in a fit their neighbours are arbitrary;
    every prediction gives them the uniform assignment)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        logger.warning("ScanClusterer: %d of %d rows are all zeros (no direction); they get the uniform "
                       "assignment", int(zero.sum()), len(X))
    return X / np.where(zero[:, None], 1.0, norms), zero


@register_estimator
class ScanClusterer(Estimator):
    """SCAN clustering head on a frozen representation (module docstring), with a neighbour vote.

    Parameters
    ----------
    n_clusters : C
    n_neighbors : K, the neighbours mined per row (SCAN's 20) and the rows of the vote
    entropy_weight : λ (SCAN's 5)
    heads : heads trained together; the one of lowest final-epoch loss is kept
    epochs, batch_size, lr, weight_decay : Adam training of the heads (one pass over the sample per epoch)
    vote : label by the neighbour vote (default) instead of the head's own argmax
    whiten : find neighbours (training and vote) in the PCA-whitened space of the fitted rows (module
        docstring; for learned representations); ``False`` (default) = cosine neighbours of the rows as given
    fit_sample : rows fitted (seeded uniform sample, kept float16 for the vote; ``None`` = all rows)
    random_state : seed of the sample, the heads' initialisation and the batches

    Choices, made on a *train* subset (never the test split) of a SimCLR ResNet-18 representation: K = 20
    and λ = 5 as published (other K and smaller λ did about as well, a larger λ worse); 200 epochs (more
    gained little); a linear head (a hidden layer was much slower per epoch).

    Attributes
    ----------
    weight_ : (C, D) float32 and bias_ : (C,) float32 of the kept head
    reference_ : (n, D) float16 fitted rows (unit norm); reference_proba_ : (n, C) float16 their assignments.
        The vote whitens these float16 rows, which whitening's division by small eigenvalues amplifies: where the
        spectrum falls steeply, a few of a row's vote neighbours can differ from those it was trained with
    mean_ : (D,) float32 and whitening_ : (D, r) float32 of the whitening (``r = 0`` when ``whiten=False``)
    labels_ : (n,) int64 labels of the fitted rows; head_losses_ : final-epoch loss of every head;
    best_head_ : int; n_samples_seen_, n_train_samples_, n_features_in_ : int
    """

    _array_attrs = ("weight_", "bias_", "reference_", "reference_proba_", "labels_", "mean_", "whitening_")
    _meta_attrs = ("n_features_in_", "n_samples_seen_", "n_train_samples_", "head_losses_", "best_head_")
    _params_added: ClassVar[dict[str, Any]] = {"whiten": False}
    """A SCAN model saved before whitening existed found its neighbours among the rows as given."""

    def __init__(self, *, n_clusters: int, n_neighbors: int = 20, entropy_weight: float = 5.0, heads: int = 10,
                 epochs: int = 200, batch_size: int = 512, lr: float = 1e-3, weight_decay: float = 1e-4,
                 vote: bool = True, whiten: bool = False, fit_sample: int | None = 100000,
                 random_state: int = 0) -> None:
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.entropy_weight = entropy_weight
        self.heads = heads
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.vote = vote
        self.whiten = whiten
        self.fit_sample = fit_sample
        self.random_state = random_state

    def _validate_params(self) -> None:
        for name, minimum in (("n_clusters", 2), ("n_neighbors", 1), ("heads", 1), ("epochs", 1),
                              ("batch_size", 2), ("random_state", 0)):
            check_int(name, getattr(self, name), minimum=minimum)
        check_int("fit_sample", self.fit_sample, minimum=2, allow_none=True)
        if not (self.lr > 0 and self.weight_decay >= 0 and self.entropy_weight >= 0):
            raise ConfigError(f"lr must be > 0, weight_decay and entropy_weight >= 0; got lr={self.lr}, "
                              f"weight_decay={self.weight_decay}, entropy_weight={self.entropy_weight}")
        for name in ("vote", "whiten"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def fit(self, X: ArrayOrSource) -> ScanClusterer:
        """Mine neighbours in a seeded sample of ``X`` (array ``(n, D)`` or :data:`BatchSource`), train the
        heads on it, keep the best; sets ``labels_`` for the sample's rows."""
        import torch  # lazy: importing imgclust.models.model (which registers this clusterer) must not load torch

        self._validate_params()
        sample = sample_rows(X, self.fit_sample, self.random_state)
        rows, zero = _unit_rows(sample.rows)
        n, d = rows.shape
        if n <= self.n_neighbors:
            raise ConfigError(f"SCAN with n_neighbors={self.n_neighbors} needs more than {self.n_neighbors} rows, "
                              f"got {n}; lower n_neighbors")
        if self.whiten:
            self.mean_, self.whitening_ = whitening(rows[~zero] if zero.any() else rows)
        else:
            self.mean_, self.whitening_ = _no_whitening(d)
        space = self._neighbour_space(rows)
        nb = torch.from_numpy(nearest_neighbours(space, self.n_neighbors))
        x = torch.from_numpy(rows)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            heads = torch.nn.ModuleList(torch.nn.Linear(d, self.n_clusters) for _ in range(self.heads))
        gen = torch.Generator().manual_seed(self.random_state)
        opt = torch.optim.Adam(heads.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        losses = torch.zeros(self.heads)
        stage = f"SCAN training ({n} rows, {self.heads} heads)"
        with Progress(stage, self.epochs, logger, unit="epochs") as progress:
            for _ in range(self.epochs):
                losses = self._epoch(heads, opt, x, nb, gen)
                progress.advance(detail=f"head losses min {float(losses.min()):.4f}, max {float(losses.max()):.4f}")
        if not torch.isfinite(losses).all():
            raise ConfigError(f"SCAN training diverged (head losses {losses.tolist()}); lower lr")
        best = int(losses.argmin())
        head: torch.nn.Linear = heads[best]  # type: ignore[assignment]
        self.weight_ = head.weight.detach().numpy().astype(np.float32)
        self.bias_ = head.bias.detach().numpy().astype(np.float32)
        self.head_losses_ = [float(v) for v in losses]
        self.best_head_ = best
        self.n_samples_seen_, self.n_train_samples_, self.n_features_in_ = sample.n_total, n, d
        self.reference_ = rows.astype(np.float16)
        self.reference_proba_ = self._head_proba(rows).astype(np.float16)
        self.__dict__.pop("_index", None)
        self.labels_ = self._assignments(rows, zero, space).argmax(axis=1).astype(np.int64)
        sizes = np.bincount(self.labels_, minlength=self.n_clusters)
        logger.info("SCAN: head %d of %d kept (loss %.4f); %d rows -> cluster sizes %s", best, self.heads,
                    self.head_losses_[best], n, sizes.tolist())
        if (sizes == 0).any():
            logger.warning("SCAN left %d of %d clusters empty: the representation holds fewer groups than "
                           "n_clusters, or entropy_weight is too low", int((sizes == 0).sum()), self.n_clusters)
        return self

    def _epoch(self, heads: torch.nn.ModuleList, opt: torch.optim.Optimizer, x: torch.Tensor, nb: torch.Tensor,
               gen: torch.Generator) -> torch.Tensor:
        """One pass over ``x`` ``(n, D)`` in shuffled batches, one random neighbour per row; mean loss per head."""
        import torch

        n = x.shape[0]
        totals = torch.zeros(len(heads))
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, self.batch_size):
            idx = perm[start:start + self.batch_size]
            pick = torch.randint(0, nb.shape[1], (idx.numel(),), generator=gen)
            xa, xn = x[idx], x[nb[idx, pick]]
            loss = x.new_zeros(())
            for h, head in enumerate(heads):
                total, _, _ = scan_loss(torch.softmax(head(xa), dim=1), torch.softmax(head(xn), dim=1),
                                        self.entropy_weight)
                totals[h] += float(total.detach()) * idx.numel() / n
                loss = loss + total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return totals

    def _head_proba(self, rows: np.ndarray) -> np.ndarray:
        """The kept head's softmax ``(n, C)`` float32 of unit rows ``(n, D)``."""
        logits = rows @ self.weight_.T + self.bias_
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Soft assignments ``(n, C)`` float32: the head's softmax, or with ``vote`` the normalised sum of the
        reference assignments of the ``n_neighbors + 1`` nearest fitted rows; uniform for all-zero rows."""
        self._check_fitted("weight_")
        return self._assignments(*_unit_rows(self._check_dim(X)))

    def _assignments(self, rows: np.ndarray, zero: np.ndarray, space: np.ndarray | None = None) -> np.ndarray:
        """:meth:`predict_proba` of unit ``rows`` ``(n, D)``, the all-zero ones flagged by ``zero`` ``(n,)``;
        ``space``: their :meth:`_neighbour_space` rows when already computed."""
        if not self.vote:
            out = self._head_proba(rows)
        else:
            out = self._vote(self._neighbour_space(rows) if space is None else space)
        out[zero] = 1.0 / self.n_clusters
        return out

    def _neighbour_space(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``(n, r)`` float32 whose inner products rank neighbours: unit ``rows`` ``(n, D)`` as given
        (``whitening_`` has no columns), or whitened (``(rows - mean_) @ whitening_``) and L2-normalised. An
        all-zero row, and a row at the mean, stay zero: no direction, so no row's near neighbour."""
        if self.whitening_.shape[1] == 0:
            return rows
        z = (rows - self.mean_) @ self.whitening_
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        z /= np.where(norms == 0, 1.0, norms)
        z[~rows.any(axis=1)] = 0.0
        return np.ascontiguousarray(z, dtype=np.float32)

    def _vote(self, space: np.ndarray) -> np.ndarray:
        """Normalised sum ``(n, C)`` float32 of the assignments of the ``n_neighbors + 1`` nearest fitted rows,
        ``space`` ``(n, r)`` the query rows in :meth:`_neighbour_space`."""
        index = self.__dict__.get("_index")
        if index is None:
            import faiss

            reference = self._neighbour_space(self.reference_.astype(np.float32))
            index = faiss.IndexFlatIP(reference.shape[1])
            index.add(reference)
            self.__dict__["_index"] = index
        ref_p = self.reference_proba_.astype(np.float32)
        k = min(self.n_neighbors + 1, self.reference_.shape[0])
        out = np.empty((space.shape[0], self.n_clusters), dtype=np.float32)
        for start in range(0, space.shape[0], _CHUNK):
            _, nb = index.search(space[start:start + _CHUNK], k)
            out[start:start + _CHUNK] = ref_p[nb].sum(axis=1) / k
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Cluster ``(n,)`` int64 of each row of ``X`` ``(n, D)`` (argmax of :meth:`predict_proba`)."""
        return self.predict_proba(X).argmax(axis=1).astype(np.int64)

    @property
    def cluster_centers_(self) -> np.ndarray:
        """``(C, D)`` float32 mean unit row of each cluster of the fitted rows (zeros for an empty cluster)."""
        self._check_fitted("labels_")
        return cluster_means(self.reference_.astype(np.float32), self.labels_, self.n_clusters)

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], obj: Any) -> None:
        if "whitening_" not in arrays and not self.whiten:  # saved before whitening existed
            mean, whitening_ = _no_whitening(int(meta["n_features_in_"]))
            arrays = {**arrays, "mean_": mean, "whitening_": whitening_}
        super()._set_state(meta, arrays, obj)
        self.__dict__.pop("_index", None)
