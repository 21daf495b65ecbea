"""How the N2D defaults were chosen: ConvAE length and the clusterer of the UMAP coordinates.

Runs on a seeded 10,000-image subset of the Fashion-MNIST **train** split (never the test split that
``benchmarks/quality.py`` scores), trains the library's ConvAE (METHODS.md §4: augmentation, Adam 1e-3,
batch 256) and at each checkpoint epoch embeds every image, maps the embedding with UMAP(10, 20
neighbours, min_dist 0) and clusters the same coordinates three ways: k-means on the raw embedding,
k-means on UMAP, a full-covariance GMM on UMAP (McConville et al., ICPR 2020). Prints ACC / NMI per row.

    .venv/bin/python benchmarks/n2d_choice.py --epochs 20,50,100
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np

log = logging.getLogger("benchmarks.n2d_choice")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", default="20,50,100", help="checkpoint epochs, comma-separated")
    p.add_argument("--n", type=int, default=10000, help="train-split images (seeded subset)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--embed-dim", type=int, default=10, help="ConvAE embedding size (the paper: k = 10)")
    p.add_argument("--pixels", action="store_true", help="also score IPCA(50) + UMAP + k-means / GMM on raw pixels")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch
    from torch.nn import functional as F

    from imgclust.cluster.classic import FaissKMeans
    from imgclust.cluster.gmm import GaussianMixtureClusterer
    from imgclust.data.datasets import load_fashion_mnist
    from imgclust.deep.networks import build_network
    from imgclust.deep.training import encode_batched, random_affine, seed_everything, to_float_images
    from imgclust.metrics import cluster_accuracy, nmi
    from imgclust.reduce.streaming import UMAPReducer

    torch.set_num_threads(args.threads)
    x, y = load_fashion_mnist("train")
    idx = np.sort(np.random.default_rng(1).choice(len(x), args.n, replace=False))
    X, y = to_float_images(x[idx], scale=1 / 255), y[idx]
    gen = seed_everything(0)
    net = build_network({"arch": "convae", "in_channels": 1, "image_size": [28, 28], "embed_dim": args.embed_dim})
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    checkpoints = sorted({int(e) for e in args.epochs.split(",")})

    def score(pred: np.ndarray) -> str:
        return f"{cluster_accuracy(y, pred):.3f} / {nmi(y, pred):.3f}"

    def three_ways(feats: np.ndarray) -> tuple[str, str, str]:
        u = UMAPReducer(n_components=10, n_neighbors=20, min_dist=0.0, fit_sample=None, random_state=0).fit(feats)
        torch.set_num_threads(args.threads)
        km = {"n_clusters": 10, "n_redo": 10, "seed": 0, "max_points_per_centroid": -(-len(X) // 10)}
        return (score(FaissKMeans(**km).fit(feats).predict(feats)),
                score(FaissKMeans(**km).fit(u.embedding_).predict(u.embedding_)),
                score(GaussianMixtureClusterer(n_clusters=10, fit_sample=None).fit(u.embedding_).predict(u.embedding_)))

    rows: list[tuple[str, float, str, str, str]] = []
    if args.pixels:
        from imgclust.reduce.streaming import StreamingPCA

        flat = X.reshape(len(X), -1).numpy()
        rows.append(("pixels, IPCA(50)", 0.0, *three_ways(StreamingPCA(n_components=50).fit(flat).transform(flat))))
    train_s = 0.0
    for epoch in range(1, checkpoints[-1] + 1):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), 256):
            xb = random_affine(X[perm[i:i + 256]])
            loss = F.mse_loss(net(xb)[0], xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s += time.perf_counter() - t0
        if epoch not in checkpoints:
            continue
        net.eval()
        emb = encode_batched(net, X, batch_size=1024, device=torch.device("cpu"))
        rows.append((f"ConvAE, {epoch} epochs, embedding {args.embed_dim}", train_s, *three_ways(emb)))
        log.info("epoch %d: %s", epoch, rows[-1])
    print(f"Fashion-MNIST train subset of {len(X)} images; load average {os.getloadavg()[0]:.2f} at the end\n")
    print("| features | train s | k-means on features | UMAP + k-means | UMAP + GMM |")
    print("|---|---|---|---|---|")
    for name, sec, a, b, c in rows:
        print(f"| {name} | {sec:.0f} | {a} | {b} | {c} |")


if __name__ == "__main__":
    main()
