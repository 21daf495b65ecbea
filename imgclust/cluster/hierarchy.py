"""A browsable merge tree over a model's fitted clusters: coarser or finer labels without refitting.

:class:`ClusterTree` agglomerates the ``k`` fitted clusters of a model (their centroids ``(k, d)`` in the
clustering space and their row counts ``(k,)``) into a binary merge tree. Cutting it after ``k - n`` merges
gives ``n`` groups of clusters (:meth:`ClusterTree.cut`), so raw labels map to any level ``1..k``
(:meth:`ClusterTree.map_labels`); the cuts are nested by construction.

Linkages
--------
``ward`` (default): Ward's minimum-variance criterion (Ward 1963, "Hierarchical grouping to optimize an
objective function", JASA 58:236-244) on the cluster means *weighted by cluster size*: merging clusters
``A`` and ``B`` raises the total within-cluster sum of squares by
``Delta(A, B) = |A||B| / (|A| + |B|) * ||mu_A - mu_B||^2``. Each fitted cluster enters with its row count,
so the tree equals the top of a Ward tree of the underlying rows whenever the fitted clusters are a Ward
level of those rows (``scipy.cluster.hierarchy.linkage(centroids, "ward")`` would instead treat every
centroid as one point). Heights use scipy's scale, ``sqrt(2 * Delta)``, which is the Euclidean distance
for two single points. The merges are found with the nearest-neighbour chain algorithm (Benzécri 1982;
Juan 1982; Müllner 2011, "Modern hierarchical, agglomerative clustering algorithms", arXiv:1109.2378),
exact for Ward since Ward's criterion is reducible, on a dense matrix of merge costs that is updated
from the merged centroids (not by the Lance-Williams recurrence, which accumulates rounding):
``O(k^2)`` memory (8 k^2 bytes, about 3x that at the peak of the first pass), ``O(k^2 d)`` time.

``average`` / ``complete``: scipy's UPGMA / complete linkage on the centroids as points (unweighted by
size), Euclidean heights.

Empty clusters (size 0) hold no rows, so they do not shape the tree: before the linkage runs, each joins
the non-empty cluster with the nearest centroid at height 0 (in index order), so they are the first merges
and ``cut(k - e)`` removes all ``e`` of them.

The result is a scipy-compatible linkage (:meth:`ClusterTree.linkage_matrix`): leaves ``0..k-1``, node
``k + i`` created by merge ``i``, merges sorted by non-decreasing height, so
``scipy.cluster.hierarchy.fcluster`` / ``dendrogram`` work on it. :func:`draw_tree` draws it as a PIL
dendrogram with thumbnails at every node.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from scipy.spatial.distance import pdist, squareform

from imgclust.estimator import Estimator, register_estimator
from imgclust.exceptions import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["ClusterTree", "draw_tree"]

_LINKAGES = ("ward", "average", "complete")
MAX_LEAVES = 10_000
"""Largest ``k`` :meth:`ClusterTree.fit` accepts: the dense cost matrix takes ``8 k^2`` bytes (800 MB here)."""
MAX_SIDE = 30_000
"""Largest width or height in pixels :func:`draw_tree` draws."""


# ----------------------------------------------------------------------------- merge algorithms


def _ward_nn_chain(centroids: np.ndarray, sizes: np.ndarray) -> list[tuple[int, int, float]]:
    """Size-weighted Ward merges of ``m`` clusters with means ``centroids`` ``(m, d)`` float64 and sizes
    ``sizes`` ``(m,)`` (all > 0), by the nearest-neighbour chain (Müllner 2011).

    Returns ``m - 1`` merges ``(id_a, id_b, Delta)`` in the order found (not sorted by cost): ids ``0..m-1``
    are the inputs, ``m + j`` the cluster made by the ``j``-th merge returned. ``Delta`` is Ward's increase
    of the within-cluster sum of squares. The cost matrix is kept exactly symmetric (each entry is computed
    once and written to both halves), so ties are seen identically from both ends and the chain terminates.
    """
    m = centroids.shape[0]
    C = centroids.copy()
    n = sizes.astype(np.float64)
    # direct differences (no |x|^2 + |y|^2 - 2xy cancellation); squareform and the weights are symmetric
    D = squareform(pdist(C, "sqeuclidean"))
    weight = np.multiply.outer(n, n)
    weight /= np.add.outer(n, n)
    D *= weight
    del weight
    np.fill_diagonal(D, np.inf)
    active = np.ones(m, dtype=bool)
    slot_id = list(range(m))
    merges: list[tuple[int, int, float]] = []
    chain: list[int] = []
    while len(merges) < m - 1:
        if not chain:
            chain.append(int(np.flatnonzero(active)[0]))
        a = chain[-1]
        row = D[a]
        c = int(np.argmin(row))  # inactive slots and the diagonal are +inf
        prev = chain[-2] if len(chain) >= 2 else -1
        if prev >= 0 and row[prev] <= row[c]:  # ties go to the previous element: the chain ends
            c = prev
        if c != prev:
            chain.append(c)
            continue
        chain.pop()
        chain.pop()
        merges.append((slot_id[a], slot_id[c], float(row[c])))
        lo, hi = min(a, c), max(a, c)
        n_new = n[a] + n[c]
        C[lo] = (n[a] * C[a] + n[c] * C[c]) / n_new
        n[lo] = n_new
        active[hi] = False
        D[hi, :] = np.inf
        D[:, hi] = np.inf
        slot_id[lo] = m + len(merges) - 1
        others = np.flatnonzero(active)
        others = others[others != lo]
        diff = C[others] - C[lo]
        cost = np.einsum("ij,ij->i", diff, diff) * (n_new * n[others] / (n_new + n[others]))
        D[lo, others] = cost
        D[others, lo] = cost
    return merges


def _scipy_merges(centroids: np.ndarray, method: str) -> list[tuple[int, int, float]]:
    """``average`` / ``complete`` merges of the ``m`` points ``centroids`` ``(m, d)`` with scipy (ids as in
    :func:`_ward_nn_chain`, heights are Euclidean linkage distances)."""
    from scipy.cluster.hierarchy import linkage

    Z = linkage(centroids, method=method, metric="euclidean")
    return [(int(a), int(b), float(h)) for a, b, h, _ in Z]


def _tree_merges(centroids: np.ndarray, sizes: np.ndarray, linkage: str) -> tuple[np.ndarray, np.ndarray]:
    """Merges ``(k-1, 2)`` int64 (scipy numbering, sorted by height) and heights ``(k-1,)`` float64."""
    k = centroids.shape[0]
    found: list[tuple[int, int, float]] = []  # (id_a, id_b, height); internal ids k + position in `found`
    group = np.arange(k, dtype=np.int64)  # current top node of each non-empty leaf's group
    full = np.flatnonzero(sizes > 0)
    for e in np.flatnonzero(sizes == 0) if full.size else ():  # empty clusters first, at height 0, into the nearest non-empty one
        diff = centroids[full] - centroids[e]
        j = int(full[np.argmin(np.einsum("ij,ij->i", diff, diff))])
        found.append((int(e), int(group[j]), 0.0))
        group[j] = k + len(found) - 1
    m = full.size
    if m >= 2:
        if linkage == "ward":
            local = [(a, b, math.sqrt(2.0 * delta)) for a, b, delta in _ward_nn_chain(centroids[full], sizes[full])]
        else:
            local = _scipy_merges(centroids[full], linkage)
        ids = [int(group[j]) for j in full]  # local id -> global id
        for a, b, h in local:
            found.append((ids[a], ids[b], h))
            ids.append(k + len(found) - 1)
    heights = np.array([h for _, _, h in found], dtype=np.float64)
    for i, (a, b, _) in enumerate(found):  # a parent is never lower than its children (rounding guard)
        for child in (a, b):
            if child >= k:
                heights[i] = max(heights[i], heights[child - k])
    order = np.argsort(heights, kind="stable")  # stable: a child found before its parent stays before it
    new_id = np.arange(k + len(found), dtype=np.int64)
    new_id[k + order] = k + np.arange(len(found))
    pairs = np.array([found[i][:2] for i in order], dtype=np.int64).reshape(-1, 2)
    pairs = np.sort(new_id[pairs], axis=1)
    return pairs, heights[order]


# ----------------------------------------------------------------------------- the estimator


@register_estimator
class ClusterTree(Estimator):
    """Agglomerative merge tree over a model's ``k`` fitted clusters (Ward 1963 on the cluster means weighted
    by size, nearest-neighbour chain of Müllner 2011; ``average`` / ``complete`` via
    ``scipy.cluster.hierarchy``), its nested cuts ``1..k`` and label mapping. See the module docstring.

    Attributes
    ----------
    merges_ : (k-1, 2) int64, scipy numbering: leaves ``0..k-1``, node ``k + i`` created by merge ``i``
    heights_ : (k-1,) float64, non-decreasing; Ward: ``sqrt(2 * Delta)`` (scipy's scale)
    sizes_ : (k,) int64 rows per cluster; n_leaves_ : int ``k``; n_features_in_ : int ``d``
    """

    _array_attrs: ClassVar[tuple[str, ...]] = ("merges_", "heights_", "sizes_")
    _meta_attrs: ClassVar[tuple[str, ...]] = ("n_features_in_", "n_leaves_")

    merges_: np.ndarray
    heights_: np.ndarray
    sizes_: np.ndarray
    n_leaves_: int

    def __init__(self, *, linkage: Literal["ward", "average", "complete"] = "ward") -> None:
        self.linkage = linkage

    def fit(self, centroids: np.ndarray, sizes: np.ndarray) -> ClusterTree:
        """Build the tree of ``k`` clusters: ``centroids`` ``(k, d)`` means in the clustering space, ``sizes``
        ``(k,)`` rows per cluster (integers ``>= 0``; at least one ``> 0`` when ``k >= 2``)."""
        if self.linkage not in _LINKAGES:
            raise ConfigError(f"linkage must be one of {_LINKAGES}, got {self.linkage!r}")
        C = _check_centroids(centroids)
        k = C.shape[0]
        counts = _check_sizes(sizes, k)
        self.merges_, self.heights_ = _tree_merges(C, counts, self.linkage)
        self.sizes_ = counts
        self.n_leaves_ = k
        self.n_features_in_ = C.shape[1]
        logger.debug("ClusterTree(%s): %d clusters, top merge at height %s", self.linkage, k,
                     self.heights_[-1] if k > 1 else None)
        return self

    # -- cuts
    def levels(self) -> list[int]:
        """The group counts :meth:`cut` accepts: ``1..k``."""
        self._check_fitted()
        return list(range(1, self.n_leaves_ + 1))

    def cut(self, n_groups: int) -> np.ndarray:
        """Group ``(k,)`` int64 of each cluster when the tree is cut into ``n_groups`` groups (the first
        ``k - n_groups`` merges applied). Groups are numbered ``0..n_groups-1`` in order of their smallest
        cluster index; ``cut(n + 1)`` refines ``cut(n)``."""
        self._check_fitted()
        k = self.n_leaves_
        if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or not 1 <= n_groups <= k:
            raise ConfigError(f"n_groups must be an int in [1, {k}] (the model has {k} clusters; "
                              f"ClusterTree.levels() lists the valid values), got {n_groups!r}")
        parent = np.arange(2 * k - 1, dtype=np.int64)
        for i in range(k - int(n_groups)):
            parent[self.merges_[i]] = k + i
        while True:  # pointer jumping: each pass halves the remaining depth, O(k log k)
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
        root = parent[:k]
        _, first = np.unique(root, return_index=True)  # first leaf (smallest index) of each group
        rank = np.empty(2 * k - 1, dtype=np.int64)
        rank[root[np.sort(first)]] = np.arange(first.size)
        return rank[root]

    def map_labels(self, raw: np.ndarray, n_groups: int) -> np.ndarray:
        """Group label ``(n,)`` int64 at level ``n_groups`` of raw cluster labels ``raw`` ``(n,)`` (cluster
        indices ``0..k-1``; ``-1``, noise or novel, stays ``-1``)."""
        groups = self.cut(n_groups)
        labels = np.asarray(raw)
        if labels.ndim != 1 or not (labels.dtype.kind in "iu" or labels.size == 0):
            raise ConfigError(f"raw labels must be a 1-D integer array (n,), got {labels.dtype} of shape "
                              f"{labels.shape}; pass the clusterer's raw indices (Assignment.raw)")
        labels = labels.astype(np.int64, copy=False)
        bad = (labels < -1) | (labels >= self.n_leaves_)
        if bad.any():
            raise ConfigError(f"raw label {int(labels[bad][0])} is outside [-1, {self.n_leaves_ - 1}]; pass raw "
                              "cluster indices of this model (not stable ids), -1 for noise/novel")
        out = np.full(labels.shape, -1, dtype=np.int64)
        keep = labels >= 0
        out[keep] = groups[labels[keep]]
        return out

    # -- views of the tree
    def linkage_matrix(self) -> np.ndarray:
        """scipy linkage matrix ``(k-1, 4)`` float64: ``[node_a, node_b, height, n_clusters_below]``
        (cluster counts, not row counts: scipy's convention), valid for ``scipy.cluster.hierarchy``."""
        self._check_fitted()
        k = self.n_leaves_
        leaves = np.ones(2 * k - 1, dtype=np.int64)
        for i, (a, b) in enumerate(self.merges_):
            leaves[k + i] = leaves[a] + leaves[b]
        return np.column_stack([self.merges_.astype(np.float64), self.heights_, leaves[k:].astype(np.float64)])

    def node_sizes(self) -> np.ndarray:
        """Rows below every node ``(2k-1,)`` int64: leaves ``0..k-1`` then internal nodes ``k..2k-2``."""
        self._check_fitted()
        k = self.n_leaves_
        out = np.zeros(2 * k - 1, dtype=np.int64)
        out[:k] = self.sizes_
        for i, (a, b) in enumerate(self.merges_):
            out[k + i] = out[a] + out[b]
        return out

    def to_json(self) -> dict[str, Any]:
        """The tree as nested JSON values: ``{"id", "leaves", "size", "height", "children"}`` per node, the
        root outermost; leaves have ``height`` 0.0 and no children. Built without recursion; ``json.dumps``
        of it nests two levels per tree level."""
        self._check_fitted()
        k = self.n_leaves_
        sizes = self.node_sizes()
        nodes: list[dict[str, Any]] = [
            {"id": i, "leaves": [i], "size": int(sizes[i]), "height": 0.0, "children": []} for i in range(k)]
        for i, (a, b) in enumerate(self.merges_):
            kids = [nodes[int(a)], nodes[int(b)]]
            nodes.append({"id": k + i, "leaves": sorted(kids[0]["leaves"] + kids[1]["leaves"]),
                          "size": int(sizes[k + i]), "height": float(self.heights_[i]), "children": kids})
        return nodes[-1]

    def _children(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in self.merges_]


def _check_centroids(centroids: Any) -> np.ndarray:
    try:
        C = np.array(centroids, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"centroids cannot be read as a float array ({exc}); pass the model's centroids "
                          "(k, d)") from exc
    if C.ndim != 2 or C.shape[0] < 1 or C.shape[1] < 1:
        raise ConfigError(f"centroids must be 2-D (k, d) with k >= 1 and d >= 1, got shape {C.shape}; a model "
                          "without clusters (HDBSCAN labelled everything noise) has no tree")
    if C.shape[0] > MAX_LEAVES:
        raise ConfigError(f"{C.shape[0]} clusters exceed ClusterTree's limit of {MAX_LEAVES} (the merge-cost "
                          f"matrix takes 8 k^2 bytes); build the tree over a coarser model")
    if not np.isfinite(C).all():
        raise ConfigError(f"centroids contain NaN or inf (row {int(np.flatnonzero(~np.isfinite(C).all(1))[0])}); "
                          "refit the model or drop that cluster")
    return C


def _check_sizes(sizes: Any, k: int) -> np.ndarray:
    s = np.asarray(sizes)
    if s.shape != (k,) or s.dtype.kind not in "iuf" or (s.dtype.kind == "f" and not np.isfinite(s).all()):
        raise ConfigError(f"sizes must be a numeric array of shape ({k},) (rows per cluster), got "
                          f"{s.dtype} of shape {s.shape}; e.g. np.bincount(labels[labels >= 0], minlength={k})")
    if (s < 0).any() or (s.dtype.kind == "f" and (s != np.round(s)).any()):
        raise ConfigError(f"sizes must be whole row counts >= 0, got {s[(s < 0) | (s != np.round(s))][0]!r}")
    if k >= 2 and not (s > 0).any():
        raise ConfigError("every cluster has size 0, so no merge order follows from the data; pass the rows per "
                          f"cluster, or np.ones({k}) to weight the clusters equally")
    return s.astype(np.int64)


# ----------------------------------------------------------------------------- the picture

_BG = (255, 255, 255)
_STRIP_BG = (235, 235, 235)
_LINE = (110, 110, 110)
_TEXT = (0, 0, 0)
_HGAP = 28  # px between columns; the vertical bar of a merge sits in the middle of the gap
_VGAP = 8
_PAD = 10


def _tile(image: Image.Image | None, size: int, missing: Image.Image) -> Image.Image:
    """``size x size`` RGB tile: ``image`` fitted inside (aspect kept, on white) or the missing square."""
    if image is None:
        return missing
    rgb = image.convert("RGB")
    if rgb.size == (size, size):
        return rgb
    fitted = ImageOps.contain(rgb, (size, size))
    tile = Image.new("RGB", (size, size), _BG)
    tile.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return tile


def _node_images(tree: ClusterTree, leaf_images: Mapping[int, Sequence[Image.Image | None]],
                 per_node: int) -> list[list[Image.Image | None]]:
    """Up to ``per_node`` images per node ``(2k-1)``: a leaf's own first ones; an internal node's taken
    round-robin from its leaves, largest leaf first (ties: smaller index)."""
    k = tree.n_leaves_
    leaves: list[list[int]] = [[i] for i in range(k)]
    for a, b in tree._children():
        leaves.append(leaves[a] + leaves[b])
    out: list[list[Image.Image | None]] = []
    for members in leaves:
        ranked = sorted(members, key=lambda leaf: (-int(tree.sizes_[leaf]), leaf))
        pools = [list(leaf_images.get(leaf, [])) for leaf in ranked[:per_node]]
        picked: list[Image.Image | None] = []
        depth = 0
        while len(picked) < per_node and any(depth < len(p) for p in pools):
            picked.extend(p[depth] for p in pools if depth < len(p))
            depth += 1
        out.append(picked[:per_node])
    return out


def draw_tree(tree: ClusterTree, leaf_images: Mapping[int, Sequence[Image.Image | None]], *,
              leaf_labels: Mapping[int, str] | None = None, thumb: int = 48, per_node: int = 3) -> Image.Image:
    """Dendrogram of ``tree`` (PIL, no matplotlib), leaves top to bottom in tree order, merges to the right.

    Every node shows a strip of ``per_node`` thumbnails (``thumb`` px squares; images are fitted inside, a
    missing or ``None`` image is a grey square): a leaf its own ``leaf_images[leaf]``, an internal node
    images drawn round-robin from its leaves, largest leaf first. Beneath each strip: the leaf's label
    (``leaf_labels``, default ``cluster <i>``) or ``#<node>`` and the node's cluster count, its rows
    (``n=``), its height (``h=``) and the levels ``a-b`` (:meth:`ClusterTree.cut` group counts) at which it is
    one group. A node sits one column right of its highest child, so strips never overlap; heights are
    written, not drawn to scale. Raises :class:`ConfigError` for keys outside ``0..k-1`` or a picture larger
    than :data:`MAX_SIDE` px.
    """
    from imgclust.models.report import (  # here, not at the top: report imports the model
        GAP,
        MISSING_RGB,
        _clip,
    )

    tree._check_fitted()
    if isinstance(thumb, bool) or not isinstance(thumb, int) or not 8 <= thumb <= 1024:
        raise ConfigError(f"thumb must be an int in [8, 1024] (pixels), got {thumb!r}")
    if isinstance(per_node, bool) or not isinstance(per_node, int) or not 1 <= per_node <= 64:
        raise ConfigError(f"per_node must be an int in [1, 64], got {per_node!r}")
    k = tree.n_leaves_
    unknown = sorted(set(leaf_images) - set(range(k)))
    if unknown:
        raise ConfigError(f"leaf_images has keys {unknown[:5]} outside the tree's clusters 0..{k - 1}; key it by "
                          "raw cluster index")
    labels = leaf_labels or {}
    children = tree._children()
    sizes = tree.node_sizes()
    n_nodes = 2 * k - 1

    # layout: leaf rows in tree order (iterative DFS), columns by level above the leaves
    order: list[int] = []
    stack = [n_nodes - 1]
    while stack:
        node = stack.pop()
        if node < k:
            order.append(node)
        else:
            a, b = children[node - k]
            stack.extend((b, a))
    row = np.zeros(n_nodes)
    row[order] = np.arange(k)
    col = np.zeros(n_nodes, dtype=np.int64)
    n_below = np.ones(n_nodes, dtype=np.int64)
    parent_step = np.full(n_nodes, k - 1, dtype=np.int64)  # merge index that absorbs the node (root: k-1)
    for i, (a, b) in enumerate(children):
        row[k + i] = (row[a] + row[b]) / 2
        col[k + i] = 1 + max(col[a], col[b])
        n_below[k + i] = n_below[a] + n_below[b]
        parent_step[[a, b]] = i
    created = np.concatenate([np.full(k, -1), np.arange(k - 1)])  # merge that makes the node (leaves: none)

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(probe.textbbox((0, 0), "Ag|", font=font)[3]) + 2
    strip_w, strip_h = GAP + per_node * (thumb + GAP), thumb + 2 * GAP
    block_w, block_h = max(strip_w, 96), strip_h + 2 * line_h + 2
    col_w, row_h = block_w + _HGAP, block_h + _VGAP
    width = 2 * _PAD + int(col.max()) * col_w + block_w
    height = 2 * _PAD + k * row_h
    if max(width, height) > MAX_SIDE:
        raise ConfigError(f"the tree picture would be {width} x {height} px (limit {MAX_SIDE}); lower thumb "
                          f"(now {thumb}) or per_node (now {per_node}), or draw a tree of fewer clusters")

    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    missing = Image.new("RGB", (thumb, thumb), MISSING_RGB)
    x0 = _PAD + col * col_w
    y_top = (_PAD + (row + 0.5) * row_h - block_h / 2).round().astype(np.int64)
    y_mid = y_top + strip_h // 2

    for i, (a, b) in enumerate(children):  # connectors first, strips drawn over them
        node = k + i
        bar = int(x0[node]) - _HGAP // 2
        for child in (a, b):
            draw.line((int(x0[child]) + strip_w, int(y_mid[child]), bar, int(y_mid[child])), fill=_LINE, width=2)
        draw.line((bar, int(y_mid[a]), bar, int(y_mid[b])), fill=_LINE, width=2)
        draw.line((bar, int(y_mid[node]), int(x0[node]), int(y_mid[node])), fill=_LINE, width=2)

    images = _node_images(tree, leaf_images, per_node)
    for node in range(n_nodes):
        x, y = int(x0[node]), int(y_top[node])
        draw.rectangle((x, y, x + strip_w - 1, y + strip_h - 1), fill=_STRIP_BG)
        for j in range(per_node):
            image = images[node][j] if j < len(images[node]) else None
            img.paste(_tile(image, thumb, missing), (x + GAP + j * (thumb + GAP), y + GAP))
        lo, hi = k - int(parent_step[node]), k - 1 - int(created[node])
        if node < k:
            first = labels.get(node, f"cluster {node}")
            second = f"n={sizes[node]} lvl {lo}-{hi}"
        else:
            first = f"#{node}: {n_below[node]} clusters"
            second = f"n={sizes[node]} h={tree.heights_[node - k]:.3g} lvl {lo}-{hi}"
        for j, text in enumerate((first, second)):
            draw.text((x, y + strip_h + 1 + j * line_h), _clip(draw, text, font, block_w), fill=_TEXT, font=font)
    return img
