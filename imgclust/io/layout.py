"""The store layout: every path of an imgclust store, relative to its root, built here and nowhere else.

One function (or constant) per kind of path; the library builds its paths with them and flows/tasks never
build any (``tests/test_layering.py``). The strings are a contract: stores written by earlier versions read
unchanged, so a function here changes only together with a migration.

::

    manifest/date=YYYY-MM-DD/part-<run>.parquet           manifest_part(date, run)
    features/<key>/shard-<id>.parquet                      feature_path(key, id)       image_id + embedding (D,)
    features/<key>/shard-<id>.json                         marker_path(key, id)        done-marker, written last
    quarantine/<key>/shard-<id>.parquet                    quarantine_path(key, id)    unusable images + reason
    models/<model_id>/                                     model_dir(model_id)         one immutable version:
        reducer/ umap/ clusterer/ novelty/ tree/               model_part(model_id, name)  estimator folders
        model_arrays.npz                                       model_arrays(model_id)      centroids, thresholds, ids
        model.json                                             model_json(model_id)        last: version complete
        metrics.json  gate.json                                model_metrics, model_gate   evaluation, promotion
    models/CURRENT                                         CURRENT                     the promoted model id
    labels/<model_id>/date=YYYY-MM-DD/shard-<id>.parquet   labels_path(model_id, date, id)
    near_duplicates/<key>/groups.parquet  meta.json        groups_path(key), near_duplicates_meta_path(key)
    near_duplicates/<key>/arrivals/shard-<id>.parquet      arrivals_path(key, id)      nightly flags
    novelty/<model_id>/date=YYYY-MM-DD/                    candidates_dir(model_id, date)
        candidates.json  candidate-<i>.png                     candidates_path, candidate_montage_path
    refine/<run>/train.npz  refine/<run>/checkpoints/      training_set_path(run), refine_checkpoints(run)
    deep/<run>/                                            deep_model_dir(run)         trained deep estimator
    reports/<run>/index.html + PNGs                        report_dir(run)
    scratch/pca/<key>/<token>.npz                          pca_statistics_path(key, token)
    locks/<name>.json                                      store leases (:mod:`imgclust.io.lock`)
    cluster_names.csv  cluster_names_suggested.csv         NAMES_FILE, SUGGESTIONS_FILE
    labels_vocabulary.txt                                  VOCABULARY_FILE

``<key>`` is an extractor key (``Backbone.key()``), ``<id>`` a shard id (``<date>_<run>_<index>``), ``<run>`` a
run id of letters, digits, ``_ . -``. Globs over these trees (``*_glob``) and the parsers of listed paths
(:func:`parse_manifest_part`, :func:`shard_id_of`, :func:`feature_key_of`) live here too.
"""
from __future__ import annotations

import datetime as dt
import re

__all__ = [
    "ALL_FEATURE_MARKERS_GLOB", "CURRENT", "LABELS_DIR", "MANIFEST_PARTS_GLOB", "MODELS_DIR", "NAMES_FILE",
    "SUGGESTIONS_FILE", "VOCABULARY_FILE", "arrivals_path", "candidate_montage_path", "candidates_dir",
    "candidates_glob", "candidates_path", "deep_model_dir", "feature_key_of", "feature_markers_glob",
    "feature_path", "features_dir", "groups_path", "label_shards_glob", "labels_path", "manifest_part",
    "marker_path", "model_arrays", "model_dir", "model_gate", "model_json", "model_metrics", "model_part",
    "near_duplicates_meta_path", "parse_manifest_part", "pca_statistics_path", "quarantine_dir",
    "quarantine_path", "refine_checkpoints", "report_dir", "shard_id_of", "training_set_path",
]

# ---- manifest ----------------------------------------------------------------------------------------
MANIFEST_PARTS_GLOB = "manifest/date=*/part-*.parquet"
_MANIFEST_PART_RE = re.compile(r"^manifest/date=(\d{4}-\d{2}-\d{2})/part-([A-Za-z0-9_.-]+)\.parquet$")


def manifest_part(date: dt.date, run_id: str) -> str:
    """One ingestion run's manifest part (immutable once written)."""
    return f"manifest/date={date.isoformat()}/part-{run_id}.parquet"


def parse_manifest_part(rel: str) -> tuple[str, str] | None:
    """``(YYYY-MM-DD, run id)`` of a manifest part path; None when ``rel`` is not one."""
    m = _MANIFEST_PART_RE.match(rel)
    return (m.group(1), m.group(2)) if m else None


# ---- features and quarantine ---------------------------------------------------------------------------
ALL_FEATURE_MARKERS_GLOB = "features/*/shard-*.json"
"""Done-markers of every extractor key (:func:`feature_key_of` gives each one's key)."""


def features_dir(key: str) -> str:
    return f"features/{key}"


def feature_path(key: str, shard_id: str) -> str:
    """Feature shard: ``image_id`` + ``embedding`` fixed_size_list<float32>[D]."""
    return f"features/{key}/shard-{shard_id}.parquet"


def marker_path(key: str, shard_id: str) -> str:
    """Done-marker of a feature shard (written last)."""
    return f"features/{key}/shard-{shard_id}.json"


def feature_markers_glob(key: str) -> str:
    return f"features/{key}/shard-*.json"


def feature_key_of(rel: str) -> str:
    """Extractor key of a path under ``features/``."""
    return rel.split("/")[1]


def quarantine_dir(key: str) -> str:
    return f"quarantine/{key}"


def quarantine_path(key: str, shard_id: str) -> str:
    """Images of a shard that could not be used, with ``error_kind`` + message."""
    return f"quarantine/{key}/shard-{shard_id}.parquet"


def shard_id_of(rel: str) -> str:
    """Shard id of a ``.../shard-<id>.<ext>`` path (feature shard, marker, label or arrivals file)."""
    return rel.rsplit("/shard-", 1)[1].rsplit(".", 1)[0]


# ---- models ------------------------------------------------------------------------------------------
MODELS_DIR = "models"
CURRENT = "models/CURRENT"
"""Holds the promoted model id (replaced atomically)."""


def model_dir(model_id: str) -> str:
    return f"models/{model_id}"


def model_json(model_id: str) -> str:
    """The version's description, written last: its presence means the version is complete."""
    return f"models/{model_id}/model.json"


def model_part(model_id: str, name: str) -> str:
    """Estimator folder ``name`` (reducer, umap, clusterer, novelty, tree) of a model version."""
    return f"models/{model_id}/{name}"


def model_arrays(model_id: str) -> str:
    return f"models/{model_id}/model_arrays.npz"


def model_metrics(model_id: str) -> str:
    return f"models/{model_id}/metrics.json"


def model_gate(model_id: str) -> str:
    return f"models/{model_id}/gate.json"


def pca_statistics_path(key: str, token: str) -> str:
    """Scratch PCA statistics of a group of feature shards (deleted once the model is saved)."""
    return f"scratch/pca/{key}/{token}.npz"


# ---- labels --------------------------------------------------------------------------------------------
LABELS_DIR = "labels"


def labels_path(model_id: str, date: dt.date, shard_id: str) -> str:
    """Labels of one feature shard, under the ingestion date of its manifest part."""
    return f"labels/{model_id}/date={date.isoformat()}/shard-{shard_id}.parquet"


def label_shards_glob(model_id: str) -> str:
    return f"labels/{model_id}/date=*/shard-*.parquet"


# ---- near-duplicates -----------------------------------------------------------------------------------
def groups_path(key: str) -> str:
    return f"near_duplicates/{key}/groups.parquet"


def near_duplicates_meta_path(key: str) -> str:
    return f"near_duplicates/{key}/meta.json"


def arrivals_path(key: str, shard_id: str) -> str:
    """Nightly near-duplicate flags of one new feature shard's images."""
    return f"near_duplicates/{key}/arrivals/shard-{shard_id}.parquet"


# ---- novelty -------------------------------------------------------------------------------------------
def candidates_dir(model_id: str, date: dt.date) -> str:
    """Store folder of one night's candidate new clusters."""
    return f"novelty/{model_id}/date={date.isoformat()}"


def candidates_path(model_id: str, date: dt.date) -> str:
    return f"{candidates_dir(model_id, date)}/candidates.json"


def candidate_montage_path(model_id: str, date: dt.date, index: int) -> str:
    return f"{candidates_dir(model_id, date)}/candidate-{index}.png"


def candidates_glob(model_id: str) -> str:
    """Every night's ``candidates.json`` of a model (sorted paths are sorted by date)."""
    return f"novelty/{model_id}/date=*/candidates.json"


# ---- deep refinement, reports --------------------------------------------------------------------------
def training_set_path(run: str) -> str:
    """A refine run's decoded training sample."""
    return f"refine/{run}/train.npz"


def refine_checkpoints(run: str) -> str:
    """A refine run's training checkpoints (local stores only: object stores cannot rename atomically)."""
    return f"refine/{run}/checkpoints"


def deep_model_dir(run: str) -> str:
    """The deep estimator a refine run trained (its encoder is the ``deep:<uri>`` extractor)."""
    return f"deep/{run}"


def report_dir(run: str) -> str:
    """An HTML report: ``index.html`` and its PNGs."""
    return f"reports/{run}"


# ---- files at the root ---------------------------------------------------------------------------------
NAMES_FILE = "cluster_names.csv"
"""Human cluster names (``cluster_id,name``), edited by a person."""
SUGGESTIONS_FILE = "cluster_names_suggested.csv"
"""Names suggested by a CLIP model (:mod:`imgclust.models.naming`)."""
VOCABULARY_FILE = "labels_vocabulary.txt"
"""Words the suggestions are chosen from."""
