"""How the GMM consensus default was chosen: one EM run vs the evidence-accumulation consensus of R runs.

Runs on a seeded 10,000-image subset of the Fashion-MNIST **train** split (never the test split that
``benchmarks/quality.py`` scores). For each view (``pixels``: IPCA(50) of the raw pixels; ``convae``:
the library's ConvAE embedding after ``--epochs`` epochs, the ``n2d`` encoder; ``scae``: the 50-d F layer of
the symmetric conv AE of seeds/003 after ``--epochs`` epochs) and each of
``--umap-seeds`` UMAP maps (10-d, 20 neighbours, min_dist 0, N2D's settings) it fits ``--runs``
single-run full-covariance GMMs (seeds 0..R-1) and ``GaussianMixtureClusterer(consensus_runs=R)``
(Fred & Jain, TPAMI 2005), and prints ACC / NMI of the single runs (mean, min, max) beside the
consensus.

    .venv/bin/python benchmarks/gmm_consensus.py --views pixels,convae,scae --umap-seeds 4 --runs 8
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
from train_subset import add_subset_args, train_subset

log = logging.getLogger("benchmarks.gmm_consensus")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", default="pixels,convae,scae", help="comma-separated: pixels, convae, scae")
    p.add_argument("--umap-seeds", type=int, default=4)
    p.add_argument("--runs", type=int, default=8, help="EM runs (single-run seeds and consensus_runs)")
    p.add_argument("--epochs", type=int, default=20, help="autoencoder epochs of the convae / scae views")
    add_subset_args(p)
    args = p.parse_args()
    x, y = train_subset(args)
    import torch

    from imgclust.cluster.gmm import GaussianMixtureClusterer
    from imgclust.metrics import cluster_accuracy, nmi
    from imgclust.reduce.streaming import StreamingPCA, UMAPReducer

    def features(view: str) -> np.ndarray:
        if view == "pixels":
            flat = x.reshape(len(x), -1).astype(np.float32) / 255.0
            return StreamingPCA(n_components=50).fit(flat).transform(flat)
        if view in ("convae", "scae"):
            from imgclust.deep.methods import create_deep

            ae = create_deep(view, k=10, epochs=args.epochs, seed=0, device="cpu").fit(x)
            return ae.transform(x)
        raise SystemExit(f"unknown view {view!r}: pixels, convae or scae")

    rows: list[tuple[str, int, str, str, str, str, float]] = []
    for view in [v.strip() for v in args.views.split(",") if v.strip()]:
        feats = features(view)
        for useed in range(args.umap_seeds):
            u = UMAPReducer(n_components=10, n_neighbors=20, min_dist=0.0, fit_sample=None,
                            random_state=useed).fit(feats).embedding_
            torch.set_num_threads(args.threads)  # numba's OpenMP layer resets it after UMAP
            singles = [GaussianMixtureClusterer(n_clusters=10, fit_sample=None, random_state=s).fit(u).predict(u)
                       for s in range(args.runs)]
            acc = [cluster_accuracy(y, s) for s in singles]
            nm = [nmi(y, s) for s in singles]
            t0 = time.perf_counter()
            cons = GaussianMixtureClusterer(n_clusters=10, fit_sample=None, consensus_runs=args.runs).fit(u).predict(u)
            sec = time.perf_counter() - t0
            rows.append((view, useed, f"{np.mean(acc):.3f} / {np.mean(nm):.3f}", f"{min(acc):.3f} / {min(nm):.3f}",
                         f"{max(acc):.3f} / {max(nm):.3f}",
                         f"{cluster_accuracy(y, cons):.3f} / {nmi(y, cons):.3f}", sec))
            log.info("%s", rows[-1])
    print(f"Fashion-MNIST train subset of {len(x)} images, {args.runs} EM runs; load average "
          f"{os.getloadavg()[0]:.2f} at the end\n")
    print(f"| view | UMAP seed | single run: mean | min | max | consensus of {args.runs} | consensus s |")
    print("|---|---|---|---|---|---|---|")
    for view, useed, mean, lo, hi, cons, sec in rows:
        print(f"| {view} | {useed} | {mean} | {lo} | {hi} | **{cons}** | {sec:.1f} |")


if __name__ == "__main__":
    main()
