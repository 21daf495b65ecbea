"""Clustering quality on Fashion-MNIST: every deep method next to the seed paper's table and plain baselines.

    python benchmarks/quality.py [--split test|all] [--methods convae,ascae,...] [--epochs N] [--max-iter N]

Prints one Markdown table: ACC / NMI (Hungarian accuracy, normalised mutual information) with wall
time and device for each row, the published Fashion-MNIST numbers of METHODS.md §4 (Qian et al.
2025, Table) beside them, and two baselines computed in the same run: raw pixels + k-means and
IPCA(50) + UMAP(10) + k-means. Labels are used only for scoring; defaults were chosen once.
"""
from __future__ import annotations

import argparse
import logging
import platform
import time

import numpy as np

log = logging.getLogger("benchmarks.quality")

PUBLISHED = {  # METHODS.md §4, Fashion-MNIST column: ACC, NMI
    "k-means (paper)": (0.474, 0.512), "DEC (paper)": (0.518, 0.546), "IDEC (paper)": (0.529, 0.557),
    "VaDE (paper)": (0.629, 0.611), "DSCDA (paper)": (0.662, 0.645), "TDEC (paper)": (0.645, 0.693),
    "DeepDPM (paper)": (0.610, 0.500), "NNC (paper, Qian et al.)": (0.646, 0.707),
}


def _score(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    from imgclust.metrics import cluster_accuracy, nmi

    return cluster_accuracy(y, pred), nmi(y, pred)


def baselines(x: np.ndarray, y: np.ndarray, seed: int) -> list[tuple[str, float, float, float, str]]:
    from imgclust.cluster import FaissKMeans
    from imgclust.reduce import StreamingPCA, UMAPReducer

    flat = x.reshape(len(x), -1).astype(np.float32) / 255.0
    rows = []
    t0 = time.perf_counter()
    pred = FaissKMeans(n_clusters=10, n_redo=10, seed=seed).fit(flat).predict(flat)
    rows.append(("raw pixels + k-means", *_score(y, pred), time.perf_counter() - t0, "cpu"))
    t0 = time.perf_counter()
    z = StreamingPCA(n_components=50).fit(flat).transform(flat)
    u = UMAPReducer(n_components=10, fit_sample=None, random_state=seed).fit(z).transform(z)
    pred = FaissKMeans(n_clusters=10, n_redo=10, seed=seed).fit(u).predict(u)
    rows.append(("IPCA(50) + UMAP(10) + k-means", *_score(y, pred), time.perf_counter() - t0, "cpu"))
    return rows


def run_method(method: str, x: np.ndarray, y: np.ndarray, args: argparse.Namespace
               ) -> tuple[str, float, float, float, str]:
    from imgclust.deep.methods import create_deep
    from imgclust.deep.training import resolve_device

    extra = {"umap_components": 10} if method.endswith("+umap") else {}
    name = method.removesuffix("+umap")
    est = create_deep(name, k=10, epochs=args.epochs, max_iter=args.max_iter, seed=args.seed, device=args.device,
                      **extra)
    t0 = time.perf_counter()
    est.fit(x)
    seconds = time.perf_counter() - t0
    return (f"{method} (ours)", *_score(y, est.labels_), seconds, str(resolve_device(args.device)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=["test", "all"], default="test")
    p.add_argument("--methods", default="convae+umap,convae,ascae,scae,dec,idec,nnc,deepcluster")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-iter", type=int, default=2000)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="seeded subset (smoke runs)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from imgclust.datasets import load_fashion_mnist

    x, y = load_fashion_mnist(args.split)
    if args.limit:
        idx = np.sort(np.random.default_rng(args.seed).choice(len(x), args.limit, replace=False))
        x, y = x[idx], y[idx]
    rows = baselines(x, y, args.seed)
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        log.info("training %s on %d images", method, len(x))
        rows.append(run_method(method, x, y, args))
    lines = [f"Fashion-MNIST {args.split} ({len(x)} images), epochs={args.epochs}, max_iter={args.max_iter}, "
             f"seed={args.seed}, {platform.machine()}", "",
             "| method | ACC | NMI | train s | device |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.3f} | {m:.3f} | {s:.0f} | {d} |" for n, a, m, s, d in rows]
    lines += [f"| {n} | {a:.3f} | {m:.3f} | - | published |" for n, (a, m) in PUBLISHED.items()]
    print("\n".join(lines))  # the benchmark's table is its output


if __name__ == "__main__":
    main()
