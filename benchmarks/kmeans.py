"""Benchmark: ``FaissKMeans`` and ``TorchKMeans`` against scikit-learn ``KMeans`` and ``MiniBatchKMeans``.

Same float32 matrix, same ``k``, same number of Lloyd iterations, one run each (``n_init=1`` /
``n_redo=1``), all seeded with k-means++:

* FaissKMeans: ``n_iter=25, n_redo=1, max_points_per_centroid=ceil(n / k)`` so faiss trains on every
  row (no subsampling); its ``fit`` includes the k-means++ init (``imgclust.cluster.seeding``, torch on the CPU)
  and the assignment passes it makes to compute its own inertia.
* TorchKMeans: the same settings on ``--device`` (``auto``: the GPU when present), timed with a
  CUDA synchronise; its k-means++ runs on the device too.
* KMeans: ``algorithm="lloyd", max_iter=25, tol=0, n_init=1`` (it can still stop early if the labels
  stop changing: the iterations actually run are shown).
* MiniBatchKMeans: ``max_iter=25`` epochs, ``n_init=1``, scikit-learn's other defaults (batch 1024,
  early stop after 10 mini-batches without improvement).

Inertia is computed by one function for every method: the sum over **all** rows of the squared
distance to the nearest final centroid (float64). Times are the median of
``--repeats`` runs (methods interleaved) after an excluded warm-up on a 10k-row subset. Both
libraries use every core unless ``--threads`` is given.

    .venv/bin/python benchmarks/kmeans.py                  # 100k x 128 Gaussian blobs, k=100
    .venv/bin/python benchmarks/kmeans.py --data fashion   # IPCA-128 of Fashion-MNIST pixels (70k)
    .venv/bin/python benchmarks/kmeans.py --quick
    python benchmarks/kmeans.py --rows 1000000 --dim 256 --k 1000 --methods torch,faiss,sklearn,minibatch  # issue 6

Methods without their library (faiss on the GPU machine) are reported as skipped, not silently dropped.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import markdown_head, markdown_row
from quiet import add_quiet_args, wait_for_quiet

log = logging.getLogger("benchmarks.kmeans")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["blobs", "fashion"], default="blobs")
    p.add_argument("--rows", type=int, default=100_000, help="rows of the blobs data (default: 100000)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--iters", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is shown")
    p.add_argument("--threads", type=int, help="OpenMP/BLAS threads for every method (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="faiss,torch,sklearn,minibatch",
                   help="comma-separated, the first is the reference of the ratio columns (default: %(default)s)")
    p.add_argument("--init", choices=["k-means++", "random", "shared"], default="k-means++",
                   help="seeding: each method's own k-means++ (O(n k D) in k sequential steps; on CPU cores it "
                        "dominates the fit at 1M rows, k=1000), k random rows, or 'shared': one k-means++ draw "
                        "made before timing and given to every method")
    p.add_argument("--device", default="auto", help="TorchKMeans device: auto | cpu | cuda (default: auto)")
    add_quiet_args(p)
    p.add_argument("--quick", action="store_true", help="smoke run: 10k rows, k=20, 5 iterations, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.k, args.iters, args.repeats = 10_000, 20, 5, 1
    return args


def blobs(n: int, dim: int, k: int, seed: int) -> np.ndarray:
    """``k`` centres ~ N(0, 1) in ``dim`` dims, each row a random centre + N(0, 1) noise, float32 ``(n, dim)``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim), dtype=np.float32)
    X = centres[rng.integers(k, size=n)]
    X += rng.standard_normal((n, dim), dtype=np.float32)
    return X


def fashion_ipca(dim: int) -> np.ndarray:
    """Fashion-MNIST train+test pixels in [0, 1] reduced to ``dim`` dims with StreamingPCA, ``(70000, dim)``."""
    from imgclust.data.datasets import load_fashion_mnist
    from imgclust.reduce.streaming import StreamingPCA

    x, _ = load_fashion_mnist("all")
    pixels = x.reshape(len(x), -1).astype(np.float32) / 255.0
    return StreamingPCA(n_components=dim).fit_transform(pixels)


def inertia(X: np.ndarray, centers: np.ndarray, chunk: int = 8192) -> float:
    """Sum over all rows of ``X`` ``(n, D)`` of the squared distance to the nearest of ``centers`` ``(k, D)``."""
    C = centers.astype(np.float64)
    c2 = np.einsum("ij,ij->i", C, C)
    total = 0.0
    for start in range(0, X.shape[0], chunk):
        x = X[start:start + chunk].astype(np.float64)
        d = np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * (x @ C.T) + c2[None, :]
        total += float(np.maximum(d.min(axis=1), 0.0).sum())
    return total


def methods(n: int, k: int, iters: int, seed: int, device: str = "auto", init: str = "k-means++",
            seeds: np.ndarray | None = None) -> dict[str, tuple[str, str, Callable[[np.ndarray], Any]]]:
    """key -> (name, settings shown in the table, fit function returning (centers (k, D), iterations run)).

    ``init="shared"``: every method starts from ``seeds`` ``(k, D)`` (one k-means++ draw, made before timing),
    so the times are Lloyd iterations alone and the inertias compare like for like.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    mppc = math.ceil(n / k)

    def faiss_fit(X: np.ndarray) -> Any:
        from imgclust.cluster.classic import FaissKMeans

        est = FaissKMeans(n_clusters=k, n_iter=iters, n_redo=1, seed=seed, max_points_per_centroid=mppc,
                          init="random" if init == "random" else "k-means++").fit(X, init_centroids=seeds)
        if est.n_train_samples_ != X.shape[0]:
            raise RuntimeError(f"faiss trained on {est.n_train_samples_} of {X.shape[0]} rows")
        return est.cluster_centers_, iters

    def torch_fit(X: np.ndarray) -> Any:
        import torch

        from imgclust.cluster.kmeans_torch import TorchKMeans

        est = TorchKMeans(n_clusters=k, n_iter=iters, n_redo=1, seed=seed, max_points_per_centroid=mppc,
                          init="random" if init == "random" else "k-means++", device=device
                          ).fit(X, init_centroids=seeds)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return est.cluster_centers_, iters

    def km_fit(X: np.ndarray) -> Any:
        start = seeds if seeds is not None else ("random" if init == "random" else "k-means++")
        est = KMeans(n_clusters=k, init=start, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd",
                     random_state=seed).fit(X)
        return est.cluster_centers_, est.n_iter_

    def mb_fit(X: np.ndarray) -> Any:
        start = seeds if seeds is not None else ("random" if init == "random" else "k-means++")
        est = MiniBatchKMeans(n_clusters=k, init=start, n_init=1, max_iter=iters, random_state=seed).fit(X)
        return est.cluster_centers_, f"{est.n_iter_} epochs ({est.n_steps_} batches)"

    all_rows = f"max_points_per_centroid={mppc} (all rows), init={init}"
    return {
        "faiss": ("FaissKMeans", f"n_iter={iters}, n_redo=1, {all_rows}", faiss_fit),
        "torch": (f"TorchKMeans ({_torch_device(device)})", f"n_iter={iters}, n_redo=1, {all_rows}", torch_fit),
        "sklearn": ("sklearn KMeans", f"lloyd, max_iter={iters}, tol=0, n_init=1, init={init}", km_fit),
        "minibatch": ("sklearn MiniBatchKMeans", f"max_iter={iters}, n_init=1, batch_size=1024, init={init}", mb_fit),
    }


def shared_seeds(X: np.ndarray, k: int, seed: int, device: str) -> np.ndarray:
    """One k-means++ draw ``(k, D)`` float32 over all rows of ``X``, with TorchKMeans's seeding on ``device``."""
    import torch

    from imgclust.cluster.seeding import kmeans_plusplus
    from imgclust.devices import resolve_device

    dev = resolve_device(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        seeds = kmeans_plusplus(torch.from_numpy(X).to(dev), k, torch.Generator(device=dev).manual_seed(seed))
    out = seeds.cpu().numpy().astype(np.float32)
    log.info("shared k-means++ seeds (%d, %d) on %s in %.1f s (not timed)", k, X.shape[1], dev,
             time.perf_counter() - t0)
    return out


def _torch_device(device: str) -> str:
    from imgclust.devices import resolve_device

    return str(resolve_device(device))


def available(key: str) -> bool:
    """Whether the library behind a method imports here (the GPU machine has no faiss)."""
    import importlib.util

    return key != "faiss" or importlib.util.find_spec("faiss") is not None


def run(X: np.ndarray, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Warm up every method, then time them interleaved (``repeats`` rounds), each after a quiet check."""
    keys = [m.strip() for m in args.methods.split(",") if m.strip()]
    shared = args.init == "shared"
    every = methods(X.shape[0], args.k, args.iters, args.seed, args.device, args.init,
                    shared_seeds(X, args.k, args.seed, args.device) if shared else None)
    unknown = sorted(set(keys) - set(every))
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; choose from {sorted(every)}")
    skipped = [key for key in keys if not available(key)]
    for key in skipped:
        log.warning("%s: its library is not installed here; reported as skipped", key)
    keys = [key for key in keys if key not in skipped]
    table = {key: every[key] for key in keys}
    warm = X[: min(10_000, X.shape[0])]
    warm_k = min(args.k, 100)
    warm_seeds = shared_seeds(warm, warm_k, args.seed, args.device) if shared else None
    for key, (name, _, fit) in methods(warm.shape[0], warm_k, 2, args.seed, args.device, args.init,
                                       warm_seeds).items():
        if key in table:
            log.info("%s: warm-up on %d rows", name, warm.shape[0])
            fit(warm)
    times: dict[str, list[float]] = {key: [] for key in table}
    busy: dict[str, list[float]] = {key: [] for key in table}
    last: dict[str, Any] = {}
    for r in range(args.repeats):
        for key, (name, _, fit) in table.items():
            busy[key].append(wait_for_quiet(args.max_busy, args.max_wait))
            t0 = time.perf_counter()
            last[key] = fit(X)
            times[key].append(time.perf_counter() - t0)
            log.info("%s: run %d took %.2fs", name, r + 1, times[key][-1])
    rows = [{"method": name, "settings": settings, "iters": last[key][1], "time": statistics.median(times[key]),
             "inertia": inertia(X, np.asarray(last[key][0])), "busy": "/".join(f"{b:.0f}" for b in busy[key])}
            for key, (name, settings, _) in table.items()]
    return rows + [{"method": every[key][0], "skipped": True} for key in skipped]


def render(rows: list[dict[str, Any]], repeats: int, threads: int) -> str:
    ref = rows[0]
    head = ["method", "threads", "settings", "iterations run", f"time s (median of {repeats})", "inertia (all rows)",
            f"time / {ref['method']}", f"inertia / {ref['method']}", "others' CPU % before each run"]
    lines = markdown_head(head)
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['method']} | skipped: library not installed here |" + " |" * (len(head) - 2))
            continue
        cells = [r["method"], threads, r["settings"], r["iters"], f"{r['time']:.2f}", f"{r['inertia']:.6g}",
                 f"{r['time'] / ref['time']:.2f}", f"{r['inertia'] / ref['inertia']:.4f}", r["busy"]]
        lines.append(markdown_row(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import os

    from threadpoolctl import threadpool_info, threadpool_limits

    faiss = importlib.import_module("faiss") if available("faiss") else None
    if args.threads:  # faiss has its own OpenMP runtime; threadpoolctl covers scikit-learn's and BLAS
        if faiss is not None:
            faiss.omp_set_num_threads(args.threads)
        threadpool_limits(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    threads = args.threads or (faiss.omp_get_max_threads() if faiss is not None else os.cpu_count() or 1)

    if args.data == "fashion":
        X = fashion_ipca(args.dim)
        if args.quick:
            X = X[: args.rows]
    else:
        X = blobs(args.rows, args.dim, args.k, args.seed)
    log.info("data %s: %s float32; threads: %d; sklearn pools: %s", args.data, X.shape, threads,
             [(p["internal_api"], p["num_threads"]) for p in threadpool_info()])
    print(render(run(X, args), args.repeats, threads))


if __name__ == "__main__":
    main()
