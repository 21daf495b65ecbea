"""Cluster names from words: a CLIP model proposes a name for each cluster from a vocabulary.

Inputs: a vocabulary (``labels_vocabulary.txt`` at the store root, or a file given; one label a line,
blank lines and ``#`` comments skipped, at least two distinct labels) and a model's labels. Output:
``cluster_names_suggested.csv`` at the store root (:data:`SUGGESTION_COLUMNS`, one row per cluster),
which a person reviews and accepts into ``cluster_names.csv`` with :func:`accept_suggestions`
(``imgclust name-clusters --accept``); names a person wrote there are never replaced.

Image embeddings must come from the image tower of the same CLIP model as the text embeddings
(Radford et al., ICML 2021). They are, in this order:

* the stored features of the model (or of ``extractor_key``) when they were extracted by an open_clip
  backbone: every labelled member counts; the text tower is built from the same weights (the model's
  recorded ``--weights``, the seed of a random init, the cached pretrained file, or ``weights``) and its
  weights identity must equal the one in the features' metadata;
* otherwise, when ``backbone`` names an open_clip entry: a seeded sample of at most
  ``sample_per_cluster`` members of each cluster, decoded from their source files and embedded with
  that backbone's image tower;
* otherwise a :class:`ConfigError` says which feature keys of the store are CLIP features, if any.

Scoring, per cluster ``c`` (novel rows, id -1, are not a cluster and get no suggestion): the centroid
``m_c`` = normalised mean of the members' L2-normalised image embeddings; per label ``l`` the text
embedding ``t_l`` = normalised mean over the prompt templates (default ``"a photo of a {label}."``) of
the normalised text embeddings; ``cosine = m_c . t_l``. The suggestion is the label of the largest
cosine. ``confidence`` is its probability under CLIP's zero-shot softmax over the vocabulary,
``softmax(logit_scale * cosine)`` with the checkpoint's own logit scale (100 for OpenAI's weights), so
it depends on the vocabulary: a label without close competitors is confident. ``margin`` is the cosine
gap to the runner-up; ``agreement`` the share of members whose own best label is the suggestion.
"""
from __future__ import annotations

import csv
import html
import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclust.exceptions import ConfigError, CorruptArtifactError, ImageDecodeError, StoreError
from imgclust.extract.images import decode_image
from imgclust.io.features import done_shards, feature_path, iter_feature_batches
from imgclust.io.layout import (
    ALL_FEATURE_MARKERS_GLOB,
    LABELS_DIR,
    NAMES_FILE,
    SUGGESTIONS_FILE,
    VOCABULARY_FILE,
    feature_key_of,
    features_dir,
)
from imgclust.io.manifest import read_manifest
from imgclust.io.sources import read_uri
from imgclust.io.store import Store
from imgclust.models.labels import load_model_cached, read_labels
from imgclust.models.model import extract_config_of
from imgclust.models.report import load_cluster_names

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of a {label}.",)
SUGGESTION_COLUMNS = ("cluster_id", "name", "confidence", "runner_up", "runner_up_confidence", "cosine", "margin",
                      "agreement", "members", "model_id", "backbone")
_EMBED_BATCH = 64
_READ_THREADS = 4


@dataclass(frozen=True)
class NamingConfig:
    """How names are suggested (see the module docstring).

    Attributes:
        vocabulary: path or URL of the vocabulary; None reads :data:`VOCABULARY_FILE` at the store root.
        templates: prompt templates, each with ``{label}``; several are averaged (prompt ensembling).
        extractor_key: stored features to use (default: the model's own).
        backbone: open_clip entry that embeds a sample of each cluster when the features are not CLIP's.
        weights: weights of the CLIP model (default: those the features were extracted with, or the
            backbone's default).
        seed: seed of a random-init CLIP (``weights="random"`` with ``backbone``) and of the samples.
        sample_per_cluster: members embedded per cluster with ``backbone``.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    vocabulary: str | None = None
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    extractor_key: str | None = None
    backbone: str | None = None
    weights: str | None = None
    seed: int = 0
    sample_per_cluster: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))  # lists from JSON / Prefect parameters
        if not self.templates or any("{label}" not in t for t in self.templates):
            raise ConfigError(f"every prompt template needs a '{{label}}' placeholder, got {list(self.templates)!r}")
        if isinstance(self.sample_per_cluster, bool) or not 1 <= self.sample_per_cluster <= 100_000:
            raise ConfigError(f"sample_per_cluster must be in [1, 100000], got {self.sample_per_cluster!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.backbone is not None and self.extractor_key is not None:
            raise ConfigError("name either stored features (extractor_key) or a backbone to embed samples, not both")


@dataclass(frozen=True)
class Suggestion:
    """The proposed name of one cluster (fields as the CSV columns; see the module docstring)."""

    cluster_id: int
    name: str
    confidence: float
    runner_up: str
    runner_up_confidence: float
    cosine: float
    margin: float
    agreement: float
    members: int


@dataclass(frozen=True)
class NamingResult:
    """Suggestions for one model and where the embeddings came from."""

    model_id: str
    backbone: str
    weights_id: str
    source: str  # "features/<key>" or "sample of <= n members per cluster"
    logit_scale: float
    vocabulary_size: int
    templates: tuple[str, ...]
    suggestions: list[Suggestion] = field(default_factory=list)


# ---- vocabulary ------------------------------------------------------------------------------
def read_vocabulary(store: Store, path: str | None = None) -> list[str]:
    """The labels of ``path`` (None: :data:`VOCABULARY_FILE` at the store root), in file order.

    Raises:
        ConfigError: the file is missing, not UTF-8, has fewer than two labels, or repeats one
            (case-insensitively; the message names both lines).
    """
    where = store.uri(VOCABULARY_FILE) if path is None else path
    try:
        raw = store.read_bytes(VOCABULARY_FILE) if path is None else read_uri(path)
    except (StoreError, OSError) as err:
        raise ConfigError(f"no vocabulary: {where} cannot be read ({err}); write one label per line there "
                          f"(e.g. 'dog', 'beach', 'receipt') or pass --vocabulary PATH") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"vocabulary {where} is not UTF-8 text ({err})") from err
    labels: list[str] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        label = line.strip()
        if not label or label.startswith("#"):
            continue
        if label.casefold() in seen:
            raise ConfigError(f"vocabulary {where}: {label!r} on line {n} repeats line {seen[label.casefold()]}")
        seen[label.casefold()] = n
        labels.append(label)
    if len(labels) < 2:
        raise ConfigError(f"vocabulary {where} has {len(labels)} label(s); at least two are needed to rank names "
                          "(one label a line; blank lines and '#' comments are skipped)")
    return labels


# ---- scoring ---------------------------------------------------------------------------------
class ClusterScorer:
    """Streams ``(cluster ids, image embeddings)`` batches and ranks ``labels`` per cluster.

    ``text``: ``(L, D)`` L2-normalised label embeddings; ``logit_scale``: CLIP's temperature.
    """

    def __init__(self, labels: Sequence[str], text: np.ndarray, logit_scale: float) -> None:
        if text.ndim != 2 or text.shape[0] != len(labels):
            raise ConfigError(f"{len(labels)} labels need a ({len(labels)}, D) text embedding, got {text.shape}")
        self.labels = list(labels)
        self.text = np.asarray(text, np.float32)
        self.logit_scale = float(logit_scale)
        self._sums: dict[int, np.ndarray] = {}
        self._votes: dict[int, np.ndarray] = {}

    def add(self, cluster_ids: np.ndarray, X: np.ndarray) -> None:
        """Add ``X`` ``(n, D)`` image embeddings of members of ``cluster_ids`` ``(n,)`` (rows of id < 0 are ignored)."""
        if X.ndim != 2 or X.shape[1] != self.text.shape[1]:
            raise ConfigError(f"image embeddings are {X.shape[1:]}-d but the text embeddings {self.text.shape[1]}-d: "
                              "the two towers are not of one CLIP model")
        keep = cluster_ids >= 0
        if not keep.any():
            return
        cids, Xk = cluster_ids[keep], np.asarray(X[keep], np.float32)
        Xn = Xk / np.maximum(np.linalg.norm(Xk, axis=1, keepdims=True), 1e-12)
        best = np.argmax(Xn @ self.text.T, axis=1)
        for c in np.unique(cids):
            rows = cids == c
            key = int(c)
            if key not in self._sums:
                self._sums[key] = np.zeros(Xn.shape[1], np.float64)
                self._votes[key] = np.zeros(len(self.labels), np.int64)
            self._sums[key] += Xn[rows].sum(axis=0, dtype=np.float64)
            self._votes[key] += np.bincount(best[rows], minlength=len(self.labels))

    def suggestions(self) -> list[Suggestion]:
        """One :class:`Suggestion` per cluster seen, by cluster id."""
        out = []
        for c in sorted(self._sums):
            mean = self._sums[c]
            centroid = mean / max(float(np.linalg.norm(mean)), 1e-12)
            cos = self.text.astype(np.float64) @ centroid
            logits = self.logit_scale * cos
            prob = np.exp(logits - logits.max())
            prob /= prob.sum()
            first, second = np.argsort(-cos, kind="stable")[:2]
            members = int(self._votes[c].sum())
            out.append(Suggestion(
                cluster_id=c, name=self.labels[first], confidence=float(prob[first]),
                runner_up=self.labels[second], runner_up_confidence=float(prob[second]), cosine=float(cos[first]),
                margin=float(cos[first] - cos[second]), agreement=float(self._votes[c][first] / max(members, 1)),
                members=members))
        return out


# ---- where the image embeddings come from ---------------------------------------------------------
def features_metadata(store: Store, key: str) -> dict[str, str]:
    """Key-value metadata of the first done feature shard of ``key`` (extractor name, weights id, ...).

    Raises:
        StoreError: ``key`` has no done shard.
    """
    shards = done_shards(store, key)
    if not shards:
        raise StoreError(f"no finished feature shards under {store.uri(features_dir(key))}")
    schema = store.read_parquet(feature_path(key, shards[0]), columns=["image_id"]).schema
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def clip_feature_keys(store: Store) -> list[str]:
    """Feature keys of the store whose extractor is a CLIP-family (open_clip) backbone."""
    from imgclust.extract.backbones.openclip_text import is_openclip_backbone

    keys = sorted({feature_key_of(rel) for rel in store.glob(ALL_FEATURE_MARKERS_GLOB)})
    return [k for k in keys if is_openclip_backbone(features_metadata(store, k).get("extractor", ""))]


def _weights_of_features(store: Store, model_id: str, key: str, meta: dict[str, str], config: NamingConfig
                         ) -> tuple[str | None, int]:
    """``(weights, seed)`` that rebuild the model the features of ``key`` came from."""
    if config.weights is not None:
        return config.weights, config.seed
    weights_id = meta.get("weights_id", "")
    if weights_id.startswith("random-seed"):
        return "random", int(weights_id[len("random-seed"):])
    if weights_id.startswith("pretrained:"):
        return "pretrained", config.seed
    if key == load_model_cached(store, model_id).extractor_key:
        try:
            recorded = extract_config_of(store, model_id)
        except CorruptArtifactError:
            recorded = None
        if recorded is not None and recorded.extractor == meta.get("extractor") and recorded.weights:
            return recorded.weights, recorded.seed
    raise ConfigError(f"{features_dir(key)} were extracted with the weights file {weights_id!r}; pass that file with "
                      "--weights PATH so the text tower is built from the same weights")


def _members(store: Store, model_id: str) -> dict[str, int]:
    """image_id -> stable cluster id of the model's labelled, non-novel images."""
    labels = read_labels(store, model_id).select(["image_id", "cluster_id"])
    labels = labels.filter(pc.greater_equal(labels.column("cluster_id"), 0))
    if labels.num_rows == 0:
        raise StoreError(f"model {model_id} has no labels outside the novel group in {store.uri(LABELS_DIR)}; "
                         "label images first")
    return dict(zip(labels.column("image_id").to_pylist(), labels.column("cluster_id").to_pylist(), strict=True))


def _score_stored(store: Store, key: str, members: dict[str, int], scorer: ClusterScorer) -> None:
    for ids, X in iter_feature_batches(store, key):
        cids = np.fromiter((members.get(i, -1) for i in ids), np.int64, len(ids))
        scorer.add(cids, X)


def _score_sampled(store: Store, backbone: Any, members: dict[str, int], config: NamingConfig,
                   scorer: ClusterScorer, storage_options: dict[str, Any] | None) -> None:
    """Embed a seeded sample of each cluster's members (sorted by image id) with ``backbone``'s image tower."""
    by_cluster: dict[int, list[str]] = {}
    for iid in sorted(members):
        by_cluster.setdefault(members[iid], []).append(iid)
    picked = [(c, ids[j]) for c, ids in sorted(by_cluster.items()) for j in np.sort(np.random.default_rng(
        (config.seed, c + 1)).choice(len(ids), size=min(len(ids), config.sample_per_cluster), replace=False))]
    manifest = read_manifest(store, columns=["image_id", "uri"])
    manifest = manifest.filter(pc.is_in(manifest.column("image_id"), value_set=pa.array([i for _, i in picked],
                                                                                         pa.string())))
    uris = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("uri").to_pylist(), strict=True))
    prep = backbone.preprocessing

    def load(iid: str) -> Any:
        try:
            arr = decode_image(read_uri(uris[iid], storage_options), mode=prep.mode, target_side=prep.resize_size)
        except (KeyError, OSError, ValueError, ImageDecodeError) as err:
            log.debug("naming sample: %s unusable: %s", iid, err)
            return None
        return backbone.preprocess(arr)

    import torch

    failed = 0
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        for start in range(0, len(picked), _EMBED_BATCH):
            chunk = picked[start:start + _EMBED_BATCH]
            tensors = list(pool.map(load, [i for _, i in chunk]))
            ok = [n for n, t in enumerate(tensors) if t is not None]
            failed += len(chunk) - len(ok)
            if ok:
                X = backbone.embed(torch.stack([tensors[n] for n in ok]))
                scorer.add(np.array([chunk[n][0] for n in ok], np.int64), X)
    if failed:
        log.warning("naming: %d of %d sampled images could not be read or decoded; left out", failed, len(picked))


def suggest_names(store: Store, model_id: str, config: NamingConfig = NamingConfig(),  # noqa: B008
                  storage_options: dict[str, Any] | None = None) -> NamingResult:
    """Rank the vocabulary for every cluster of ``model_id`` (see the module docstring); writes nothing.

    Raises:
        ConfigError: no or a bad vocabulary, features that are not CLIP's without ``backbone``, a backbone
            that is not CLIP-family, or towers of different weights.
        StoreError: the model has no labels or the features no done shard.
    """
    from imgclust.devices import resolve_device_name as resolve_device
    from imgclust.extract.backbones import create_backbone
    from imgclust.extract.backbones.openclip_text import (
        build_text_tower,
        check_same_weights,
        is_openclip_backbone,
    )

    vocabulary = read_vocabulary(store, config.vocabulary)
    members = _members(store, model_id)
    device = resolve_device(config.device)
    if config.backbone is not None:
        if not is_openclip_backbone(config.backbone):
            raise ConfigError(f"--backbone {config.backbone!r} is not a CLIP-family (open_clip) backbone; names need "
                              "a model with a text tower, e.g. clip-vitb32")
        image = create_backbone(config.backbone, weights=config.weights, device=device, seed=config.seed)
        text = build_text_tower(config.backbone, weights=config.weights, seed=config.seed, device=device)
        check_same_weights(image.weights_id, text.weights_id, what=config.backbone)
        scorer = ClusterScorer(vocabulary, text.embed_labels(vocabulary, config.templates), text.logit_scale)
        _score_sampled(store, image, members, config, scorer, storage_options)
        source = f"sample of <= {config.sample_per_cluster} members per cluster"
    else:
        key = config.extractor_key or load_model_cached(store, model_id).extractor_key
        meta = features_metadata(store, key)
        extractor = meta.get("extractor", "")
        if not is_openclip_backbone(extractor):
            others = clip_feature_keys(store)
            hint = (f"pass --extractor-key {others[0]}" + (f" (or one of {others[1:]})" if others[1:] else "")
                    if others else "the store has no CLIP features")
            raise ConfigError(f"{features_dir(key)} come from {extractor or 'an unknown extractor'!r}, not a CLIP-family "
                              f"backbone, so their space has no text side; {hint}, or name a CLIP backbone "
                              "(--backbone clip-vitb32) to embed a sample of each cluster with it")
        weights, seed = _weights_of_features(store, model_id, key, meta, config)
        text = build_text_tower(extractor, weights=weights, seed=seed, device=device)
        check_same_weights(meta.get("weights_id", ""), text.weights_id, what=features_dir(key))
        scorer = ClusterScorer(vocabulary, text.embed_labels(vocabulary, config.templates), text.logit_scale)
        _score_stored(store, key, members, scorer)
        source = features_dir(key)
    result = NamingResult(model_id=model_id, backbone=text.name, weights_id=text.weights_id, source=source,
                          logit_scale=text.logit_scale, vocabulary_size=len(vocabulary),
                          templates=tuple(config.templates), suggestions=scorer.suggestions())
    log.info("suggested names for %d clusters of %s from %d labels (%s, %s)", len(result.suggestions), model_id,
             len(vocabulary), text.name, source)
    return result


# ---- the suggestions file and accepting it ----------------------------------------------------------
def write_suggestions(store: Store, result: NamingResult) -> str:
    """Write :data:`SUGGESTIONS_FILE` (atomic replace); returns its store-relative path."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUGGESTION_COLUMNS)
    for s in result.suggestions:
        writer.writerow([s.cluster_id, s.name, f"{s.confidence:.4f}", s.runner_up, f"{s.runner_up_confidence:.4f}",
                         f"{s.cosine:.4f}", f"{s.margin:.4f}", f"{s.agreement:.4f}", s.members, result.model_id,
                         result.backbone])
    store.write_bytes(SUGGESTIONS_FILE, buf.getvalue().encode("utf-8"))
    return SUGGESTIONS_FILE


def read_suggestions(store: Store) -> list[dict[str, Any]] | None:
    """Rows of :data:`SUGGESTIONS_FILE` (typed: ids and members int, scores float); None when absent.

    Raises:
        CorruptArtifactError: another header, or a row that does not parse (the message names the line).
    """
    if not store.exists(SUGGESTIONS_FILE):
        return None
    where = store.uri(SUGGESTIONS_FILE)
    reader = csv.DictReader(io.StringIO(store.read_bytes(SUGGESTIONS_FILE).decode("utf-8-sig"), newline=""))
    if tuple(reader.fieldnames or ()) != SUGGESTION_COLUMNS:
        raise CorruptArtifactError(f"{where}: the header must be {','.join(SUGGESTION_COLUMNS)}; "
                                   "rerun imgclust name-clusters")
    rows = []
    for row in reader:
        try:
            rows.append({**row, "cluster_id": int(row["cluster_id"]), "members": int(row["members"]),
                         **{k: float(row[k]) for k in ("confidence", "runner_up_confidence", "cosine", "margin",
                                                       "agreement")}})
        except (TypeError, ValueError) as err:
            raise CorruptArtifactError(f"{where} line {reader.line_num}: {err}; rerun imgclust name-clusters") from err
    return rows


def suggestions_table(store: Store, model_id: str) -> list[dict[str, Any]] | None:
    """The suggestions for ``model_id`` beside the current names (``current_name``, "" when unnamed), for
    reports and flow artifacts; None when there are none or they were made for another model."""
    rows = read_suggestions(store)
    if rows is None or not rows:
        return None
    if any(r["model_id"] != model_id for r in rows):
        log.info("%s holds suggestions for model %s, not %s", SUGGESTIONS_FILE, rows[0]["model_id"], model_id)
        return None
    names = load_cluster_names(store)
    return [{**r, "current_name": names.get(r["cluster_id"], "")} for r in rows]


def _names_file_ids(store: Store) -> list[int]:
    """Every cluster id with a row in ``cluster_names.csv`` (named or not); the file is validated first."""
    load_cluster_names(store)
    if not store.exists(NAMES_FILE):
        return []
    rows = csv.reader(io.StringIO(store.read_bytes(NAMES_FILE).decode("utf-8-sig"), newline=""))
    next(rows, None)
    return [int(r[0].strip()) for r in rows if any(cell.strip() for cell in r)]


def accept_suggestions(store: Store, model_id: str, *, min_confidence: float = 0.0) -> dict[str, Any]:
    """Copy the suggestions for ``model_id`` with ``confidence >= min_confidence`` into ``cluster_names.csv``.

    Clusters that already have a name there keep it; rows without a name (a template's) are filled.
    The file is rewritten sorted by id. Returns ``{"accepted": {id: name}, "kept": {id: human name},
    "below": [ids under min_confidence], "path": NAMES_FILE}``.

    Raises:
        ConfigError: ``min_confidence`` outside [0, 1], no suggestions, or suggestions for another model.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"--min-confidence must be in [0, 1], got {min_confidence}")
    rows = read_suggestions(store)
    if not rows:
        raise ConfigError(f"no suggestions in {store.uri(SUGGESTIONS_FILE)}; run imgclust name-clusters first")
    made_for = {r["model_id"] for r in rows}
    if made_for != {model_id}:
        raise ConfigError(f"{store.uri(SUGGESTIONS_FILE)} was made for model {', '.join(sorted(made_for))}, not "
                          f"{model_id}; rerun imgclust name-clusters for it")
    human = load_cluster_names(store)
    accepted: dict[int, str] = {}
    kept: dict[int, str] = {}
    below: list[int] = []
    for r in rows:
        cid = r["cluster_id"]
        if cid in human:
            kept[cid] = human[cid]
        elif r["confidence"] < min_confidence:
            below.append(cid)
        else:
            accepted[cid] = r["name"]
    if accepted:
        merged = {cid: "" for cid in _names_file_ids(store)} | human | accepted
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["cluster_id", "name"])
        writer.writerows([cid, merged[cid]] for cid in sorted(merged))
        store.write_bytes(NAMES_FILE, buf.getvalue().encode("utf-8"))
    log.info("accepted %d suggested names (kept %d human names, %d below confidence %.2f)", len(accepted),
             len(kept), len(below), min_confidence)
    return {"accepted": accepted, "kept": kept, "below": sorted(below), "path": NAMES_FILE}


def suggestions_html(store: Store, model_id: str) -> list[str]:
    """The report's "Suggested names" section (escaped HTML lines); nothing without suggestions for the model."""
    rows = suggestions_table(store, model_id)
    if rows is None:
        return []
    e = html.escape
    note = (f"Proposed by {rows[0]['backbone']} in {SUGGESTIONS_FILE} (text-image similarity of each cluster's "
            "mean image embedding to the vocabulary; confidence = CLIP's softmax over the vocabulary; agreement = "
            "share of members whose own best label it is). Accept with: imgclust name-clusters --store STORE "
            "--accept [--min-confidence C]; names already in cluster_names.csv are kept.")
    out = ["<h2>Suggested names</h2>", f'<p class="note">{e(note)}</p>',
           "<table><tr><th>cluster</th><th>current name</th><th>suggestion</th><th>confidence</th>"
           "<th>runner-up</th><th>agreement</th><th>members</th></tr>"]
    for r in rows:
        out.append(f"<tr><td>{r['cluster_id']}</td><td>{e(r['current_name'])}</td><td>{e(r['name'])}</td>"
                   f"<td>{r['confidence']:.3f}</td><td>{e(r['runner_up'])} ({r['runner_up_confidence']:.3f})</td>"
                   f"<td>{r['agreement']:.0%}</td><td>{r['members']}</td></tr>")
    out.append("</table>")
    return out
