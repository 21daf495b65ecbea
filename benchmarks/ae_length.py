"""ASCAE / SCAE defaults: ACC / NMI against training length and k-means variant, on a train subset.

Runs on a seeded 10,000-image subset of the Fashion-MNIST **train** split (never the test split that
``benchmarks/quality.py`` scores). For each architecture it trains the library's
``AutoencoderClusterer`` (seeds/003: raw 0..255 pixels, λ = 20, N(0, 0.1²) init, no augmentation)
to each checkpoint length in turn, resuming from the previous length's checkpoint (the estimator's
own crash-resume path, so the 200-epoch row costs 200 epochs in all, not 20 + 100 + 200), and
scores three clusterings of the same F features: the paper's k-means on raw F, the library's
default cosine k-means (k-means on L2-normalised F, ``spherical=True``; both best of 10 k-means++
restarts on every row), and UMAP(10, 20 neighbours, min_dist 0) + a full-covariance GMM (N2D's last
stages, McConville et al., ICPR 2020). Prints one Markdown table, ACC / NMI per row.

    .venv/bin/python benchmarks/ae_length.py --archs ascae,scae --epochs 20,100,200
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import numpy as np
from train_subset import add_subset_args, train_subset

log = logging.getLogger("benchmarks.ae_length")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="ascae,scae", help="comma-separated: ascae, scae, convae")
    p.add_argument("--epochs", default="20,100,200", help="checkpoint lengths, comma-separated")
    add_subset_args(p)
    args = p.parse_args()
    x, y = train_subset(args)
    import torch

    from imgclust.cluster.classic import FaissKMeans
    from imgclust.cluster.gmm import GaussianMixtureClusterer
    from imgclust.deep.autoencoder import AutoencoderClusterer
    from imgclust.metrics import cluster_accuracy, nmi
    from imgclust.reduce.streaming import UMAPReducer

    lengths = sorted({int(e) for e in args.epochs.split(",")})

    def score(pred: np.ndarray) -> str:
        return f"{cluster_accuracy(y, pred):.3f} / {nmi(y, pred):.3f}"

    def kmeans(feats: np.ndarray, spherical: bool) -> np.ndarray:
        return FaissKMeans(n_clusters=10, n_redo=10, seed=0, spherical=spherical,
                           max_points_per_centroid=-(-len(feats) // 10)).fit(feats).predict(feats)

    rows: list[tuple[str, int, float, str, str, str]] = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        with tempfile.TemporaryDirectory(prefix=f"ae_length_{arch}_") as ckpt:
            train_s = 0.0
            for epochs in lengths:
                t0 = time.perf_counter()
                est = AutoencoderClusterer.with_training(arch=arch, n_clusters=10, epochs=epochs, seed=0, device="cpu",
                                                         checkpoint_dir=ckpt, checkpoint_every=10 ** 9).fit(x)
                train_s += time.perf_counter() - t0
                emb = est.transform(x)
                u = UMAPReducer(n_components=10, n_neighbors=20, min_dist=0.0, fit_sample=None,
                                random_state=0).fit(emb).embedding_
                torch.set_num_threads(args.threads)  # numba's OpenMP layer resets it after UMAP
                gmm = GaussianMixtureClusterer(n_clusters=10, fit_sample=None).fit(u).predict(u)
                rows.append((arch, epochs, train_s, score(kmeans(emb, False)), score(kmeans(emb, True)), score(gmm)))
                log.info("%s", rows[-1])
    print(f"Fashion-MNIST train subset of {len(x)} images; load average {os.getloadavg()[0]:.2f} at the end\n")
    print("| arch | epochs | train s (cumulative) | k-means on F (paper) | cosine k-means on F | UMAP + GMM |")
    print("|---|---|---|---|---|---|")
    for arch, epochs, sec, a, b, c in rows:
        print(f"| {arch} | {epochs} | {sec:.0f} | {a} | {b} | {c} |")


if __name__ == "__main__":
    main()
