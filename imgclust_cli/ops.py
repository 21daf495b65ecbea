"""Operations subcommands: label, recluster, backfill, report, verify, dedup, serve, deploy."""
from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from imgclust.clusterers import list_methods
from imgclust.config import AUTO_K, ClusterConfig, ReduceConfig, RunnerConfig, validated
from imgclust.exceptions import ConfigError


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from err


def cluster_count(text: str) -> int | str:
    """``--k``'s value: ``auto`` (choose k by a sweep, :mod:`imgclust.choose_k`) or a number of clusters; anything
    else is passed on as given and refused by :class:`~imgclust.config.ClusterConfig` with the valid values."""
    if text.strip().lower() == AUTO_K:
        return AUTO_K
    try:
        return int(text)
    except ValueError:
        return text


def add_ops_parsers(sub: Any, add_exec: Any) -> None:
    """Register the operations subcommands on ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("label", help="nightly auto-label: ingest new images from SOURCE and label them",
                       description="One auto-label run: ingest what arrived since the last run, extract it with "
                                   "the CURRENT model's extractor, label it, flag novel images.")
    p.add_argument("source")
    p.add_argument("--store", required=True)
    p.add_argument("--date", type=_date, default=None, help="ingestion date partition (default today, UTC)")
    p.add_argument("--novelty-rate", type=float, default=None,
                   help="target false-novel rate of the calibrated novelty threshold (default: the model's, 0.05 "
                        "unless fitted otherwise); lower flags fewer images of known kinds")
    p.add_argument("--near-duplicate-threshold", type=float, default=None,
                   help="flag new images whose most similar stored image has at least this cosine similarity "
                        "(default: imgclust dedup's --threshold default)")
    p.add_argument("--no-near-duplicates", action="store_true", help="skip the near-duplicate check")
    add_exec(p)
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
    p.add_argument("--pca", type=int, default=None)
    p.add_argument("--umap", type=int, default=None)
    p.add_argument("--truth", default="none", choices=["none", "parent_dir"])
    p.add_argument("--gate-metric", default="internal_silhouette")
    p.add_argument("--gate-tolerance", type=float, default=0.02)
    add_exec(p)
    p.set_defaults(func=cmd_recluster)

    p = sub.add_parser("backfill", help="re-ingest / re-extract / re-label an ingestion date range",
                       description="Idempotent: repeating a backfill changes nothing unless --force.")
    p.add_argument("--store", required=True)
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date, required=True)
    p.add_argument("--redo", default="extract,label", help="comma list of ingest,extract,label")
    p.add_argument("--source", action="append", default=[], help="source to re-scan (with redo ingest)")
    p.add_argument("--extractor", default=None)
    p.add_argument("--force", action="store_true")
    add_exec(p)
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
    p.add_argument("--epochs", type=int, default=20, help="encoder (pre)training epochs (autoencoders, simclr)")
    p.add_argument("--max-iter", type=int, default=2000, help="fine-tuning steps (dec, idec, nnc)")
    p.add_argument("--k", type=cluster_count, default=AUTO_K,
                   help="clusters, or auto (default): train with the CURRENT model's k and choose k again on the "
                        "new features")
    p.add_argument("--sample", type=int, default=20000, help="training images sampled from the store")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--mode", choices=["L", "RGB"], default="L")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--truth", default="none", choices=["none", "parent_dir"])
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="override one of the method's parameters (repeatable; VALUE is read as JSON, else as a "
                        "string), e.g. --option encoder=resnet18 --option clusterer=scan for simclr")
    add_exec(p)
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("report", help="write reports/<run>/index.html for a model (default CURRENT)")
    p.add_argument("--store", required=True)
    p.add_argument("--model", default=None)
    p.set_defaults(func=cmd_report, workers=1, address=None, gpu_cluster=False)

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
                       description="Finds every image's nearest neighbours in the CURRENT model's feature space "
                                   "(cosine, exact faiss search) and groups pairs at or above --threshold "
                                   "(connected components); writes near_duplicates/<extractor>/groups.parquet.")
    p.add_argument("--store", required=True)
    p.add_argument("--threshold", type=float, default=0.98, help="cosine similarity, in (0, 1] (default %(default)s)")
    p.add_argument("--k", type=int, default=10, help="neighbours examined per image (default %(default)s)")
    p.add_argument("--rule", choices=["representative", "components"], default="representative",
                   help="representative: each group is one image and its neighbours (no chains); components: "
                        "connected components (single linkage) (default %(default)s)")
    p.add_argument("--extractor-key", default=None, help="feature space to search (default: the CURRENT model's)")
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("serve", help="serve the deployments (nightly, recluster, refine, backfill, pipeline)",
                       description="Serves the deployments of deployments/spec.py under a supervisor. Needs "
                                   "IMGCLUST_SOURCE and IMGCLUST_STORE (or --source/--store); schedules and the "
                                   "novelty automation are set by the IMGCLUST_* variables listed in "
                                   "deployments/spec.py. Without PREFECT_API_URL it starts `prefect server start` on "
                                   "--host:--port (UI and API there) and restarts it if it dies. With PREFECT_API_URL "
                                   "it exits with status 3 when that server stays unreachable for --server-grace "
                                   "seconds, and with status 4 when a process keeps dying.")
    p.add_argument("--source", default=None)
    p.add_argument("--store", default=None)
    p.add_argument("--host", default="127.0.0.1", help="address of the server it starts (default %(default)s)")
    p.add_argument("--port", type=int, default=4200, help="port of the server it starts (default %(default)s)")
    p.add_argument("--server-grace", type=float, default=300.0,
                   help="seconds the Prefect API may be unreachable before serve acts (default %(default)s)")
    p.add_argument("--check-interval", type=float, default=5.0, help="health-check period in seconds")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("deploy", help="register the deployments on a work pool (prefect deploy of prefect.yaml)",
                       description="Fills the defaults of unset IMGCLUST_* variables (deployments/spec.py), creates "
                                   "the process work pool IMGCLUST_WORK_POOL (default imgclust) if missing, and runs "
                                   "`prefect deploy --all` with deployments/prefect.yaml against PREFECT_API_URL. "
                                   "Then start a worker: `prefect worker start --pool imgclust`.")
    p.add_argument("--source", default=None)
    p.add_argument("--store", default=None)
    p.set_defaults(func=cmd_deploy)


def _runner(a: argparse.Namespace) -> RunnerConfig:
    kind = "address" if a.address else ("cuda" if a.gpu_cluster else "local")
    return validated(RunnerConfig, kind=kind, workers=a.workers, address=a.address)


def _run_flow(flow_path: str, runner: RunnerConfig | None, **params: Any) -> Any:
    from imgclust_cli.main import prefect_home, prepare_environment

    prepare_environment()
    import importlib

    from flows.runtime import dask_task_runner, embedded_prefect

    module, name = flow_path.rsplit(":", 1)
    flow = getattr(importlib.import_module(module), name)
    if runner is not None:
        flow = flow.with_options(task_runner=dask_task_runner(runner))
    with embedded_prefect(prefect_home()):
        return flow(**params)


def _print(result: Any) -> None:
    print(json.dumps(result, indent=1, default=str))


def cmd_label(a: argparse.Namespace) -> int:
    if a.novelty_rate is not None and not 0 < a.novelty_rate < 0.5:
        raise ConfigError(f"--novelty-rate must be in (0, 0.5), e.g. 0.05; got {a.novelty_rate}")
    from imgclust.dedup import DedupConfig

    if a.no_near_duplicates and a.near_duplicate_threshold is not None:
        raise ConfigError("--no-near-duplicates and --near-duplicate-threshold exclude each other")
    threshold = DedupConfig.threshold if a.near_duplicate_threshold is None else a.near_duplicate_threshold
    near = None if a.no_near_duplicates else DedupConfig(threshold=threshold).threshold  # validated before any work
    _print(_run_flow("flows.auto_label:auto_label", _runner(a), source=a.source, store=a.store, date=a.date,
                     novelty_rate=a.novelty_rate, near_duplicate_threshold=near))
    return 0


def recluster_cluster_config(a: argparse.Namespace) -> ClusterConfig | None:
    """The clustering recipe ``recluster`` is given: ``None`` (the flow keeps CURRENT's) without ``--method`` /
    ``--k``; with ``--k`` alone, CURRENT's recipe with that k (its method, seed, restarts, whitening kept); with
    ``--method``, that method's defaults and the given k / ``--scan-whiten``. Errors before any work."""
    if a.scan_whiten and a.method != "scan":  # a given method replaces CURRENT's recipe whole, so it must be scan
        raise ConfigError("--scan-whiten needs --method scan (a recipe given to recluster replaces the CURRENT one)")
    if a.method is not None:
        given = {"method": a.method, "k": a.k, "scan_whiten": a.scan_whiten or None}
        return validated(ClusterConfig, **{k: v for k, v in given.items() if v is not None})
    if a.k is None:
        return None
    from imgclust.model import cluster_config_of, current_model_id
    from imgclust.store import Store

    store = Store(a.store)
    model_id = current_model_id(store)
    if model_id is None:
        raise ConfigError(f"--k without --method changes the CURRENT model's k, but {store.uri('models/CURRENT')} "
                          "does not exist; pass --method too")
    return validated(ClusterConfig, **{**cluster_config_of(store, model_id).model_dump(), "k": a.k})


def cmd_recluster(a: argparse.Namespace) -> int:
    from imgclust.promotion import GateConfig

    GateConfig(metric=a.gate_metric, tolerance=a.gate_tolerance)  # validate before any work
    cluster = recluster_cluster_config(a)
    reduce = (validated(ReduceConfig, n_components=a.pca or ReduceConfig().n_components, umap_components=a.umap)
              if a.pca or a.umap else None)
    _print(_run_flow("flows.recluster:recluster", _runner(a), store=a.store, reduce=reduce, cluster=cluster,
                     truth=a.truth, gate_metric=a.gate_metric, gate_tolerance=a.gate_tolerance, reason="manual"))
    return 0


def cmd_backfill(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.backfill import BackfillParams

    try:
        params = BackfillParams(store=a.store, start=a.start, end=a.end, sources=a.source, force=a.force,
                                redo=[r.strip() for r in a.redo.split(",") if r.strip()], extractor=a.extractor)
    except ValidationError as err:
        raise ConfigError("invalid backfill: " + "; ".join(e["msg"] for e in err.errors())) from err
    _print(_run_flow("flows.backfill:backfill", _runner(a), **params.model_dump()))
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
        if getattr(a, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    from imgclust.deep.methods import check_deep_options

    options = parse_options(a.option)
    # with --k auto the method trains with CURRENT's k: the options are checked here with the smallest k, and again
    # by the flow with CURRENT's
    check_deep_options(a.method, ClusterConfig().k_min if a.k == AUTO_K else a.k, options)
    result = _run_flow("flows.refine:refine", _runner(a), store=a.store, method=a.method, k=a.k, epochs=a.epochs,
                       max_iter=a.max_iter, sample=a.sample, image_size=a.image_size, mode=a.mode, device=a.device,
                       truth=a.truth, options=options or None)
    m = result["metrics"]
    print(f"candidate {result['model_id']} ({a.method}): " + ", ".join(
        f"{key}={m[key]:.4f}" for key in ("acc", "nmi", "ari", "internal_silhouette") if isinstance(m.get(key), float)))
    print(f"promoted: {result['promoted']} ({result['gate']['reason']})")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    _print(_run_flow("flows.report:report", None, store=a.store, model_id=a.model))
    return 0


def cmd_labels(a: argparse.Namespace) -> int:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from imgclust.labels import labels_at_level
    from imgclust.model import current_model_id
    from imgclust.store import Store

    if a.out is not None and not a.out.endswith((".csv", ".parquet")):
        raise ConfigError(f"--out must end in .csv or .parquet, got {a.out!r}")
    store = Store(a.store)
    model_id = a.model or current_model_id(store)
    if model_id is None:
        raise ConfigError(f"no --model given and {store.uri('models/CURRENT')} does not exist")
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
    from imgclust.model import ClusterModel, current_model_id
    from imgclust.store import Store
    from imgclust.verify import verify_store

    store = Store(a.store)
    model_id = a.model or current_model_id(store)
    if model_id is None:
        raise ConfigError(f"no --model given and {store.uri('models/CURRENT')} does not exist")
    model = ClusterModel.load(store, model_id)
    report = verify_store(store, model.extractor_key, model_id=model_id)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_dedup(a: argparse.Namespace) -> int:
    from imgclust.dedup import DedupConfig

    DedupConfig(threshold=a.threshold, k=a.k, rule=a.rule)  # bad values: exit 2 before any work
    _print(_run_flow("flows.dedup:dedup", None, store=a.store, threshold=a.threshold, k=a.k, rule=a.rule,
                     extractor_key=a.extractor_key))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from imgclust_cli.main import prepare_environment
    from imgclust_cli.serve import ServeOptions, serve

    if not 0 < a.port < 65536 or a.server_grace <= 0 or a.check_interval <= 0:
        raise ConfigError("--port must be in 1..65535 and --server-grace, --check-interval positive")
    prepare_environment()
    return serve(a.source, a.store, ServeOptions(host=a.host, port=a.port, server_grace=a.server_grace,
                                                 check_interval=a.check_interval))


def cmd_deploy(a: argparse.Namespace) -> int:
    from imgclust_cli.main import prepare_environment
    from imgclust_cli.serve import deploy

    prepare_environment()
    return deploy(a.source, a.store)
