"""``imgclust`` console script: argument parsing, validation before any work, then the flows.

Prefect and Dask are imported only after the arguments validated, so ``--help`` and bad arguments
answer instantly. Without ``PREFECT_API_URL`` the flows run against an embedded Prefect API
(SQLite under ``$IMGCLUST_HOME/prefect``, default ``./.imgclust``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from imgclust.cluster.registry import list_methods
from imgclust.config import (
    AUTO_EXTRACTOR,
    RECOMMENDED_REFINE_METHOD,
    ClusterConfig,
    ExtractConfig,
    IngestConfig,
    PipelineConfig,
    ReduceConfig,
    RunnerConfig,
    validated,
)
from imgclust.exceptions import ConfigError, ImgclustError
from imgclust_cli.common import (
    add_execution_args,
    add_method_option_arg,
    choices_of,
    cluster_count,
    default_of,
    given,
    run_flow,
    runner_config,
)
from imgclust_cli.naming import add_naming_parser
from imgclust_cli.ops import add_ops_parsers
from imgclust_cli.serve import add_serve_parsers
from imgclust_cli.weights import add_weights_parser, choose_extractor, offline_env

log = logging.getLogger("imgclust.cli")


DEMO_CONSENSUS = 8
"""EM runs of the demo's GMM consensus, chosen by ``benchmarks/gmm_consensus.py`` on a *train* subset of raw
pixels, where the consensus scored a little above the mean single run."""
DEMO_REFINE = RECOMMENDED_REFINE_METHOD
"""The demo's default second stage: it beat the pixel recipe on the demo corpus within the demo's time
budget."""
DEMO_K = 10
"""The demo's k: its corpus (Fashion-MNIST, or scikit-learn's digits) has 10 classes, the number the published
results it is compared with use; `--k auto` shows the sweep instead."""
DEMO_REFINE_EPOCHS = 10
"""Its training epochs: what fits the demo's time budget; more epochs scored only slightly higher on a *train*
subset."""


def _add_pipeline_args(p: argparse.ArgumentParser, *, source: bool = True) -> None:
    if source:
        p.add_argument("source", help="folder or fsspec URL (s3://bucket/prefix) holding images")
    p.add_argument("--store", required=source, help="store root: folder or s3://bucket/prefix")
    g = p.add_argument_group("features")
    g.add_argument("--extractor", default=AUTO_EXTRACTOR,
                   help="backbone (see `imgclust backbones`), default %(default)s (auto: the best pretrained model "
                        "whose weights are cached or downloadable, raw pixels when none is; said in the output)")
    g.add_argument("--weights", default=default_of(ExtractConfig, "weights"),
                   help="imagenet | pretrained | random | PATH to a state_dict (default: backbone's; pretrained "
                        "weights download into the torch hub / Hugging Face cache unless --offline)")
    g.add_argument("--device", default=default_of(ExtractConfig, "device"),
                   choices=choices_of(ExtractConfig, "device"))
    g.add_argument("--batch-size", type=int, default=default_of(ExtractConfig, "batch_size"))
    g.add_argument("--shard-size", type=int, default=default_of(ExtractConfig, "shard_size"),
                   help="images per shard/task")
    g = p.add_argument_group("clustering")
    g.add_argument("--method", default=default_of(ClusterConfig, "method"), choices=list_methods(),
                   help="a registered clustering method")
    g.add_argument("--k", type=cluster_count, default=default_of(ClusterConfig, "k"),
                   help="number of clusters (kmeans/agglomerative/gmm/scan), or auto (default): a sweep over "
                        "--k-min..--k-max on a sample chooses it; the summary says which k and why")
    g.add_argument("--k-min", type=int, default=default_of(ClusterConfig, "k_min"), help="--k auto: smallest k tried")
    g.add_argument("--k-max", type=int, default=default_of(ClusterConfig, "k_max"),
                   help="--k auto: largest k tried (default grows with the corpus)")
    g.add_argument("--pca", type=int, default=default_of(ReduceConfig, "n_components"),
                   help="PCA components (0 = none)")
    g.add_argument("--reducer", default=default_of(ReduceConfig, "method"), choices=["ipca", "pca"],
                   help="ipca: IncrementalPCA streamed in one process; pca: exact PCA from per-shard statistics "
                        "summed on the Dask workers (default %(default)s)")
    g.add_argument("--kmeans-backend", default=default_of(ClusterConfig, "backend"),
                   choices=choices_of(ClusterConfig, "backend"),
                   help="faiss (CPU) or torch (GPU when present) k-means (default %(default)s)")
    g.add_argument("--umap", type=int, default=default_of(ReduceConfig, "umap_components"),
                   help="UMAP dimensions after PCA (hdbscan defaults to 10)")
    g.add_argument("--min-cluster-size", type=int, default=default_of(ClusterConfig, "min_cluster_size"),
                   help="hdbscan: smallest cluster; default: every HDBSCAN parameter chosen for the embedding "
                        "(imgclust.cluster.density)")
    g.add_argument("--consensus", type=int, default=None,
                   help="gmm: EM runs combined by evidence accumulation into the final mixture (default "
                        f"{default_of(ClusterConfig, 'consensus_runs')}; the demo's gmm: {DEMO_CONSENSUS})")
    g.add_argument("--scan-whiten", action="store_true",
                   help="scan: find neighbours after PCA whitening (helps learned representations, not pixels)")
    add_method_option_arg(g)
    g.add_argument("--novelty-rate", type=float, default=default_of(ClusterConfig, "novelty_rate"),
                   help="target false-novel rate the model's novelty threshold is calibrated to (default "
                        "%(default)s); nightly runs can override it with `imgclust label --novelty-rate`")
    g.add_argument("--seed", type=int, default=default_of(ClusterConfig, "seed"))
    g.add_argument("--date", default=default_of(PipelineConfig, "date"),
                   help="ingestion date partition YYYY-MM-DD (default today, UTC)")
    g.add_argument("--truth", default=default_of(PipelineConfig, "truth"),
                   choices=choices_of(PipelineConfig, "truth"),
                   help="parent_dir: folder names are classes; report ACC/NMI/ARI")
    add_execution_args(p)


def _pipeline_config(a: argparse.Namespace) -> tuple[PipelineConfig, RunnerConfig]:
    reduce = (validated(ReduceConfig, method="none", n_components=None, umap_components=a.umap) if a.pca == 0
              else validated(ReduceConfig, method=a.reducer, n_components=a.pca, umap_components=a.umap))
    cluster = validated(ClusterConfig, method=a.method, k=a.k, k_min=a.k_min, k_max=a.k_max,
                        min_cluster_size=a.min_cluster_size, seed=a.seed,
                        backend=a.kmeans_backend, device=a.device, scan_whiten=a.scan_whiten,
                        novelty_rate=a.novelty_rate, options=dict(a.cluster_option),
                        **given(consensus_runs=a.consensus))
    runner = runner_config(a)
    if a.source and "://" not in a.source:
        from imgclust.io.sources import open_source

        open_source(a.source)  # a missing folder is a ConfigError now, not inside the flow
    a.extractor_choice = choose_extractor(a) if a.extractor == AUTO_EXTRACTOR else None  # before any work
    extractor = a.extractor_choice.extractor if a.extractor_choice else a.extractor
    extract = validated(ExtractConfig, extractor=extractor, weights=a.weights, device=a.device,
                        batch_size=a.batch_size, shard_size=a.shard_size, seed=a.seed)
    cfg = validated(PipelineConfig, source=a.source, store=a.store, ingest=IngestConfig(), extract=extract,
                    reduce=reduce, cluster=cluster, truth=a.truth, date=a.date)
    _check_backbone(extract)  # unknown name or missing weights fail here; chosen weights download here
    return cfg, runner


def _check_backbone(extract: ExtractConfig) -> None:
    """Fail on an unknown backbone or missing weights now, before any cluster starts."""
    from imgclust.extract.shard import backbone_for

    backbone_for(extract)


def _print_summary(result: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    ex, b = result["extraction"], result["build"]
    m = b["metrics"]
    lines = [
        "",
        "imgclust run summary",
        f"  images ingested (new)   {result['ingest']['new']} (listed {result['ingest']['listed']}, "
        f"duplicates {result['ingest']['duplicates']})",
        f"  features / quarantined  {ex['features']} / {ex['quarantined']} {ex['error_kinds'] or ''}",
        f"  extractor               {ex['extractor_key']}",
        f"  extraction              {ex['images_per_second']} images/s over {ex['shards']} shards "
        f"({ex['shards_skipped']} already done)",
        f"  model                   {b['model_id']} ({len(m.get('cluster_sizes', {}))} clusters incl. -1=novel, "
        f"{m.get('n_novel', 0)} novel)",
    ]
    choice = _k_choice(result["store"], b["model_id"])
    if choice:
        lines.append(f"  clusters                {choice}")
    capped = _capped(result["store"], b["model_id"])
    if capped:
        lines.append(f"  capped (small corpus)   {capped}")
    for key in ("acc", "nmi", "ari", "internal_silhouette", "internal_davies_bouldin"):
        if key in m and m[key] is not None:
            lines.append(f"  {key:<23} {m[key]:.4f}")
    for k, v in (extra or {}).items():
        lines.append(f"  {k:<23} {v}")
    lines.append(f"  store                   {result['store']}  (labels/{b['model_id']}/, models/CURRENT)")
    lines.append(f"  wall time               {result['seconds']} s")
    print("\n".join(lines))


def _k_choice(store: str, model_id: str) -> str:
    """How the model got its number of clusters: ``--k auto``'s choice (``model.json``'s ``k_sweep``) as
    ``k of lo..hi by criterion: reason``, or HDBSCAN's count, parameters and noise share; empty when k was given."""
    from imgclust.io.store import Store
    from imgclust.models.model import model_info

    info = model_info(Store(store), model_id)
    sweep = info.get("k_sweep")
    if sweep:
        return f"{sweep['chosen']} of {min(sweep['ks'])}..{max(sweep['ks'])} by {sweep['criterion']}: {sweep['reason']}"
    if "noise_share" in info:
        from imgclust.models.report_model import hdbscan_summary

        return f"{info['n_clusters']} found by HDBSCAN {hdbscan_summary(info)}"
    return ""


def _capped(store: str, model_id: str) -> str:
    """What the fit capped to the corpus size (``model.json``'s ``capped``), as ``name asked -> used, ...``."""
    from imgclust.io.store import Store
    from imgclust.models.model import model_info

    values = model_info(Store(store), model_id).get("capped", {}).get("values", {})
    return ", ".join(f"{name} {v['asked']} -> {'none' if v['used'] is None else v['used']}"
                     for name, v in values.items())


def cmd_run(a: argparse.Namespace) -> int:
    cfg, runner = _pipeline_config(a)
    result = run_flow("flows.pipeline:pipeline", runner, config=cfg)
    choice = getattr(a, "extractor_choice", None)
    if a.json:
        print(json.dumps({**result, "extractor_choice": choice.reason if choice else None}, indent=1, default=str))
    else:
        _print_summary(result, {"extractor choice": choice.reason} if choice else None)
    return 0


def _demo_consensus(a: argparse.Namespace) -> int | None:
    """The demo's ``--consensus``: the user's value, else :data:`DEMO_CONSENSUS` runs for the gmm method."""
    if a.consensus is not None:
        return int(a.consensus)
    return DEMO_CONSENSUS if a.method == "gmm" else None


def cmd_demo(a: argparse.Namespace) -> int:
    from imgclust.data.datasets import build_demo_corpus

    if a.refine_epochs < 1:
        raise ConfigError("--refine-epochs must be >= 1")
    out = Path(a.out).resolve()
    corpus = build_demo_corpus(out / "corpus", limit=a.limit)
    args = argparse.Namespace(**{**vars(a), "source": corpus["path"], "store": str(out / "store"),
                                 "truth": "parent_dir", "consensus": _demo_consensus(a)})
    cfg, runner = _pipeline_config(args)
    result = run_flow("flows.pipeline:pipeline", runner, config=cfg)
    _print_summary(result, {"demo corpus": f"{corpus['dataset']}: {corpus['images']} PNG files in {corpus['path']}",
                            "recipe": f"{cfg.extract.extractor} features (no pretrained weights exist offline) -> "
                                      f"{cfg.recipe.describe()}"})
    if a.refine != "none":
        _demo_refine(a, args.store, cfg.cluster.k, runner)
    return 0


_REFINE_ENCODERS = {"n2d": "ConvAE", "n2d-scae": "SCAE", "n2d-ensemble": "pixels + 5 SCAE", "simclr": "SimCLR CNN"}


def _demo_refine(a: argparse.Namespace, store: str, k: int | str, runner: RunnerConfig) -> None:
    """The demo's optional second stage (``--refine n2d`` / ``n2d-scae`` / ``n2d-ensemble`` / ``simclr``): the refine flow trains
    an encoder (ConvAE, SCAE(s) or a SimCLR CNN) and the N2D stages (UMAP -> GMM consensus) on the corpus, clusters every image with it, and the promotion gate (tolerance 0) keeps it
    only if its NMI is not lower than the pixel model's."""
    encoder = _REFINE_ENCODERS[a.refine]
    default = " (the demo's default recipe; --refine none skips it)" if a.refine == DEMO_REFINE else ""
    print(f"\nrefining: training the {a.refine} deep recipe ({encoder} {a.refine_epochs} epochs -> UMAP -> GMM){default} "
          "on the corpus; the gate promotes it only if its NMI is not lower than the pixel model's", flush=True)
    t0 = time.perf_counter()
    res = run_flow("flows.refine:refine", runner, store=store, method=a.refine, k=k, epochs=a.refine_epochs,
                   truth="parent_dir", device=a.device, gate_tolerance=0.0)  # promoted only if NMI is not lower
    m = res["metrics"]
    lines = ["", "imgclust refine summary",
             f"  recipe                  {encoder} ({a.refine_epochs} epochs, {res['training']['n_train']} images, "
             f"{res['training']['train_seconds']} s) -> UMAP -> GMM k={m.get('n_clusters')}"
             f"{' (auto)' if k == 'auto' else ''}  [{a.refine}]",
             f"  model                   {res['model_id']}"]
    lines += [f"  {key:<23} {m[key]:.4f}" for key in ("acc", "nmi", "ari") if isinstance(m.get(key), float)]
    lines += [f"  promoted                {res['promoted']} ({res['gate']['reason']})",
              f"  CURRENT recipe          {'deep: ' + a.refine if res['promoted'] else 'raw pixels (above)'}",
              f"  wall time               {time.perf_counter() - t0:.0f} s"]
    print("\n".join(lines))


def cmd_backbones(a: argparse.Namespace) -> int:
    import importlib.util

    from imgclust.extract.backbones import backbone_infos

    extra_modules = {"foundation": ("timm", "open_clip")}  # what `pip install 'imgclust[<extra>]'` brings
    rows = [("NAME", "DIM", "INPUT", "DEFAULT", "WEIGHTS FROM")]
    notes = []
    for info in backbone_infos():
        source = info.weights_source or "-"
        if info.extra:
            missing = [m for m in extra_modules.get(info.extra, ()) if importlib.util.find_spec(m) is None]
            source += f"  [needs imgclust[{info.extra}]{': not installed' if missing else ''}]"
        rows.append((info.name, str(info.dim or "-"), str(info.input_size or "-"), info.default_weights, source))
        notes.append(info.description)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
        if i:
            print(f"    {notes[i - 1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclust", description="Cluster and auto-label image corpora "
                                     "(Prefect flows over Dask workers).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="ingest SOURCE into STORE, extract, cluster, label (the pipeline flow)",
                       description="Run the whole pipeline once: ingest -> extract -> IPCA -> cluster -> label.")
    _add_pipeline_args(p)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="build the offline demo corpus (Fashion-MNIST PNGs) and run the pipeline",
                       description="Writes real PNG files from Debian's dataset-fashion-mnist (or scikit-learn "
                                   "digits) and runs the pipeline flow embedded, reporting ACC/NMI.")
    p.add_argument("--out", default="demo", help="folder for corpus and store (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use a seeded subset of this many images")
    p.add_argument("--refine", default=DEMO_REFINE, choices=[*_REFINE_ENCODERS, "none"],
                   help="after the pixel pipeline, train this deep recipe (n2d: ConvAE -> UMAP -> GMM; n2d-scae: "
                        "SCAE -> UMAP -> GMM; n2d-ensemble: pixels + 5 SCAE encoders, one consensus; simclr: contrastive "
                        "CNN -> UMAP -> GMM) with the refine flow and promote it only if its NMI is not lower than the "
                        "pixel model's. Default %(default)s: it beat the pixel recipe on this demo within the demo's "
                        "~10-minute budget; none skips the stage")
    p.add_argument("--refine-epochs", type=int, default=DEMO_REFINE_EPOCHS,
                   help="encoder training epochs of the refine stage (default %(default)s: what fits the demo's "
                        "budget on 2 cores; more epochs scored only slightly higher on the train subset)")
    _add_pipeline_args(p, source=False)
    p.set_defaults(func=cmd_demo, umap=10, method="gmm", k=DEMO_K, store=None,
                   extractor=default_of(ExtractConfig, "extractor"))
    p = sub.add_parser("backbones", help="list feature extractors: embedding size, input size, weights source")
    p.set_defaults(func=cmd_backbones)
    add_ops_parsers(sub)
    add_serve_parsers(sub)
    add_weights_parser(sub)
    add_naming_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # the --method choices import the modules named in IMGCLUST_PLUGINS
    except ImgclustError as err:
        print(f"imgclust: error: {err}", file=sys.stderr)
        return 2
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "distributed", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with offline_env(bool(getattr(a, "offline", False))):
            return int(a.func(a))
    except ImgclustError as err:
        print(f"imgclust: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` or a pager that quit: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush of stdout would raise again
        return 0


if __name__ == "__main__":
    sys.exit(main())
