"""Operations subcommands: label, recluster, backfill, refine, report, labels, verify, dedup.

Options that set a field of a config model take their default from it (:func:`~imgclust_cli.common.default_of`),
or default to ``None`` so that the model's or the flow's own default applies (:func:`~imgclust_cli.common.given`).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from imgclust.cluster.registry import list_methods
from imgclust.config import AUTO_K, ClusterConfig, ExtractConfig, PipelineConfig, ReduceConfig, validated
from imgclust.exceptions import ConfigError
from imgclust.models.promotion import GateConfig
from imgclust_cli.common import (
    add_execution_args,
    add_method_option_arg,
    choices_of,
    cluster_count,
    date_arg,
    default_of,
    given,
    model_or_current,
    print_json,
    run_flow,
    runner_config,
)

_DEVICES = choices_of(ExtractConfig, "device")
_TRUTHS = choices_of(PipelineConfig, "truth")
_DEFAULT_TRUTH = default_of(PipelineConfig, "truth")


def add_ops_parsers(sub: Any) -> None:
    """Register the operations subcommands on ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("label", help="nightly auto-label: ingest new images from SOURCE and label them",
                       description="One auto-label run: ingest what arrived since the last run, extract it with "
                                   "the CURRENT model's extractor, label it, flag novel images.")
    p.add_argument("source")
    p.add_argument("--store", required=True)
    p.add_argument("--date", type=date_arg, default=None, help="ingestion date partition (default today, UTC)")
    p.add_argument("--novelty-rate", type=float, default=None,
                   help="target false-novel rate of the calibrated novelty threshold (default: the model's, 0.05 "
                        "unless fitted otherwise); lower flags fewer images of known kinds")
    p.add_argument("--near-duplicate-threshold", type=float, default=None,
                   help="flag new images whose most similar stored image has at least this cosine similarity "
                        "(default: imgclust dedup's --threshold default)")
    p.add_argument("--no-near-duplicates", action="store_true", help="skip the near-duplicate check")
    add_execution_args(p)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("recluster", help="refit on all stored features, keep stable ids, relabel, gate, promote")
    p.add_argument("--store", required=True)
    p.add_argument("--method", choices=list_methods(), default=None,
                   help="default: the CURRENT model's recipe")
    p.add_argument("--k", type=cluster_count, default=None,
                   help="a number of clusters or auto (a sweep chooses; stable ids follow through the lineage's "
                        "splits and merges); without --method: the CURRENT recipe with this k")
    p.add_argument("--scan-whiten", action="store_true", help="with --method scan: neighbours after PCA whitening "
                   "(a CURRENT scan model's own setting is kept when no --method is given)")
    add_method_option_arg(p)
    p.add_argument("--pca", type=int, default=None)
    p.add_argument("--umap", type=int, default=None)
    p.add_argument("--truth", default=_DEFAULT_TRUTH, choices=_TRUTHS)
    p.add_argument("--gate-metric", default=default_of(GateConfig, "metric"))
    p.add_argument("--gate-tolerance", type=float, default=default_of(GateConfig, "tolerance"))
    add_execution_args(p)
    p.set_defaults(func=cmd_recluster)

    p = sub.add_parser("backfill", help="re-ingest / re-extract / re-label an ingestion date range",
                       description="Idempotent: repeating a backfill changes nothing unless --force.")
    p.add_argument("--store", required=True)
    p.add_argument("--start", type=date_arg, required=True)
    p.add_argument("--end", type=date_arg, required=True)
    p.add_argument("--redo", default=None, help="comma list of ingest,extract,label")
    p.add_argument("--source", action="append", default=[], help="source to re-scan (with redo ingest)")
    p.add_argument("--extractor", default=None)
    p.add_argument("--force", action="store_true")
    add_execution_args(p)
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("refine", help="train a deep-clustering method on store images; candidate model + gate",
                       description="Trains the method on a sample of the store's images, extracts every image with "
                                   "its encoder, refits the clusterer (k-means; UMAP + GMM for n2d, n2d-scae, n2d-ensemble, simclr; "
                                   "SCAN after --option clusterer=scan) with stable ids, "
                                   "relabels, evaluates and promotes "
                                   "through the gate. Prints the candidate's metrics and whether it was promoted.")
    p.add_argument("--store", required=True)
    p.add_argument("--method", required=True, choices=["ascae", "scae", "convae", "n2d", "n2d-scae", "n2d-ensemble",
                                                           "simclr", "dec", "idec", "nnc", "deepcluster"])
    # defaults None: the refine flow's own defaults apply (cmd_refine passes only what was given)
    p.add_argument("--epochs", type=int, default=None, help="encoder (pre)training epochs (autoencoders, simclr)")
    p.add_argument("--max-iter", type=int, default=None, help="fine-tuning steps (dec, idec, nnc)")
    p.add_argument("--k", type=cluster_count, default=AUTO_K,
                   help="clusters, or auto (default): train with the CURRENT model's k and choose k again on the "
                        "new features")
    p.add_argument("--sample", type=int, default=None, help="training images sampled from the store")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--mode", choices=["L", "RGB"], default=None)
    p.add_argument("--device", choices=_DEVICES, default=None)
    p.add_argument("--truth", default=None, choices=_TRUTHS)
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="override one of the method's parameters (repeatable; VALUE is read as JSON, else as a "
                        "string), e.g. --option encoder=resnet18 --option clusterer=scan for simclr")
    add_execution_args(p)
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("report", help="write reports/<run>/index.html for a model (default CURRENT)")
    p.add_argument("--store", required=True)
    p.add_argument("--model", default=None)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("labels", help="export a model's labels (image, uri, cluster), optionally at a coarser level "
                       "of its cluster tree", description="Reads the label rows of a model (default CURRENT). With "
                       "--level N the cluster tree saved with the model is cut into N groups and each image gets its "
                       "group's id (the smallest stable id in the group): coarser or finer labels without refitting. "
                       "Writes --out (.csv or .parquet) or prints the cluster sizes.")
    p.add_argument("--store", required=True)
    p.add_argument("--model", default=None, help="model id (default CURRENT)")
    p.add_argument("--level", type=int, default=None, help="number of groups to cut the cluster tree into "
                   "(1..the model's cluster count; default: the model's own clusters)")
    p.add_argument("--out", default=None, help="write the rows to this .csv or .parquet file")
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser("verify", help="check that every image is in features or quarantine exactly once")
    p.add_argument("--store", required=True)
    p.add_argument("--model", default=None, help="also check this model's labels (default CURRENT)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("dedup", help="near-duplicate groups among the stored images (copies, crops, re-encodes)",
                       description="Finds every image's nearest neighbours in the CURRENT model's near-duplicate space "
                                   "(cosine, exact faiss search) and groups pairs at or above --threshold "
                                   "(connected components); writes near_duplicates/<extractor>/groups.parquet.")
    p.add_argument("--store", required=True)
    # defaults None: DedupConfig's apply (importing imgclust.models.dedup here would slow every command's start)
    p.add_argument("--threshold", type=float, default=None, help="cosine similarity, in (0, 1] (default 0.98)")
    p.add_argument("--k", type=int, default=None, help="neighbours examined per image (default 10)")
    p.add_argument("--rule", choices=["representative", "components"], default=None,
                   help="representative: each group is one image and its neighbours (no chains); components: "
                        "connected components (single linkage) (default representative)")
    p.add_argument("--extractor-key", default=None,
                   help="feature space to search (default: the CURRENT model's, or under a `deep:` model the newest "
                        "near-duplicate space of the store's models; a `deep:` encoder's space is refused)")
    p.set_defaults(func=cmd_dedup)


def cmd_label(a: argparse.Namespace) -> int:
    if a.novelty_rate is not None and not 0 < a.novelty_rate < 0.5:
        raise ConfigError(f"--novelty-rate must be in (0, 0.5), e.g. 0.05; got {a.novelty_rate}")
    from imgclust.models.dedup import DedupConfig

    if a.no_near_duplicates and a.near_duplicate_threshold is not None:
        raise ConfigError("--no-near-duplicates and --near-duplicate-threshold exclude each other")
    threshold = DedupConfig.threshold if a.near_duplicate_threshold is None else a.near_duplicate_threshold
    near = None if a.no_near_duplicates else DedupConfig(threshold=threshold).threshold  # validated before any work
    print_json(run_flow("flows.auto_label:auto_label", runner_config(a), source=a.source, store=a.store,
                        date=a.date, novelty_rate=a.novelty_rate, near_duplicate_threshold=near))
    return 0


def recluster_cluster_config(a: argparse.Namespace) -> ClusterConfig | None:
    """The clustering recipe ``recluster`` is given: ``None`` (the flow keeps CURRENT's) without ``--method`` /
    ``--k``; with ``--k`` alone, CURRENT's recipe with that k (its method, seed, restarts, whitening kept); with
    ``--method``, that method's defaults and the given k / ``--scan-whiten``. Errors before any work."""
    if a.scan_whiten and a.method != "scan":  # a given method replaces CURRENT's recipe whole, so it must be scan
        raise ConfigError("--scan-whiten needs --method scan (a recipe given to recluster replaces the CURRENT one)")
    if a.method is not None:
        return validated(ClusterConfig, **given(method=a.method, k=a.k, scan_whiten=a.scan_whiten or None,
                                                options=dict(a.cluster_option) or None))
    if a.cluster_option:
        raise ConfigError("--cluster-option needs --method (a recipe given to recluster replaces the CURRENT one)")
    if a.k is None:
        return None
    from imgclust.io.store import Store
    from imgclust.models.model import current_model_id, model_recipe

    store = Store(a.store)
    model_id = current_model_id(store)
    if model_id is None:
        raise ConfigError(f"--k without --method changes the CURRENT model's k, but {store.uri('models/CURRENT')} "
                          "does not exist; pass --method too")
    return validated(ClusterConfig, **{**model_recipe(store, model_id).cluster.model_dump(), "k": a.k})


def cmd_recluster(a: argparse.Namespace) -> int:
    from imgclust.models.promotion import GateConfig

    GateConfig(metric=a.gate_metric, tolerance=a.gate_tolerance)  # validate before any work
    cluster = recluster_cluster_config(a)
    reduce = (validated(ReduceConfig, n_components=a.pca or ReduceConfig().n_components, umap_components=a.umap)
              if a.pca or a.umap else None)
    print_json(run_flow("flows.recluster:recluster", runner_config(a), store=a.store, reduce=reduce, cluster=cluster,
                        truth=a.truth, gate_metric=a.gate_metric, gate_tolerance=a.gate_tolerance, reason="manual"))
    return 0


def cmd_backfill(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from imgclust.config import BackfillParams

    try:
        redo = None if a.redo is None else [r.strip() for r in a.redo.split(",") if r.strip()]
        params = BackfillParams(store=a.store, start=a.start, end=a.end, sources=a.source, force=a.force,
                                extractor=a.extractor, **given(redo=redo))
    except ValidationError as err:
        raise ConfigError("invalid backfill: " + "; ".join(e["msg"] for e in err.errors())) from err
    print_json(run_flow("flows.backfill:backfill", runner_config(a), **params.model_dump()))
    return 0


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["encoder=resnet18", "width=64"]`` -> ``{"encoder": "resnet18", "width": 64}`` (values JSON, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--option takes NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[name.strip()] = raw
    return out


def cmd_refine(a: argparse.Namespace) -> int:
    for name in ("epochs", "max_iter", "sample", "image_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    from imgclust.deep.methods import check_deep_options

    options = parse_options(a.option)
    # with --k auto a method that cannot choose k while training trains with CURRENT's k: the options are checked
    # here with the smallest k, and again by the flow with the k it trains with
    check_deep_options(a.method, default_of(ClusterConfig, "k_min") if a.k == AUTO_K else a.k, options)
    result = run_flow("flows.refine:refine", runner_config(a), store=a.store, method=a.method, k=a.k,
                      options=options or None, **given(epochs=a.epochs, max_iter=a.max_iter, sample=a.sample,
                                                      image_size=a.image_size, mode=a.mode, device=a.device,
                                                      truth=a.truth))
    m = result["metrics"]
    print(f"candidate {result['model_id']} ({a.method}): " + ", ".join(
        f"{key}={m[key]:.4f}" for key in ("acc", "nmi", "ari", "internal_silhouette") if isinstance(m.get(key), float)))
    print(f"promoted: {result['promoted']} ({result['gate']['reason']})")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    print_json(run_flow("flows.report:report", None, store=a.store, model_id=a.model))
    return 0


def cmd_labels(a: argparse.Namespace) -> int:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from imgclust.io.store import Store
    from imgclust.models.labels import labels_at_level

    if a.out is not None and not a.out.endswith((".csv", ".parquet")):
        raise ConfigError(f"--out must end in .csv or .parquet, got {a.out!r}")
    store = Store(a.store)
    model_id = model_or_current(store, a.model)
    table = labels_at_level(store, model_id, a.level)
    if a.out is not None:
        (pq.write_table if a.out.endswith(".parquet") else pcsv.write_csv)(table, a.out)
    counts = table.group_by("cluster_id").aggregate([("image_id", "count")]).sort_by("cluster_id")
    level = f"level {a.level}" if a.level is not None else "its own clusters"
    print(f"model {model_id}, {level}: {table.num_rows} images in {counts.num_rows} clusters"
          + (f"; written to {a.out}" if a.out else ""))
    for cid, n in zip(counts.column("cluster_id").to_pylist(), counts.column("image_id_count").to_pylist(),
                      strict=True):
        print(f"  cluster {cid:>6}  {n}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from imgclust.io.store import Store
    from imgclust.models.model import ClusterModel
    from imgclust.models.verify import verify_store

    store = Store(a.store)
    model_id = model_or_current(store, a.model)
    model = ClusterModel.load(store, model_id)
    report = verify_store(store, model.extractor_key, model_id=model_id)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_dedup(a: argparse.Namespace) -> int:
    from imgclust.models.dedup import DedupConfig

    cfg = DedupConfig(**given(threshold=a.threshold, k=a.k, rule=a.rule))  # bad values: exit 2 before any work
    print_json(run_flow("flows.dedup:dedup", None, store=a.store, threshold=cfg.threshold, k=cfg.k, rule=cfg.rule,
                        extractor_key=a.extractor_key))
    return 0

