"""Benchmark: UMAP + HDBSCAN fitted on a sample and predicted for the rest, against fitting on every row.

The product path beyond memory (``imgclust.models.model.fit_model`` with ``ClusterConfig(method="hdbscan",
fit_sample=s)``): exact PCA 50 on all rows, UMAP(10) fitted on a seeded sample of ``s`` rows, HDBSCAN
fitted on the sample's embedding, then every row assigned with UMAP ``transform`` + HDBSCAN
``approximate_predict`` (what labeling shards on Dask workers does). The full fit is the same with
``s = n``. HDBSCAN's ``min_cluster_size`` scales with the rows it is fitted on
(``--min-cluster-frac x s``) so that a sample looks for clusters of the same relative size.

Data: Fashion-MNIST pixels / 255 (Debian ``dataset-fashion-mnist``), ``--split all`` = 70,000 rows.
Printed per fit size: fit time, assign time, clusters found, noise share, ARI against the full fit's
labels (noise kept as its own label), and ACC / NMI against the true classes (noise counted wrong in ACC).

    .venv/bin/python benchmarks/sample_fit.py                       # 70k rows, samples 5k, 20k vs full
    .venv/bin/python benchmarks/sample_fit.py --split test --samples 2000 --quick
"""
from __future__ import annotations

import argparse
import logging
import platform
import time
from typing import Any

import numpy as np
from quiet import add_quiet_args, wait_for_quiet

log = logging.getLogger("benchmarks.sample_fit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=["test", "all"], default="all")
    p.add_argument("--samples", default="5000,20000", help="sample sizes to fit on, besides the full fit")
    p.add_argument("--min-cluster-frac", type=float, default=0.005,
                   help="HDBSCAN min_cluster_size as a share of the fitted rows (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 3,000 rows")
    add_quiet_args(p)
    return p.parse_args(argv)


def fit_and_assign(X: np.ndarray, fit_rows: int, frac: float, seed: int) -> dict[str, Any]:
    """Fit on ``fit_rows`` sampled rows of ``X`` (n, 784), assign all rows; timings and labels."""
    from imgclust.config import ClusterConfig, Recipe, ReduceConfig
    from imgclust.models.model import fit_model

    mcs = max(5, round(frac * fit_rows))
    t0 = time.perf_counter()
    model = fit_model(lambda: iter([X]), extractor_key="pixels",
                      recipe=Recipe(reduce=ReduceConfig(method="pca", n_components=50, umap_components=10),
                                    cluster=ClusterConfig(method="hdbscan", min_cluster_size=mcs, fit_sample=fit_rows, seed=seed)))
    t1 = time.perf_counter()
    raw = np.concatenate([model.assign(X[i:i + 20_000]).raw for i in range(0, len(X), 20_000)])
    return {"fit_s": t1 - t0, "assign_s": time.perf_counter() - t1, "raw": raw, "mcs": mcs,
            "clusters": int(model.n_clusters)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from imgclust.data.datasets import load_fashion_mnist
    from imgclust.metrics import ari, cluster_accuracy, nmi

    x, y = load_fashion_mnist(args.split)
    if args.quick:
        x, y = x[:3000], y[:3000]
    X = x.reshape(len(x), -1).astype(np.float32) / 255.0
    n = len(X)
    sizes = [int(s) for s in args.samples.split(",") if s.strip() and int(s) < n] + [n]
    # warm-up: numba JIT of UMAP/HDBSCAN. UMAP fits fewer than 4,096 rows with exact neighbours and more with
    # NN-descent, and only the latter compiles pynndescent's search that `transform` uses, so the warm-up must
    # fit more than 4,096 rows (a 1,000-row warm-up left ~45 s of compilation inside the first timed row)
    warm = min(n, 6000)
    fit_and_assign(X[:warm], max(1000, warm - 1000), args.min_cluster_frac, args.seed)
    runs = {}
    for s in sizes:
        busy = wait_for_quiet(args.max_busy, args.max_wait)
        log.info("fitting on %d of %d rows", s, n)
        runs[s] = {**fit_and_assign(X, s, args.min_cluster_frac, args.seed), "busy": busy}
    full = runs[n]["raw"]
    print(f"Fashion-MNIST {args.split}: {n:,} rows x 784 pixels; exact PCA 50 -> UMAP 10 -> HDBSCAN; "
          f"min_cluster_size = {args.min_cluster_frac} x fitted rows; seed {args.seed}; {platform.machine()}\n")
    print("| fitted rows | min_cluster_size | fit s | assign all s | total s | total / full | clusters | noise % "
          "| ARI vs full fit | ACC | NMI | others' CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    total_full = runs[n]["fit_s"] + runs[n]["assign_s"]
    for s in sizes:
        r = runs[s]
        total = r["fit_s"] + r["assign_s"]
        print(f"| {s:,} | {r['mcs']} | {r['fit_s']:.1f} | {r['assign_s']:.1f} | {total:.1f} | "
              f"{total / total_full:.2f} | {r['clusters']} | {100 * np.mean(r['raw'] < 0):.1f} | "
              f"{ari(full, r['raw']):.3f} | {cluster_accuracy(y, r['raw']):.3f} | {nmi(y, r['raw']):.3f} | "
              f"{r['busy']:.0f} |")


if __name__ == "__main__":
    main()
