"""Candidate new clusters: groups of a night's novel images that are denser than known data would make them.

The rows are the night's novel images in the model's novelty space, where the references live
(:meth:`imgclust.models.novelty.NoveltyScorer.space` / ``reference_space``). The one statistic, for a set of ``s`` rows
taken from a night of ``N`` images, against ``R`` references:

* ``j = min(s - 1, max(`` :data:`GROUP_NEIGHBOURS` ``, ceil(`` :data:`MIN_REFERENCE_NEIGHBOURS` ``* N / R)))``
  neighbours among the set, and ``q = floor(j * R / N)`` references: the count a ball holding ``j`` other
  images of the night holds in the reference sample when the night is made of known kinds (the night and the
  references are then samples of one distribution, so counts in any ball scale by ``R / N``);
* per row ``i``: ``g_i`` = distance to its ``j``-th nearest other row of the set, ``r_i`` = distance to its
  ``q``-th nearest reference (exact faiss search), and the **density ratio** ``g_i / r_i`` (a ratio of kNN
  density radii, Loftsgaarden & Quesenberry 1965).

For known kinds the ratio is about 1 or above: the set is a subset of the night, so a ball holding ``j`` of its
rows holds at least ``j + 1`` night images and, in expectation, at least ``q`` references. A new kind of image
packs ``j`` rows into a ball the references barely reach, so its ratio is well below 1 (with intrinsic
dimension ``m``, a ratio ``t`` means about ``t ** -m`` times the density known data would give there).

:func:`find_candidates`:

1. the ratio of every novel row with the set = all the night's novel rows; the **dense** rows are those with a
   ratio ``<=`` :data:`DENSE_RATIO` (= 1, denser than known data there);
2. HDBSCAN on the dense rows (Campello, Moulavi & Sander, PAKDD 2013; McInnes, Healy & Astels, JOSS 2017;
   ``min_cluster_size = min_size``, ``min_samples =`` :data:`MIN_SAMPLES`); when it finds no split, all the
   dense rows are one group;
3. per HDBSCAN group, the ratio again with the set = the group: **spread** = ``median_i g_i`` (the group's own
   ``j``-NN radius, in the units of the rows), **tightness** = ``median_i g_i / r_i``;
4. a group is a candidate when ``size >= min_size`` and ``tightness <= max_tightness``.

Step 1 keeps the scattered false novels of known kinds (the tails the conformal threshold flags at its rate) out
of the groups; step 3 checks the group as a whole, so a few dense rows scattered over the space do not make one.
The defaults (:data:`MAX_TIGHTNESS`, :data:`MIN_SAMPLES`, :func:`default_min_size`) were chosen with
``benchmarks/novelty_candidates.py``.

:func:`candidate_montage` draws a candidate's images as one PNG for the nightly artifacts and the report.
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclust.exceptions import ConfigError
from imgclust.validation import check_int

log = logging.getLogger(__name__)

MAX_TIGHTNESS = 0.9
"""Default largest :attr:`Candidate.tightness` of a candidate (known-kind groups measure about 1 and above)."""
MIN_SIZE_FLOOR = 20
"""Smallest default ``min_size`` (:func:`default_min_size`): fewer rows give too few neighbours for the ratio."""
MIN_SIZE_SHARE = 0.005
"""Default ``min_size`` as a share of the night: a new kind is reported once it is 0.5 % of a large night."""
MIN_SAMPLES = 5
"""HDBSCAN ``min_samples`` (core distance neighbours; capped at ``min_size``)."""
GROUP_NEIGHBOURS = 10
"""Fewest fellow members ``j`` a member's local radius is measured over."""
MIN_REFERENCE_NEIGHBOURS = 10
"""Fewest references ``q`` the known-data radius is measured over (``j`` grows when the night outnumbers them)."""
DENSE_RATIO = 1.0
"""Novel rows with ``g_i / r_i <= DENSE_RATIO`` (neighbours among all the novel rows) are the ones grouped."""
MAX_CLUSTER_ROWS = 20_000
"""Most novel rows HDBSCAN is fitted on; beyond it a seeded sample is fitted and the rest approximately predicted."""


@dataclass(frozen=True)
class Candidate:
    """A candidate new cluster among the rows given to :func:`find_candidates`.

    members : (s,) int64 indices into those rows, densest first (ascending ``g_i`` within the group).
    spread : median distance of a member to its ``j``-th nearest fellow member (units of the rows).
    tightness : median over members of that distance over the distance to the ``q``-th nearest reference
        (share-matched, module docstring); about 1 or more for known kinds, ``<= max_tightness`` here.
    """

    members: np.ndarray
    spread: float
    tightness: float

    @property
    def size(self) -> int:
        """Number of member rows."""
        return int(self.members.shape[0])


def default_min_size(n_night: int) -> int:
    """Default least candidate size for a night of ``n_night`` images: ``max(20, ceil(0.005 * n_night))``."""
    return max(MIN_SIZE_FLOOR, math.ceil(MIN_SIZE_SHARE * n_night - 1e-9))


def _as_rows(name: str, X: Any) -> np.ndarray:
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D array (n, d) of novelty-space rows, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ConfigError(f"{name} must be real numbers, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise ConfigError(f"{int(bad.sum())} of {name}'s {out.shape[0]} rows have NaN or infinite values "
                          f"(first: row {int(np.flatnonzero(bad)[0])}); drop or re-extract those images")
    return out


def _knn(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Sorted Euclidean distances ``(n, k)`` from ``queries`` to their ``k`` nearest ``base`` rows (exact faiss)."""
    import faiss  # imported lazily: loads OpenMP/BLAS

    index = faiss.IndexFlatL2(base.shape[1])
    index.add(base)
    d2, _ = index.search(queries, k)
    return np.sqrt(np.maximum(d2, 0.0))


def _cluster(rows: np.ndarray, min_size: int, seed: int) -> np.ndarray:
    """HDBSCAN labels ``(n,)`` int64 (``-1`` noise) of ``rows``, fitted on at most :data:`MAX_CLUSTER_ROWS` (a
    seeded sample, the other rows labelled by ``hdbscan.approximate_predict``). When HDBSCAN finds no split (all
    noise), the rows are one group: its single-cluster mode would keep only the rows that leave the root last."""
    import hdbscan  # heavy import, kept out of `import imgclust`

    n = rows.shape[0]
    min_samples = min(MIN_SAMPLES, min_size)
    if n <= MAX_CLUSTER_ROWS:
        labels = np.asarray(hdbscan.HDBSCAN(min_cluster_size=min_size, min_samples=min_samples).fit(rows).labels_,
                            np.int64)
    else:
        fit_idx = np.sort(np.random.default_rng(seed).choice(n, MAX_CLUSTER_ROWS, replace=False))
        log.info("candidates: HDBSCAN fitted on a seeded sample of %d of %d dense novel rows", MAX_CLUSTER_ROWS, n)
        model = hdbscan.HDBSCAN(min_cluster_size=min_size, min_samples=min_samples, prediction_data=True)
        model.fit(rows[fit_idx])
        labels = np.full(n, -1, np.int64)
        if int(np.max(model.labels_)) >= 0:
            labels = np.asarray(hdbscan.approximate_predict(model, rows)[0], np.int64)
            labels[fit_idx] = np.asarray(model.labels_, np.int64)
    return labels if labels.max() >= 0 else np.zeros(n, np.int64)


def _density_ratio(rows: np.ndarray, reference: np.ndarray, n_night: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``rows`` ``(s, d)``: ``g`` the distance to its ``j``-th nearest other row and ``g / r``, ``r`` the
    distance to its ``q``-th nearest reference (``j``, ``q`` share-matched as in the module docstring)."""
    s, n_ref = rows.shape[0], reference.shape[0]
    j = min(s - 1, max(GROUP_NEIGHBOURS, math.ceil(MIN_REFERENCE_NEIGHBOURS * n_night / n_ref)))
    q = max(1, math.floor(j * n_ref / n_night))  # >= 1: _check asks min_size - 1 >= n_night / R
    g = _knn(rows, rows, j + 1)[:, j]  # column 0 is the row itself (or an exact duplicate, also at 0)
    r = _knn(reference, rows, q)[:, q - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(r > 0, g / np.where(r > 0, r, 1.0), np.where(g > 0, np.inf, 1.0))
    return g, ratio


@dataclass(frozen=True)
class Group:
    """An HDBSCAN group of dense novel rows before the candidate rule (:func:`find_groups`).

    members : (s,) int64 indices into the rows, densest first; spread, tightness : as :class:`Candidate`'s.
    """

    members: np.ndarray
    spread: float
    tightness: float


def _check(rows: Any, reference: Any, n_night: int, min_size: int | None, seed: int
           ) -> tuple[np.ndarray, np.ndarray, int]:
    X = _as_rows("rows", rows)
    ref = _as_rows("reference", reference)
    if ref.shape[0] == 0:
        raise ConfigError("the reference is empty: pass the novelty scorer's reference rows (reference_space())")
    if X.shape[1] != ref.shape[1]:
        raise ConfigError(f"rows have {X.shape[1]} columns but the reference has {ref.shape[1]}: give both in the "
                          "same novelty space (NoveltyScorer.space(rows) and NoveltyScorer.reference_space())")
    check_int("n_night", n_night, minimum=1)
    if n_night < X.shape[0]:
        raise ConfigError(f"n_night={n_night} is smaller than the {X.shape[0]} novel rows; pass the number of "
                          "images in the whole night")
    check_int("seed", seed, minimum=0)
    size = default_min_size(n_night) if min_size is None else min_size
    check_int("min_size", size, minimum=2)
    if size - 1 < n_night / ref.shape[0]:
        raise ConfigError(f"min_size={size} rows are a smaller share of the {n_night}-image night than one "
                          f"reference row is of the {ref.shape[0]} references: raise min_size above "
                          f"{math.ceil(n_night / ref.shape[0])} or keep more reference rows")
    return X, ref, size


def find_groups(rows: np.ndarray, reference: np.ndarray, *, n_night: int, min_size: int | None = None,
                seed: int = 0) -> list[Group]:
    """Every HDBSCAN group of the dense novel ``rows`` with its spread and tightness, in label order (steps 1-3
    of the module docstring; arguments and errors as :func:`find_candidates`; no candidate rule applied)."""
    X, ref, size = _check(rows, reference, n_night, min_size, seed)
    if X.shape[0] < size:
        log.debug("candidates: %d novel rows, fewer than min_size=%d", X.shape[0], size)
        return []
    _, ratio = _density_ratio(X, ref, n_night)
    dense = np.flatnonzero(ratio <= DENSE_RATIO)
    if dense.size < size:
        log.debug("candidates: %d of %d novel rows denser than known data, fewer than min_size=%d", dense.size,
                  X.shape[0], size)
        return []
    labels = _cluster(X[dense], size, seed)
    groups = []
    for label in range(int(labels.max()) + 1):
        idx = dense[labels == label]
        g, group_ratio = _density_ratio(X[idx], ref, n_night)
        order = np.argsort(g, kind="stable")
        groups.append(Group(members=idx[order].astype(np.int64), spread=float(np.median(g)),
                            tightness=float(np.median(group_ratio))))
    return groups


def find_candidates(rows: np.ndarray, reference: np.ndarray, *, n_night: int, min_size: int | None = None,
                    max_tightness: float = MAX_TIGHTNESS, seed: int = 0) -> list[Candidate]:
    """Candidate new clusters among a night's novel rows, largest first (see the module docstring).

    rows : (n, d) the night's novel images in the novelty space (pixel recipe: the PCA coordinates without the
        residual column; deep recipe: the L2-normalised encoder features).
    reference : (R, d) the scorer's sample of fitted (known) rows in the same space.
    n_night : images in the whole night the novel rows were taken from (``>= n``); sets the share-matched
        reference count ``q`` and the default ``min_size``.
    min_size : least number of novel rows in a candidate (HDBSCAN's ``min_cluster_size``); default
        :func:`default_min_size` ``(n_night)``.
    max_tightness : largest tightness of a candidate (default :data:`MAX_TIGHTNESS`).
    seed : seed of the HDBSCAN sample when there are more than :data:`MAX_CLUSTER_ROWS` rows.

    Returns ``[]`` when fewer than ``min_size`` rows are novel, or dense. Raises
    :class:`ConfigError` on rows or references that are not finite 2-D arrays of one width, an empty reference,
    ``n_night < n``, ``min_size < 2``, a ``min_size`` too small to compare with the reference sample
    (``min_size - 1 < n_night / R``), or ``max_tightness`` not a positive finite number.
    """
    if isinstance(max_tightness, bool) or not isinstance(max_tightness, (int, float)) \
            or not math.isfinite(max_tightness) or max_tightness <= 0:
        raise ConfigError(f"max_tightness must be a positive finite number (default {MAX_TIGHTNESS}), "
                          f"got {max_tightness!r}")
    groups = find_groups(rows, reference, n_night=n_night, min_size=min_size, seed=seed)
    size = default_min_size(n_night) if min_size is None else min_size
    found = [Candidate(members=g.members, spread=g.spread, tightness=g.tightness) for g in groups
             if is_candidate(g, size, max_tightness)]
    for g in groups:
        log.debug("candidates: group of %d dense novel rows, spread %.4g, tightness %.3f", g.members.size, g.spread,
                  g.tightness)
    found.sort(key=lambda c: (-c.size, c.tightness))
    log.info("candidates: %d novel rows of a %d-image night, %d group(s), %d candidate(s) (min_size=%d, "
             "max_tightness=%s)", len(rows), n_night, len(groups), len(found), size, max_tightness)
    return found


def is_candidate(group: Group, min_size: int, max_tightness: float = MAX_TIGHTNESS) -> bool:
    """The candidate rule: at least ``min_size`` members and ``tightness <= max_tightness``."""
    return group.members.size >= min_size and group.tightness <= max_tightness


def candidate_montage(uris: list[str | None], *, size: int = 96, max_tiles: int = 36,
                      storage_options: dict[str, Any] | None = None) -> bytes:
    """PNG bytes of a grid of at most ``max_tiles`` thumbnails (``size`` px squares) of a candidate's images.

    With more URIs than tiles, the tiles are evenly spaced along the given order (for
    :attr:`Candidate.members` order: from the densest members to the fringe). A URI that is None or cannot be
    read or decoded becomes a grey tile (:func:`imgclust.models.report.montage`). Raises :class:`ConfigError` for no
    URIs, ``size < 8`` or ``max_tiles < 1``.
    """
    from imgclust.models.report import (  # imported lazily: report pulls in the store and Arrow
        _thumbnail,
        montage,
    )

    check_int("size", size, minimum=8)
    check_int("max_tiles", max_tiles, minimum=1)
    if len(uris) == 0:
        raise ConfigError("no image URIs to draw: pass the candidate members' URIs")
    picks = np.unique(np.linspace(0, len(uris) - 1, min(max_tiles, len(uris))).round().astype(int))
    tiles = [_thumbnail(uris[i], size, storage_options) for i in picks.tolist()]
    missing = sum(t is None for t in tiles)
    if missing:
        log.info("candidate montage: %d of %d thumbnails unavailable (grey tiles)", missing, len(tiles))
    buf = io.BytesIO()
    montage(tiles, size).save(buf, format="PNG")
    return buf.getvalue()
