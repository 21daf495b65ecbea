"""Stable cluster ids across model versions (cluster lineage).

A refit numbers its clusters arbitrarily (raw index 0..k-1). Labels carry *stable* ids instead, so
that "cluster 7" keeps meaning the same group of images from one model version to the next. This
module matches the new raw clusters to the previous stable ids through the images both models
labelled, in the spirit of cluster-evolution tracking (MONIC, Spiliopoulou et al. 2006; Greene,
Doyle & Cunningham 2010, "Tracking the evolution of communities in dynamic social networks", which
matches by Jaccard similarity with a threshold of about 0.3).

Matching rule
-------------
Let ``A`` be the shared images whose previous stable id is ``a`` and ``B`` those whose new raw
cluster is ``b`` (images with ``-1`` on either side are left out of both). The pair may be matched
when its **Jaccard similarity** ``|A ∩ B| / |A ∪ B| >= min_overlap``. Jaccard is symmetric and
bounds both directions at once: it implies ``|A ∩ B| >= min_overlap * |A|`` *and*
``>= min_overlap * |B|``. So a new cluster inherits an id only when it holds a large part of the old
cluster *and* is mostly made of it. The overlap coefficient ``|A ∩ B| / min(|A|, |B|)`` was
rejected: it scores 1.0 for a tiny fragment lying inside a large cluster, so a cluster that
dissolved into many small pieces would hand its id to one arbitrary fragment (and a small cluster
swallowed by a large one would rename the large one).

Among the eligible pairs, a one-to-one assignment maximising the total number of shared members
is found with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``; Kuhn 1955).
Exact ties are broken by id: lower previous stable ids pair with lower new raw indices (an
assortative bonus below one shared member). New clusters left unmatched get fresh ids from
``next_id`` upwards, in raw-index order; an id is never reused.

Splits and merges are recorded with one-sided fractions: old ``a`` *split* when at least two new
clusters each hold ``>= min_overlap`` of ``A``; new ``b`` is a *merge* when at least two previous
ids each make up ``>= min_overlap`` of ``B``. At most one of the parts inherits the id; the others
get fresh ids (split) or are retired (merge).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from imgclust.exceptions import ConfigError, CorruptArtifactError

log = logging.getLogger(__name__)

__all__ = ["Lineage", "initial_lineage", "match_clusters"]

_INT32_MAX = int(np.iinfo(np.int32).max)
_EXACT_FLOAT = 2**52  # integers below this are exact in float64 (linear_sum_assignment works in float64)


@dataclass(frozen=True)
class Lineage:
    """How the clusters of a new model version relate to the previous version's stable ids.

    ``stable_ids`` ``(k_new,)`` int32: stable id of each new raw cluster (``ClusterModel.stable_ids``).
    ``matched``: new raw index -> previous stable id it inherited.
    ``new_ids``: stable ids freshly allocated (ascending).
    ``splits``: previous stable id -> new raw clusters each holding ``>= min_overlap`` of its members.
    ``merges``: new raw cluster -> previous stable ids each making up ``>= min_overlap`` of it.
    ``retired``: previous stable ids that no new cluster inherited (ascending).
    ``next_id``: the first id not yet allocated; pass it as ``next_id`` to the next refit.
    """

    stable_ids: np.ndarray
    matched: dict[int, int]
    new_ids: list[int]
    splits: dict[int, list[int]]
    merges: dict[int, list[int]]
    retired: list[int]
    next_id: int

    def as_json(self) -> dict[str, Any]:
        """JSON-ready dict for ``model.json`` (dict keys become strings); inverse: :meth:`from_json`."""
        return {
            "stable_ids": [int(s) for s in self.stable_ids],
            "matched": {str(k): v for k, v in self.matched.items()},
            "new_ids": list(self.new_ids),
            "splits": {str(k): list(v) for k, v in self.splits.items()},
            "merges": {str(k): list(v) for k, v in self.merges.items()},
            "retired": list(self.retired),
            "next_id": self.next_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lineage:
        """Rebuild a :class:`Lineage` from :meth:`as_json` output."""
        try:
            return cls(stable_ids=np.asarray(data["stable_ids"], dtype=np.int32).reshape(-1),
                       matched={int(k): int(v) for k, v in data["matched"].items()},
                       new_ids=[int(i) for i in data["new_ids"]],
                       splits={int(k): [int(i) for i in v] for k, v in data["splits"].items()},
                       merges={int(k): [int(i) for i in v] for k, v in data["merges"].items()},
                       retired=[int(i) for i in data["retired"]],
                       next_id=int(data["next_id"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CorruptArtifactError(f"lineage record is malformed ({err!r}); expected the output of "
                                       "Lineage.as_json()") from err


def initial_lineage(k: int) -> Lineage:
    """Lineage of the first model version: raw cluster ``i`` gets stable id ``i`` (``0..k-1``)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ConfigError(f"k must be a non-negative int (the number of clusters); got {k!r}")
    k = int(k)
    return Lineage(stable_ids=np.arange(k, dtype=np.int32), matched={}, new_ids=list(range(k)),
                   splits={}, merges={}, retired=[], next_id=k)


def match_clusters(prev_ids: np.ndarray, new_raw: np.ndarray, *, prev_known_ids: Iterable[int],
                   min_overlap: float = 0.3, next_id: int | None = None,
                   n_new_clusters: int | None = None) -> Lineage:
    """Give each new raw cluster a stable id, inheriting the previous ones where clusters coincide.

    Parameters
    ----------
    prev_ids : (n,) int
        Stable id of each shared image under the previous model (``-1`` = novel/noise, ignored).
    new_raw : (n,) int
        Raw cluster index of the same images under the new model (``-1`` = noise, ignored).
    prev_known_ids : iterable of int
        The previous model's stable ids (``ClusterModel.stable_ids``), including clusters that no
        shared image landed in. Ids retired earlier may be added too: they are never reallocated
        (they are then listed in ``retired`` again, as no new cluster inherits them).
    min_overlap : float in (0, 1]
        Minimum Jaccard similarity of a matched pair; also the one-sided fraction for splits/merges.
    next_id : int, optional
        First fresh id; default ``max(prev_known_ids ∪ prev_ids) + 1``. Pass the previous
        lineage's ``next_id`` so that ids retired in any earlier version are never reused.
    n_new_clusters : int, optional
        ``k_new``, the new model's cluster count; default ``max(new_raw) + 1``. Pass it when a new
        cluster may have no shared member.

    Returns a :class:`Lineage`. Deterministic: the same inputs give the same ids.
    """
    prev = _labels("prev_ids", prev_ids)
    new = _labels("new_raw", new_raw)
    if prev.shape != new.shape:
        raise ConfigError(f"prev_ids has {prev.shape[0]} entries and new_raw {new.shape[0]}; they must "
                          "describe the same images in the same order")
    if not (isinstance(min_overlap, (int, float)) and 0.0 < float(min_overlap) <= 1.0):
        raise ConfigError(f"min_overlap must be a number in (0, 1] (a Jaccard similarity); got {min_overlap!r}")
    known = {_nonneg_int("prev_known_ids entry", i) for i in prev_known_ids}
    observed = {int(i) for i in np.unique(prev[prev >= 0])}
    if observed - known:
        raise ConfigError(f"prev_ids holds stable ids {sorted(observed - known)[:10]} that are not in "
                          "prev_known_ids; pass the previous model's stable_ids (did you pass raw indices?)")
    k_new = int(new.max()) + 1 if new.size and new.max() >= 0 else 0
    if n_new_clusters is not None:
        n_new_clusters = _nonneg_int("n_new_clusters", n_new_clusters)
        if n_new_clusters < k_new:
            raise ConfigError(f"new_raw holds raw index {k_new - 1} but n_new_clusters is {n_new_clusters}")
        k_new = n_new_clusters
    first_free = max(known) + 1 if known else 0
    if next_id is None:
        next_id = first_free
    elif _nonneg_int("next_id", next_id) < first_free:
        raise ConfigError(f"next_id={next_id} would reuse an allocated id (largest known is {first_free - 1}); "
                          f"pass next_id >= {first_free} or leave it unset")
    if int(next_id) + k_new - 1 > _INT32_MAX:
        raise ConfigError(f"stable ids would exceed int32 (next_id={next_id}, {k_new} clusters)")

    old_ids = np.array(sorted(known), dtype=np.int64)  # row r <-> stable id old_ids[r]
    keep = (prev >= 0) & (new >= 0)
    cell = np.searchsorted(old_ids, prev[keep]) * k_new + new[keep]
    table = np.bincount(cell, minlength=old_ids.size * k_new).reshape(old_ids.size, k_new)
    rows, cols = _match(table, float(min_overlap))

    stable = np.full(k_new, -1, dtype=np.int64)
    matched = {int(c): int(old_ids[r]) for r, c in zip(rows, cols, strict=True)}
    for c, sid in matched.items():
        stable[c] = sid
    fresh = np.flatnonzero(stable < 0)
    stable[fresh] = int(next_id) + np.arange(fresh.size)
    new_ids = [int(s) for s in stable[fresh]]
    splits, merges = _splits_merges(table, old_ids, float(min_overlap))
    retired = sorted(known - set(matched.values()))
    log.info("lineage: %d of %d new clusters inherit an id, %d fresh, %d retired, %d splits, %d merges",
             len(matched), k_new, len(new_ids), len(retired), len(splits), len(merges))
    return Lineage(stable_ids=stable.astype(np.int32), matched=dict(sorted(matched.items())), new_ids=new_ids,
                   splits=splits, merges=merges, retired=retired, next_id=int(next_id) + len(new_ids))


def _match(table: np.ndarray, min_overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of rows (old) to columns (new) of the contingency ``table`` (P, k) over the
    pairs with Jaccard >= ``min_overlap``; solved per connected component of the eligible pairs."""
    if table.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    size_old = table.sum(axis=1, keepdims=True)
    size_new = table.sum(axis=0, keepdims=True)
    union = size_old + size_new - table
    jaccard = np.divide(table, union, out=np.zeros(table.shape), where=union > 0)
    # Jaccard >= t  <=>  |A ∩ B| >= t * |A ∪ B|; the small slack keeps exact thresholds (0.3 of 10) in
    eligible = (table > 0) & (jaccard >= min_overlap - 1e-12)
    er, ec = np.nonzero(eligible)
    if er.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_old, n_new = table.shape
    graph = coo_matrix((np.ones(er.size), (er, n_old + ec)), shape=(n_old + n_new,) * 2)
    _, comp = connected_components(graph, directed=False)
    out_r: list[int] = []
    out_c: list[int] = []
    for label in np.unique(comp[er]):  # ascending, so the output order is deterministic
        r = np.flatnonzero(comp[:n_old] == label)
        c = np.flatnonzero(comp[n_old:] == label)
        sub = np.where(eligible[np.ix_(r, c)], table[np.ix_(r, c)], 0).astype(np.float64)
        # tie-break bonus (p - i)(q - j) favours pairing low ids with low ids (rearrangement inequality);
        # scaled so that the bonuses of a whole matching stay below one shared member
        p, q = sub.shape
        scale = float(p * q * min(p, q) + 1)
        if sub.max() * scale < _EXACT_FLOAT:
            bonus = np.outer(np.arange(p, 0, -1), np.arange(q, 0, -1)).astype(np.float64)
            weights = np.where(sub > 0, sub * scale + bonus, 0.0)
        else:
            log.warning("lineage: a component of %d x %d clusters is too large for exact id tie-breaking; "
                        "exact ties follow scipy's (deterministic) order instead", p, q)
            weights = sub
        ri, ci = linear_sum_assignment(weights, maximize=True)
        ok = sub[ri, ci] > 0
        out_r.extend(r[ri[ok]].tolist())
        out_c.extend(c[ci[ok]].tolist())
    return np.asarray(out_r, np.int64), np.asarray(out_c, np.int64)


def _splits_merges(table: np.ndarray, old_ids: np.ndarray,
                   min_overlap: float) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """One-sided overlap fractions of the contingency ``table`` (P, k): splits by row, merges by column."""
    if table.size == 0:
        return {}, {}
    size_old = table.sum(axis=1, keepdims=True)
    size_new = table.sum(axis=0, keepdims=True)
    of_old = (table > 0) & (table >= min_overlap * size_old - 1e-9)
    of_new = (table > 0) & (table >= min_overlap * size_new - 1e-9)
    splits = {int(old_ids[r]): np.flatnonzero(of_old[r]).tolist()
              for r in range(table.shape[0]) if np.count_nonzero(of_old[r]) >= 2}
    merges = {int(c): [int(old_ids[r]) for r in np.flatnonzero(of_new[:, c])]
              for c in range(table.shape[1]) if np.count_nonzero(of_new[:, c]) >= 2}
    return splits, merges


def _labels(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be a 1-D array of cluster ids; got shape {arr.shape}. Use .ravel()")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"{name} must hold integers (cluster ids); got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < -1:
        raise ConfigError(f"{name} holds {int(arr.min())}; cluster ids are >= 0, and -1 marks noise/novel")
    return arr


def _nonneg_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be a non-negative int; got {value!r}")
    return int(value)
