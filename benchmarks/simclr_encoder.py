"""``simclr`` with another encoder (``ContrastiveClusterer(encoder=...)``), trained for a time budget, in two stages.

Stage A trains the library's :class:`~imgclust.deep.contrastive.ContrastiveClusterer` on a Fashion-MNIST split
in resumable steps of ``--epoch-step`` epochs (``epochs`` is a resumable parameter: each step continues the
last one's checkpoint) until the next step would pass ``--train-budget-s`` or ``--max-epochs`` is reached, so
the training length is set by the device time available, never by the labels. After each step it prints the
representation's kNN label agreement (fraction of the 1 / 20 nearest neighbours, cosine, sharing the class) over
``--agreement-queries`` seeded images, and at the end the agreement over every image and cosine k-means ACC / NMI
(labels only score). It then saves the L2-normalised representation as float16
in chunks of at most ``--chunk-rows`` rows (``reps-NN.npy``) and the labels (``y.npy``) to ``--out``.

Stage B runs ``simclr``'s own last stages on the representation, with the parameters
:class:`~imgclust.deep.embedding.EmbeddingClusterer` uses, once per clusterer of ``--stage-b``: UMAP(10, 20
neighbours, min_dist 0, the seed) and the 8-run GMM consensus (the default), the same UMAP and k-means, and
SCAN's head (:class:`~imgclust.cluster.scan.ScanClusterer`: ``scan`` with neighbours in the whitened space, as
``clusterer="scan"`` uses it, ``scan-raw`` without); it prints a row of ACC / NMI each. ``--from-reps DIR`` runs stage B
alone on a saved representation (when stage A ran on a machine whose time ran out before stage B).

    python benchmarks/simclr_encoder.py --split all --encoder resnet18 --width 32 --device cuda \\
        --train-budget-s 170 --out DIR
    python benchmarks/simclr_encoder.py --from-reps DIR
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from augment_choice import neighbour_agreement

log = logging.getLogger("benchmarks.simclr_encoder")


def _score(y: np.ndarray, pred: np.ndarray) -> str:
    from imgclust.metrics import cluster_accuracy, nmi

    return f"{cluster_accuracy(y, pred):.3f} / {nmi(y, pred):.3f}"


def stage_a(args: argparse.Namespace, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Train in steps within the budget; print one row per step; return the representation ``(N, D)`` float32."""
    from imgclust.cluster.classic import FaissKMeans
    from imgclust.deep.contrastive import ContrastiveClusterer

    rows: list[str] = []
    feats = np.empty((0, 0), dtype=np.float32)
    started = time.perf_counter()
    step_s = 0.0
    with tempfile.TemporaryDirectory(prefix="imgclust-simclr-encoder-") as ckpt:
        epochs = 0
        while epochs + args.epoch_step <= args.max_epochs:
            if epochs and time.perf_counter() - started + step_s > args.train_budget_s:
                log.info("stopping at %d epochs: another step (~%.0f s) would pass the %.0f s budget", epochs,
                         step_s, args.train_budget_s)
                break
            epochs += args.epoch_step
            t0 = time.perf_counter()
            est = ContrastiveClusterer.with_training(n_clusters=10, encoder=args.encoder, width=args.width, epochs=epochs,
                                                     batch_size=args.batch_size, seed=args.seed, device=args.device,
                                                     umap_components=None, clusterer="kmeans", kmeans_redo=1,
                                                     checkpoint_dir=ckpt).fit(x)
            step_s = time.perf_counter() - t0
            feats = est.transform(x).astype(np.float32)
            queries = np.random.default_rng(args.seed).choice(len(x), min(args.agreement_queries, len(x)), replace=False)
            at1, at20 = neighbour_agreement(feats, y, 20, np.sort(queries))
            train_s = sum(h["seconds"] for h in est.history_)
            rows.append(f"| {epochs} | {train_s:.0f} | {at1:.3f} | {at20:.3f} |")
            log.info("step done: %s (step %.0f s)", rows[-1], step_s)
    t0 = time.perf_counter()
    at1, at20 = neighbour_agreement(feats, y, 20)
    km = FaissKMeans(n_clusters=10, n_redo=10, seed=args.seed, spherical=True).fit(feats).predict(feats)
    print(f"\nstage A: simclr encoder {args.encoder} width {args.width}, batch {args.batch_size}, seed {args.seed}, "
          f"{len(x)} images, device {args.device}")
    print(f"| epochs | training s (cumulative) | kNN agreement @1 | @20 (each over {args.agreement_queries} "
          "seeded query images) |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"final representation: kNN agreement over every image @1 {at1:.3f} @20 {at20:.3f}; cosine k-means "
          f"(10 restarts) ACC / NMI {_score(y, km)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return feats


def save_reps(out: Path, feats: np.ndarray, y: np.ndarray, chunk_rows: int) -> None:
    """Representation ``(N, D)`` as float16 chunks ``reps-NN.npy`` plus ``y.npy`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, len(feats), chunk_rows)):
        np.save(out / f"reps-{i:02d}.npy", feats[start:start + chunk_rows].astype(np.float16))
    np.save(out / "y.npy", y)
    log.info("saved the representation %s as float16 in %s", feats.shape, out)


def load_reps(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`save_reps` wrote: ``(N, D)`` float32 re-normalised rows, labels ``(N,)``."""
    parts = sorted(folder.glob("reps-*.npy"))
    if not parts:
        raise FileNotFoundError(f"no reps-*.npy in {folder}: run stage A with --out {folder} first")
    feats = np.concatenate([np.load(p) for p in parts]).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True), np.load(folder / "y.npy")


STAGE_B = ("gmm", "kmeans", "scan", "scan-raw")
"""Stage B's clusterers: UMAP + 8-run GMM consensus (``simclr``'s default), the same UMAP + k-means (10 restarts),
SCAN's neighbour-consistency head on the representation itself (``clusterer="scan"``, no UMAP; neighbours in the
whitened space), and the same with cosine neighbours of the representation as given (``whiten=False``)."""


def _composition(name: str, y: np.ndarray, labels: np.ndarray) -> None:
    """Log each cluster's size and its three most frequent classes."""
    sizes = np.bincount(labels, minlength=10)
    for c in range(len(sizes)):
        counts = np.bincount(y[labels == c], minlength=10)
        top = np.argsort(-counts)[:3]
        log.info("%s cluster %d: %d images; top classes %s", name, c, sizes[c],
                 ", ".join(f"{i} ({counts[i]})" for i in top))


def stage_b(feats: np.ndarray, y: np.ndarray, seed: int, clusterers: list[str]) -> None:
    """``simclr``'s last stages (``EmbeddingClusterer._fit_clusters`` with its defaults) on ``feats`` ``(N, D)``,
    with each of ``clusterers`` (of :data:`STAGE_B`); print one ACC / NMI row each."""
    from imgclust.cluster.classic import FaissKMeans
    from imgclust.cluster.gmm import GaussianMixtureClusterer
    from imgclust.cluster.scan import ScanClusterer
    from imgclust.reduce.streaming import UMAPReducer

    rows = []
    coords = None
    for name in clusterers:
        t0 = time.perf_counter()
        if name in ("gmm", "kmeans") and coords is None:
            coords = UMAPReducer(n_components=10, n_neighbors=20, min_dist=0.0, random_state=seed,
                                 fit_sample=None).fit(feats).embedding_
            log.info("UMAP(10, 20 nn, min_dist 0) of %s in %.0f s", feats.shape, time.perf_counter() - t0)
        if name == "gmm":
            labels = GaussianMixtureClusterer(n_clusters=10, fit_sample=None, random_state=seed,
                                              consensus_runs=8).fit(coords).predict(coords)
            what = "UMAP + 8-run GMM consensus (simclr's default)"
        elif name == "kmeans":
            labels = FaissKMeans(n_clusters=10, n_redo=10, seed=seed).fit(coords).predict(coords)
            what = "UMAP + k-means (10 restarts)"
        else:
            whiten = name == "scan"
            labels = ScanClusterer(n_clusters=10, random_state=seed, whiten=whiten).fit(feats).labels_
            what = ("SCAN head + neighbour vote (clusterer='scan'), whitened neighbours" if whiten else
                    "SCAN head + neighbour vote, neighbours unwhitened (whiten=False)")
        _composition(name, y, labels)
        rows.append(f"| {what} | {seed} | {_score(y, labels).replace(' / ', ' | ')} | "
                    f"{time.perf_counter() - t0:.0f} | {np.bincount(labels, minlength=10).tolist()} |")
        log.info("stage B %s", rows[-1])
    print(f"\nstage B on the representation {feats.shape}:")
    print("| clusterer | seed | ACC | NMI | s (UMAP in the first that uses it) | cluster sizes |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=["test", "all", "train-subset"], default="all",
                   help="train-subset = the seeded 10k train images the defaults are chosen on (train_subset.py)")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epoch-step", type=int, default=10)
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--train-budget-s", type=float, default=170.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--limit", type=int, default=None, help="seeded subset (smoke runs)")
    p.add_argument("--chunk-rows", type=int, default=25000)
    p.add_argument("--agreement-queries", type=int, default=5000, help="query images of the per-step kNN agreement")
    p.add_argument("--out", type=Path, default=None, help="folder to save the representation in")
    p.add_argument("--no-stage-b", action="store_true", help="stop after saving the representation")
    p.add_argument("--from-reps", type=Path, default=None, help="run stage B alone on a saved representation")
    p.add_argument("--stage-b", default=",".join(STAGE_B), help=f"stage B's clusterers, comma-separated, of {STAGE_B}")
    args = p.parse_args()
    clusterers = [c for c in args.stage_b.split(",") if c]
    if not clusterers or set(clusterers) - set(STAGE_B):
        p.error(f"--stage-b takes a comma-separated list of {STAGE_B}, got {args.stage_b!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    log.info("host %s, %d CPUs, torch %s, load %s", os.uname().nodename, os.cpu_count(), torch.__version__,
             os.getloadavg())
    if args.from_reps is not None:
        feats, y = load_reps(args.from_reps)
        stage_b(feats, y, args.seed, clusterers)
        return
    from imgclust.data.datasets import load_fashion_mnist

    if args.split == "train-subset":
        from train_subset import train_subset

        x, y = train_subset(argparse.Namespace(n=10000, threads=torch.get_num_threads()))
    else:
        x, y = load_fashion_mnist(args.split)
    if args.limit:
        idx = np.sort(np.random.default_rng(0).choice(len(x), args.limit, replace=False))
        x, y = x[idx], y[idx]
    feats = stage_a(args, x, y)
    if args.out is not None:
        save_reps(args.out, feats, y, args.chunk_rows)
    if not args.no_stage_b:
        stage_b(feats, y, args.seed, clusterers)


if __name__ == "__main__":
    main()
