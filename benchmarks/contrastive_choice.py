"""How the ``simclr`` defaults were chosen: training length, scored at several epochs of one run.

Runs on the seeded 10,000-image subset of the Fashion-MNIST **train** split (``benchmarks/train_subset.py``;
never the test split ``benchmarks/quality.py`` scores). Trains the library's
:class:`~imgclust.deep.contrastive.ContrastiveClusterer` with a checkpoint folder, and extends the same
run to each listed epoch count (``epochs`` is a resumable parameter, so epoch 40 continues epoch 20's
checkpoint instead of starting again). At each count it prints the estimator's own labels (UMAP(10, 20
neighbours, min_dist 0) + 8-run GMM consensus) and, for comparison, cosine k-means on the representation.

    .venv/bin/python benchmarks/contrastive_choice.py --epochs 10,20,40,60
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time

from train_subset import add_subset_args, train_subset

log = logging.getLogger("benchmarks.contrastive_choice")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", default="10,20,40,60", help="epoch counts to score, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    add_subset_args(p)
    args = p.parse_args()
    x, y = train_subset(args)
    from imgclust.cluster.classic import FaissKMeans
    from imgclust.deep.contrastive import ContrastiveClusterer
    from imgclust.metrics import cluster_accuracy, nmi

    rows: list[tuple[int, float, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="imgclust-contrastive-choice-") as ckpt:
        for epochs in sorted({int(e) for e in args.epochs.split(",")}):
            t0 = time.perf_counter()
            est = ContrastiveClusterer.with_training(n_clusters=10, epochs=epochs, seed=args.seed, device="cpu",
                                                     checkpoint_dir=ckpt).fit(x)
            feats = est.transform(x)
            km = FaissKMeans(n_clusters=10, n_redo=10, seed=0, spherical=True).fit(feats).predict(feats)
            train_s = sum(h["seconds"] for h in est.history_)
            rows.append((epochs, train_s, f"{cluster_accuracy(y, km):.3f} / {nmi(y, km):.3f}",
                         f"{cluster_accuracy(y, est.labels_):.3f} / {nmi(y, est.labels_):.3f}"))
            log.info("epochs %d done in %.0f s", epochs, time.perf_counter() - t0)
    print(f"\nsimclr on {len(x)} Fashion-MNIST train images (seed {args.seed}, {args.threads} threads); ACC / NMI")
    print("| epochs | training s (cumulative) | cosine k-means on the representation | UMAP + GMM consensus (simclr) |")
    print("|---|---|---|---|")
    for epochs, train_s, km_s, gmm_s in rows:
        print(f"| {epochs} | {train_s:.0f} | {km_s} | {gmm_s} |")


if __name__ == "__main__":
    main()
