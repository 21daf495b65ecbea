"""``imgclust name-clusters``: a CLIP model suggests cluster names from a vocabulary; ``--accept`` copies them."""
from __future__ import annotations

import argparse
from typing import Any

from imgclust.config import ExtractConfig
from imgclust.exceptions import ConfigError
from imgclust_cli.common import choices_of, given, model_or_current


def add_naming_parser(sub: Any) -> None:
    """Register ``name-clusters`` on ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser(
        "name-clusters", help="suggest a name for each cluster from a vocabulary with a CLIP model; --accept them",
        description="Ranks the labels of a vocabulary (labels_vocabulary.txt at the store root, one label a line, "
                    "or --vocabulary PATH) for every cluster of the model (default CURRENT) by CLIP text-image "
                    "similarity, and writes cluster_names_suggested.csv at the store root (name, confidence, "
                    "runner-up, agreement per cluster). The image side is the model's stored features when a "
                    "CLIP backbone extracted them, else a sample of each cluster embedded with --backbone. "
                    "--accept copies the suggestions into cluster_names.csv, never replacing a name a person wrote.")
    p.add_argument("--store", required=True)
    p.add_argument("--model", default=None, help="model id (default: CURRENT)")
    p.add_argument("--vocabulary", default=None, help="vocabulary file (default: STORE/labels_vocabulary.txt)")
    p.add_argument("--template", action="append", default=[], metavar="TEXT",
                   help="prompt with {label} (repeatable: prompts are averaged; default 'a photo of a {label}.')")
    p.add_argument("--extractor-key", default=None, help="stored CLIP features to use (default: the model's own)")
    p.add_argument("--backbone", default=None,
                   help="CLIP backbone (e.g. clip-vitb32) that embeds a sample of each cluster's images, for models "
                        "whose features are not CLIP's")
    p.add_argument("--weights", default=None,
                   help="CLIP weights: pretrained | random | PATH (default: those the features came from)")
    # defaults None: NamingConfig's apply (importing imgclust.models.naming here would slow every command's start)
    p.add_argument("--sample-per-cluster", type=int, default=None, help="with --backbone (default 64)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=choices_of(ExtractConfig, "device"), default=None)
    p.add_argument("--accept", action="store_true",
                   help="copy the existing suggestions into cluster_names.csv (clusters a person named keep "
                        "their name) instead of computing them")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="with --accept: only suggestions at least this confident (default %(default)s)")
    p.set_defaults(func=cmd_name_clusters)


def cmd_name_clusters(a: argparse.Namespace) -> int:
    from imgclust.io.store import Store
    from imgclust.models.naming import (
        NamingConfig,
        accept_suggestions,
        suggest_names,
        suggestions_table,
        write_suggestions,
    )

    if a.min_confidence != 0.0 and not a.accept:
        raise ConfigError("--min-confidence applies to --accept")
    computing = ("vocabulary", "template", "extractor_key", "backbone", "weights")
    if a.accept and any(getattr(a, name) for name in computing):
        raise ConfigError("--accept copies the suggestions already written; run without --accept to compute new ones "
                          "(--vocabulary, --template, --extractor-key, --backbone, --weights)")
    store = Store(a.store)
    model_id = model_or_current(store, a.model)
    if a.accept:
        out = accept_suggestions(store, model_id, min_confidence=a.min_confidence)
        for cid, name in sorted(out["accepted"].items()):
            print(f"cluster {cid}: {name}  (accepted)")
        for cid, name in sorted(out["kept"].items()):
            print(f"cluster {cid}: {name}  (kept: named by a person)")
        for cid in out["below"]:
            print(f"cluster {cid}: left unnamed (confidence below {a.min_confidence})")
        print(f"{len(out['accepted'])} names written to {store.uri(out['path'])}")
        return 0
    config = NamingConfig(vocabulary=a.vocabulary, extractor_key=a.extractor_key, backbone=a.backbone,
                          weights=a.weights, **given(seed=a.seed, sample_per_cluster=a.sample_per_cluster,
                                                    device=a.device, templates=tuple(a.template) or None))
    result = suggest_names(store, model_id, config)
    path = write_suggestions(store, result)
    rows = suggestions_table(store, model_id) or []
    print(f"model {model_id}: names suggested by {result.backbone} ({result.source}, "
          f"{result.vocabulary_size} labels)")
    print("cluster  suggestion (confidence)  runner-up (confidence)  agreement  current name")
    for r in rows:
        print(f"{r['cluster_id']:>7}  {r['name']} ({r['confidence']:.3f})  {r['runner_up']} "
              f"({r['runner_up_confidence']:.3f})  {r['agreement']:.0%}  {r['current_name'] or '-'}")
    print(f"written to {store.uri(path)}; accept with: imgclust name-clusters --store {a.store} --accept "
          "[--min-confidence C]")
    return 0
