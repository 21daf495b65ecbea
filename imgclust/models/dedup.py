"""Near-duplicate groups in feature space: the copies, crops, re-encodes and edits of one picture.

This is what fastdup and NeMo Curator's semantic deduplication are used for (Abbas et al., "SemDeDup",
2023): images whose embeddings are almost parallel are versions of one picture.

Rule (:func:`find_near_duplicates`): rows ``(n, D)`` are L2-normalised, so the inner product is the cosine
similarity; every row's ``k`` nearest neighbours are found exactly (faiss ``IndexFlatIP``, queries in blocks);
a pair with similarity ``>= threshold`` (either row among the other's neighbours) is an edge. Groups, two rules:

* ``representative`` (default): images are visited by decreasing number of edges (ties: smallest image id);
  an image not yet in a group that still has neighbours outside groups becomes a **representative**, and its
  group is itself plus those neighbours. Every member is within the threshold of its representative, so
  groups cannot chain; a picture with more than ``k`` copies may split into several groups.
* ``components``: a group is a connected component of the edge graph (single linkage): A~B and B~C group A,
  B and C even when A and C are further apart, which in a dense feature space can join thousands of images.
  Its representative is the member with the most edges.

Each member's ``similarity`` is its cosine similarity to its group's representative (1 for the representative).

Store layout: ``near_duplicates/<extractor_key>/groups.parquet`` (one row per image that has a near-duplicate:
``image_id``, ``group_id`` (the representative's id), ``representative_id``, ``similarity`` float32,
``group_size`` int32) and ``near_duplicates/<extractor_key>/meta.json`` (threshold, k, rows searched, groups,
the time it was computed), both written whole (a rerun replaces them).

Which spaces: only those where a high cosine similarity means "a version of the same picture" (raw pixels,
descriptors such as ``layout``, pretrained networks). An encoder trained on the corpus itself (the ``deep:``
extractor of a refinement) pulls *different* images of one kind together, so a threshold there cannot tell a
copy from a neighbour (contrastive features of Fashion-MNIST: median nearest-image similarity 0.995). Its feature
files record ``near_duplicate_space = false`` (:func:`imgclust.io.features.near_duplicate_space`).
:func:`dedup_store` refuses such a space, naming the stored spaces that can be searched (:func:`near_duplicate_problem`);
:func:`near_duplicate_search_space` gives the space a model's nightly flags, ``imgclust dedup`` and its report search
instead (the newest near-duplicate space among the store's model versions).

Memory: the search holds every feature row (``n x D`` float32, e.g. 1M x 512 = 2 GB) and ``n x k`` neighbours;
time is ``O(n^2 D)`` (exact search).

Nightly flags (:func:`flag_new_near_duplicates`, run by the auto-label flow between extraction and labelling):
each new image's most similar STORED image, where stored means labelled by the current model before this night
(its label files, minus tonight's shards), in the same feature space. A new image whose best cosine similarity is
``>= threshold`` is flagged: ``near_duplicates/<extractor_key>/arrivals/shard-<id>.parquet`` (schema
:data:`ARRIVALS_SCHEMA`, one row per flagged image of that new shard, written for every new shard, empty when none)
is read by :func:`imgclust.models.labels.label_shard`, which fills the label rows' ``near_duplicate_of`` (the stored
image id) and ``near_duplicate_similarity`` (null for unflagged rows). Cost: the stored shards are streamed one
batch at a time through an exact faiss search of the night's rows: ``O(new x stored x D)`` flops and one read of
the stored features per night, memory ``new x D`` float32 plus one stored batch (not the whole store). New images
are not compared with each other here (``imgclust dedup`` groups everything).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from imgclust.config import ExtractConfig
from imgclust.exceptions import ConfigError, StoreError
from imgclust.io.features import done_shards, iter_feature_batches, near_duplicate_space
from imgclust.io.layout import (
    ALL_FEATURE_MARKERS_GLOB,
    arrivals_path,
    feature_key_of,
    feature_path,
    features_dir,
    groups_path,
    label_shards_glob,
    model_json,
    shard_id_of,
)
from imgclust.io.layout import near_duplicates_meta_path as _meta_path
from imgclust.io.store import Store
from imgclust.progress import Progress
from imgclust.validation import l2_normalize

log = logging.getLogger(__name__)

__all__ = ["ARRIVALS_SCHEMA", "DEDUP_SCHEMA", "DedupConfig", "SearchSpace", "arrivals_path", "dedup_store",
           "find_near_duplicates", "flag_new_near_duplicates", "groups_path", "near_duplicate_problem",
           "near_duplicate_search_space", "nearest_stored", "read_arrivals", "read_near_duplicates"]

DEDUP_SCHEMA = pa.schema([("image_id", pa.string()), ("group_id", pa.string()),
                          ("representative_id", pa.string()), ("similarity", pa.float32()),
                          ("group_size", pa.int32())])
ARRIVALS_SCHEMA = pa.schema([("image_id", pa.string()), ("near_duplicate_of", pa.string()),
                             ("near_duplicate_similarity", pa.float32())])


@dataclass(frozen=True)
class DedupConfig:
    """``threshold``: cosine similarity at or above which two images are near-duplicates, in (0, 1];
    ``k``: neighbours examined per image (>= 1); ``rule``: how edges make groups (module docstring);
    ``batch``: query rows per faiss search."""

    threshold: float = 0.98
    k: int = 10
    rule: Literal["representative", "components"] = "representative"
    batch: int = 4096

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"near-duplicate threshold must be in (0, 1] (cosine similarity), got {self.threshold}")
        if self.rule not in ("representative", "components"):
            raise ConfigError(f"near-duplicate rule must be 'representative' or 'components', got {self.rule!r}")
        if self.k < 1 or self.batch < 1:
            raise ConfigError(f"near-duplicate search needs k >= 1 and batch >= 1, got k={self.k}, batch={self.batch}")


def _neighbours(X: np.ndarray, k: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN of every row among the others: similarities and indices ``(n, k)`` (-1 where n <= k)."""
    import faiss

    n, d = X.shape
    index = faiss.IndexFlatIP(d)
    index.add(X)
    kk = min(k + 1, n)  # + 1: each row finds itself
    sims = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    progress = Progress("near-duplicates: neighbour search", n, log, unit="rows").start(f"k={k}, {d}-d")
    for lo in range(0, n, batch):
        found_s, found_i = index.search(X[lo:lo + batch], kk)
        for r in range(found_s.shape[0]):  # drop the row itself wherever ties put it
            keep = found_i[r] != lo + r
            s, i = found_s[r][keep][:k], found_i[r][keep][:k]
            sims[lo + r, :len(s)], idx[lo + r, :len(i)] = s, i
        progress.advance(found_s.shape[0])
    progress.finish()
    return sims, idx


def find_near_duplicates(ids: list[str], X: np.ndarray, config: DedupConfig = DedupConfig()) -> pa.Table:  # noqa: B008
    """Near-duplicate groups of the rows ``X`` ``(n, D)`` named ``ids`` (module docstring for the rule);
    a table of :data:`DEDUP_SCHEMA`, one row per image in a group, sorted by group then image id."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if X.ndim != 2 or X.shape[0] != len(ids):
        raise ConfigError(f"near-duplicate search got {len(ids)} ids for features of shape {X.shape}")
    if len(set(ids)) != len(ids):
        raise ConfigError("near-duplicate search got repeated image ids; each image must appear once")
    n = len(ids)
    if n < 2:
        return DEDUP_SCHEMA.empty_table()
    Xn = np.ascontiguousarray(l2_normalize(np.asarray(X, np.float32)))
    sims, idx = _neighbours(Xn, config.k, config.batch)
    rows, cols = np.nonzero((sims >= config.threshold) & (idx >= 0))
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, idx[rows, cols])), shape=(n, n)).tocsr()
    graph = ((graph + graph.T) > 0).tocsr()  # symmetric, no duplicate edges
    degree = np.diff(graph.indptr)
    ids_arr = np.asarray(ids, dtype=object)
    group = np.full(n, -1, np.int64)  # index of each row's representative
    order = np.lexsort((ids_arr, -degree))  # most edges first, then smallest id
    if config.rule == "components":
        n_comp, comp = connected_components(graph, directed=False)
        rep_of = np.full(n_comp, -1, np.int64)
        for m in order[degree[order] > 0]:
            if rep_of[comp[m]] < 0:
                rep_of[comp[m]] = m
        group = np.where(degree > 0, rep_of[comp], -1)
    else:
        for m in order:
            if group[m] >= 0:
                continue
            free = [j for j in graph.indices[graph.indptr[m]:graph.indptr[m + 1]] if group[j] < 0]
            if free:
                group[m] = m
                group[free] = m
    members = np.flatnonzero(group >= 0)
    if not len(members):
        return DEDUP_SCHEMA.empty_table()
    reps = group[members]
    sizes = np.bincount(group[members], minlength=n)
    similarity = np.einsum("ij,ij->i", Xn[members], Xn[reps]).astype(np.float32)
    order = np.lexsort((ids_arr[members], ids_arr[reps]))
    members, reps, similarity = members[order], reps[order], similarity[order]
    return pa.table({"image_id": ids_arr[members].tolist(), "group_id": ids_arr[reps].tolist(),
                     "representative_id": ids_arr[reps].tolist(), "similarity": similarity,
                     "group_size": sizes[reps].astype(np.int32)}, schema=DEDUP_SCHEMA)


def near_duplicate_problem(store: Store, extractor_key: str, shard_id: str) -> str | None:
    """Why ``extractor_key``'s space cannot be searched for near-duplicates (judged on its shard ``shard_id``),
    naming the stored spaces that can; None when it can (module docstring, "Which spaces")."""
    if near_duplicate_space(store, extractor_key, shard_id):
        return None
    first: dict[str, str] = {}
    for rel in store.glob(ALL_FEATURE_MARKERS_GLOB):
        first.setdefault(feature_key_of(rel), shard_id_of(rel))
    usable = sorted(k for k, sid in first.items() if k != extractor_key and near_duplicate_space(store, k, sid))
    return (f"features/{extractor_key} come from an encoder trained on this corpus, which places different images of "
            "one kind close together: a cosine threshold there cannot tell a copy from a neighbour. Search a space "
            "made for near-duplicates: " + (f"--extractor-key {' or '.join(usable)} (stored)" if usable else
                                            "extract one first, e.g. --extractor layout (photos) or pixels"))


def dedup_store(store: Store, extractor_key: str, config: DedupConfig = DedupConfig()) -> dict[str, Any]:  # noqa: B008
    """Find the near-duplicate groups among every done feature row of ``extractor_key`` and write them
    (module docstring for the layout); returns a summary (rows, groups, images in groups, seconds). Raises
    :class:`ConfigError` for a space not made for near-duplicates (:func:`near_duplicate_problem`)."""
    shards = done_shards(store, extractor_key)
    if not shards:
        raise StoreError(f"no finished feature shards under {store.uri(features_dir(extractor_key))}; "
                         "extract features first")
    problem = near_duplicate_problem(store, extractor_key, shards[0])
    if problem:
        raise ConfigError(problem)
    t0 = time.perf_counter()
    ids: list[str] = []
    blocks: list[np.ndarray] = []
    for batch_ids, X in iter_feature_batches(store, extractor_key, shards, representation=True):
        ids += batch_ids
        blocks.append(X)
    X = np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float32)
    table = find_near_duplicates(ids, X, config)
    groups = len(set(table.column("group_id").to_pylist()))
    summary = {"extractor_key": extractor_key, "rows": len(ids), "groups": groups,
               "images_in_groups": table.num_rows, "threshold": config.threshold, "k": config.k, "rule": config.rule,
               "seconds": round(time.perf_counter() - t0, 2),
               "computed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    store.write_parquet(groups_path(extractor_key), table)
    store.write_json(_meta_path(extractor_key), summary)  # written last: a table without it is incomplete
    log.info("near-duplicates of %s: %d groups holding %d of %d images (cosine >= %.3f) in %.1f s",
             extractor_key, groups, table.num_rows, len(ids), config.threshold, summary["seconds"])
    return summary


def read_near_duplicates(store: Store, extractor_key: str) -> tuple[pa.Table, dict[str, Any]] | None:
    """The stored groups and their summary for ``extractor_key``, or None when never computed."""
    if not store.exists(_meta_path(extractor_key)):
        return None
    return store.read_parquet(groups_path(extractor_key)), store.read_json(_meta_path(extractor_key))


# ---- nightly flags: new images against the stored ones ----------------------------------------------
def read_arrivals(store: Store, extractor_key: str, shard_id: str) -> pa.Table | None:
    """The flags written for a new shard (:data:`ARRIVALS_SCHEMA`), or None when it was never checked."""
    rel = arrivals_path(extractor_key, shard_id)
    return store.read_parquet(rel) if store.exists(rel) else None


def nearest_stored(X_new: np.ndarray, stored: Iterable[tuple[list[str], np.ndarray]]
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Each new row's most similar stored row, streaming ``stored`` batches ``(ids, (m, D))`` through an
    exact inner-product search (rows L2-normalised first, so it is the cosine similarity).

    Returns ``(similarity (n,) float32, stored id (n,) object, stored rows seen)``; similarity is -inf and the
    id None where nothing was stored. Ties keep the earliest batch. Memory: ``X_new`` plus one batch."""
    import faiss

    n, d = X_new.shape
    queries = np.ascontiguousarray(l2_normalize(np.asarray(X_new, np.float32)))
    best = np.full(n, -np.inf, np.float32)
    best_id = np.full(n, None, dtype=object)
    seen = 0
    if n == 0:
        return best, best_id, seen
    for ids, X in stored:
        if not len(ids):
            continue
        if X.shape[1] != d:
            raise StoreError(f"stored feature rows are {X.shape[1]}-d but the new rows are {d}-d; "
                             "both must come from one extractor key")
        index = faiss.IndexFlatIP(d)
        index.add(np.ascontiguousarray(l2_normalize(np.asarray(X, np.float32))))
        sims, idx = index.search(queries, 1)
        better = sims[:, 0] > best
        best[better] = sims[better, 0]
        best_id[better] = np.asarray(ids, dtype=object)[idx[better, 0]]
        seen += len(ids)
    return best, best_id, seen


def _labelled_shards(store: Store, model_id: str) -> set[str]:
    """Shard ids that have a label file of ``model_id`` (any date)."""
    return {shard_id_of(rel) for rel in store.glob(label_shards_glob(model_id))}


@dataclass(frozen=True)
class SearchSpace:
    """Where a model's near-duplicates are searched: the ``extract`` configuration and extractor ``key`` of a
    near-duplicate space, or both None and the ``reason`` there is none."""

    extract: ExtractConfig | None
    key: str | None
    reason: str | None = None


def near_duplicate_search_space(store: Store, model_id: str) -> SearchSpace:
    """Where the near-duplicates of ``model_id``'s images are searched (nightly flags, ``imgclust dedup``'s default,
    the report's groups): the model's own features when they are a near-duplicate space; else those of the newest
    other model version of the store whose features are one (a pixel model before a ``simclr`` refinement: its rows
    cover the images extracted while it was in use, and each night then extracts the new images in that space too);
    else none, with :func:`near_duplicate_problem` of the model's own space as the reason."""
    from imgclust.models.model import extract_config_of, model_info

    versions = sorted((rel.split("/")[-2] for rel in store.glob(model_json("*"))), reverse=True)  # ids sort by time
    own_key = ""
    for mid in [model_id, *(m for m in versions if m != model_id)]:
        info = model_info(store, mid)
        key = str(info.get("extractor_key", ""))
        own_key = own_key or key
        shards = done_shards(store, key) if key else []
        if shards and "extract" in info and near_duplicate_space(store, key, shards[0]):
            return SearchSpace(extract_config_of(store, mid), key)
    own = done_shards(store, own_key)
    reason = near_duplicate_problem(store, own_key, own[0]) if own else None
    return SearchSpace(None, None, reason or f"model {model_id} has no searchable features: no finished shards under "
                       f"{store.uri(features_dir(own_key))} or no recorded extract configuration; refit it")


def flag_new_near_duplicates(store: Store, model_id: str, extractor_key: str, new_shard_ids: list[str],
                             config: DedupConfig = DedupConfig(), *,  # noqa: B008
                             search: tuple[str, list[str]] | None = None, batch_rows: int = 65536) -> dict[str, Any]:
    """Flag the images of ``new_shard_ids`` (shards of the model's ``extractor_key``) whose most similar stored image
    has cosine similarity ``>= config.threshold``, and write each new shard's :func:`arrivals_path` table (module
    docstring: rule, cost). Rerunning rewrites the same tables. Returns counts: new rows, stored rows and shards
    searched, flagged images, the space searched (``key``), seconds.

    Where: in ``extractor_key``'s space against the shards labelled by ``model_id`` before (not among the new ones);
    or, with ``search = (key, new shard ids of key)`` (the same images extracted in a near-duplicate space,
    :func:`near_duplicate_search_space`), in that space against every other done shard of it. Without ``search``, in a
    space not made for near-duplicates (:func:`near_duplicate_problem`) nothing is searched or written: the
    summary's ``skipped`` says why (logged as a warning), and the night's label rows carry no flags; a ``search``
    space that is not one raises :class:`ConfigError`. Only ``config.threshold`` is used (each new image's single
    nearest stored image decides); ``batch_rows`` bounds the stored rows held at once."""
    t0 = time.perf_counter()
    new = list(dict.fromkeys(new_shard_ids))
    _require_done(store, extractor_key, new)
    if search is None:
        problem = near_duplicate_problem(store, extractor_key, new[0]) if new else None
        if problem:
            log.warning("nightly near-duplicate flags skipped: %s", problem)
            return {"near_duplicates": 0, "threshold": config.threshold, "skipped": problem,
                    "seconds": round(time.perf_counter() - t0, 2)}
        space, space_new = extractor_key, new
        labelled = _labelled_shards(store, model_id)
        stored_shards = [s for s in done_shards(store, space) if s in labelled and s not in set(new)]
    else:
        space, space_new = search[0], list(dict.fromkeys(search[1]))
        _require_done(store, space, space_new)
        problem = near_duplicate_problem(store, space, space_new[0]) if space_new else None
        if problem:
            raise ConfigError(problem)
        stored_shards = [s for s in done_shards(store, space) if s not in set(space_new)]
    ids: list[str] = []
    ids_of: dict[str, list[str]] = {}  # image ids of each new shard of the model's key: what label_shard reads
    blocks: list[np.ndarray] = []
    for sid in space_new:
        for batch_ids, X in iter_feature_batches(store, space, [sid], batch_size=batch_rows, representation=True):
            ids += batch_ids
            ids_of.setdefault(sid, []).extend(batch_ids)
            blocks.append(X)
    X_new = np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float32)
    best, best_id, seen = nearest_stored(
        X_new, iter_feature_batches(store, space, stored_shards, batch_size=batch_rows, representation=True))
    flags = {i: (of, float(sim)) for i, of, sim in zip(ids, best_id, best, strict=True) if sim >= config.threshold}
    for sid in new:
        if search is not None:  # the other space's shards may split the night differently
            ids_of[sid] = store.read_parquet(feature_path(extractor_key, sid), columns=["image_id"]).column(
                "image_id").to_pylist()
        hits = [i for i in ids_of.get(sid, []) if i in flags]
        store.write_parquet(arrivals_path(extractor_key, sid), pa.table(
            {"image_id": hits, "near_duplicate_of": [flags[i][0] for i in hits],
             "near_duplicate_similarity": np.asarray([flags[i][1] for i in hits], np.float32)},
            schema=ARRIVALS_SCHEMA))
    summary = {"new_rows": len(ids), "stored_rows": seen, "stored_shards": len(stored_shards),
               "near_duplicates": len(flags), "threshold": config.threshold, "key": space,
               "seconds": round(time.perf_counter() - t0, 2)}
    log.info("near-duplicates of stored images: %d of %d new images (cosine >= %.3f against %d stored rows of %s) "
             "in %.1f s", summary["near_duplicates"], len(ids), config.threshold, seen, space, summary["seconds"])
    return summary


def _require_done(store: Store, key: str, shard_ids: list[str]) -> None:
    """Raise :class:`StoreError` when a shard of ``shard_ids`` has no finished features under ``key``."""
    missing = sorted(set(shard_ids) - set(done_shards(store, key)))
    if missing:
        raise StoreError(f"new shards {missing[:5]} have no finished features under "
                         f"{store.uri(features_dir(key))}; extract them before flagging near-duplicates")
