"""Does a stronger representation, or another score around it, see a held-out kind of image? (issue 23)

The deep recipe's novelty score (then ``pca-residual`` on the ``simclr`` representation, :mod:`imgclust.models.novelty`)
reached AUROC 0.81 on Fashion-MNIST held-out class pairs, against the issue's goal of 0.9. This benchmark asks
which lever moves it, per held-out pair and seed (its ``layer-4`` score is what the pipeline computes since: the
``mahalanobis`` kind on the statistics the ``deep:`` extractor stores):

* the encoder: ``simclr``'s default small CNN (the demo's, ``--epochs 10``) or ResNet-18 with SimCLR's CIFAR stem
  (``--encoder resnet18``, the recipe that gave the best clustering here, ``--epochs 20``), trained with
  ``create_deep("simclr", k=8, ...)`` on a seeded 10,000-image sample of the 8 known classes' **train** images;
* the score, in the representation ``h`` (the pooled encoder output) or its unit vector ``e`` (what the
  pipeline stores): ``knn-1`` / ``knn-20`` (Euclidean distance to the k-th nearest reference ``e``),
  ``mahalanobis`` (one Gaussian on the references), ``pca32-residual`` (the pipeline's score for deep recipes;
  ``pca8`` / ``pca16`` / ``pca64`` the other sizes), ``neg-norm`` (``-||h||``) and ``csi`` (nearest-reference
  cosine times ``||h||``; Tack et al., "CSI: Novelty Detection via Contrastive Learning on Distributionally
  Shifted Instances", NeurIPS 2020), ``*-flip`` (the unit mean of the image's and its mirror's ``e``, a
  test-time augmentation), ``layer-L`` (Mahalanobis distance of the mean and standard deviation of an
  intermediate feature map, small encoder only; Lee et al., "A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018), ``layers-34`` (the same on layers 3 and 4
  side by side), ``layer-4-tied20`` (Lee et al.'s class-conditional form without labels: the nearest of 20
  k-means groups of the references' ``e``, one covariance pooled within the groups), ``layer-4-wknn20``
  (distance to the 20th nearest reference after whitening by the shrunk covariance), and ``pixels`` (the pixel
  recipe's score, distance to the 20th nearest reference projected on a PCA-50 of the pixels);
* fusions ``A & B``: Fisher's combination ``-sum log p`` of the scores' conformal p-values (each against its own
  calibration rows), itself thresholded conformally.

References (6,667) and calibration rows (3,333) are disjoint rows of the 10,000 fitted images; thresholds are
split-conformal at ``--rate``. The night is the **test** split (8,000 images of the known classes, 2,000 of the
held-out pair). Reported: AUROC, and the flagged share of held-out-class ("new") and of known-class ("known")
test images at the threshold. A trained encoder is saved under ``--cache`` and reused by a later run with the
same pair, seed, encoder and epochs (the log says which).

    PYTHONPATH=. .venv/bin/python benchmarks/novelty_representation.py --pairs 0-6,5-7,8-9
    PYTHONPATH=. .venv/bin/python benchmarks/novelty_representation.py --pairs 0-6 --encoder resnet18 --epochs 20
    python benchmarks/novelty_representation.py --encoder resnet18 --epochs 50 --device cuda   # on a GPU machine

The representations are computed on the CPU whatever ``--device`` (the scores do not depend on it beyond float
rounding).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import fashion_mnist_splits, markdown_table, setup_logging
from novelty_heldout import conformal_threshold, knn_distances

log = logging.getLogger("benchmarks.novelty_representation")
FIT_ROWS, CAL_ROWS = 10_000, 3_333
LAYERS = {"layer-1": 2, "layer-2": 6, "layer-3": 10, "layer-4": 13}
"""Index of each ReLU of the small encoder's ``nn.Sequential`` (:class:`~imgclust.deep.networks.ContrastiveNet`)."""
FUSIONS = (("mahalanobis", "knn-1"), ("pca32-residual", "pixels"), ("mahalanobis", "pixels"),
           ("pca32-residual-flip", "knn-1"), ("layer-3", "layer-4", "mahalanobis"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default="0-6,5-7,8-9", help="held-out class pairs (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", choices=("small", "resnet18"), default="small")
    p.add_argument("--epochs", type=int, default=10, help="simclr training epochs (default %(default)s, the demo's)")
    p.add_argument("--device", default="cpu", help="where the encoder trains and embeds: cpu or cuda (default %(default)s)")
    p.add_argument("--rate", type=float, default=0.05, help="target false-novel rate (default %(default)s)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/imgclust-novelty-encoders"),
                   help="trained encoders are saved and reused here (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: one pair, 1 epoch, 2,000 fitted images")
    return p.parse_args(argv)  # no quiet-machine wait: nothing reported depends on timing


def unit(h: np.ndarray) -> np.ndarray:
    """Rows ``(n, d)`` scaled to unit length."""
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def mahalanobis(ref: np.ndarray, q: np.ndarray, shrink: float = 1e-6) -> np.ndarray:
    """Squared Mahalanobis distance ``(m,)`` of rows ``q`` to one Gaussian on ``ref``, covariance shrunk by
    ``shrink`` x its mean eigenvalue."""
    cov = np.cov(ref.astype(np.float64), rowvar=False)
    cov += shrink * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    diff = q.astype(np.float64) - ref.mean(axis=0)
    return np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff)


def whitener(ref: np.ndarray, shrink: float = 1e-3) -> Callable[[np.ndarray], np.ndarray]:
    """Map rows ``(m, d)`` to ``(m, d)`` coordinates whitened by ``ref``'s covariance, shrunk as in
    :func:`mahalanobis`; squared lengths are Mahalanobis distances to ``ref``'s mean."""
    mean, cov = ref.mean(axis=0), np.cov(ref.astype(np.float64), rowvar=False)
    w, v = np.linalg.eigh(cov)
    scale = v / np.sqrt(w + shrink * w.mean())
    return lambda q: ((q.astype(np.float64) - mean) @ scale).astype(np.float32)


def tied_mahalanobis(ref: np.ndarray, q: np.ndarray, groups: np.ndarray, shrink: float = 1e-3) -> np.ndarray:
    """Squared Mahalanobis distance ``(m,)`` of rows ``q`` to the nearest group mean of ``ref`` under one
    covariance pooled within the groups ``(n,)`` (Lee et al. 2018's tied class-conditional Gaussians)."""
    names, inverse = np.unique(groups, return_inverse=True)
    means = np.stack([ref[inverse == g].mean(axis=0) for g in range(len(names))])
    white = whitener(ref - means[inverse] + ref.mean(axis=0), shrink)
    zq, zm = white(q), white(means)
    return ((zq[:, None, :] - zm[None]) ** 2).sum(-1).min(axis=1)


def pca_residual(ref: np.ndarray, q: np.ndarray, m: int) -> np.ndarray:
    """Distance ``(m,)`` of rows ``q`` to the ``m``-dim PCA subspace of ``ref``."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(m, ref.shape[1]), random_state=0).fit(ref)
    return np.linalg.norm(q - pca.inverse_transform(pca.transform(q)), axis=1)


def conformal_pvalues(cal: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(1 + #{cal >= s}) / (n + 1)`` for each score ``s``: small for scores above most calibration rows."""
    ordered = np.sort(cal)
    return (cal.size + 1 - np.searchsorted(ordered, scores, side="left")) / (cal.size + 1)


def trained_encoder(x: np.ndarray, held: tuple[int, int], args: argparse.Namespace, fit_rows: int) -> object:
    """The ``simclr`` estimator for this pair, seed, encoder and length: loaded from ``--cache`` or trained."""
    from imgclust.deep.contrastive import ContrastiveClusterer
    from imgclust.deep.methods import create_deep

    folder = args.cache / f"{held[0]}-{held[1]}_seed{args.seed}_{args.encoder}_{args.epochs}ep_{fit_rows}"
    if (folder / "estimator.json").exists():
        log.info("pair %s: encoder loaded from %s", held, folder)
        return ContrastiveClusterer.load(folder)
    t0 = time.perf_counter()
    options = {} if args.encoder == "small" else {"encoder": args.encoder}
    est = create_deep("simclr", k=8, epochs=args.epochs, seed=args.seed, device=args.device, **options).fit(x)
    log.info("pair %s: %s encoder trained on %d images in %.0f s (%d epochs)", held, args.encoder, len(x),
             time.perf_counter() - t0, args.epochs)
    est.save(folder)
    return est


def representations(est: object, x: np.ndarray, small: bool) -> dict[str, np.ndarray]:
    """``{"h": pooled output (n, d), "h-flip": the same of the mirrored images, "layer-L": (n, 2 c) ...}``."""
    import torch

    net = est.network_.eval().cpu()  # type: ignore[attr-defined]
    maps: dict[str, torch.Tensor] = {}
    hooks = [net.encoder[i].register_forward_hook(lambda _m, _i, o, name=name: maps.__setitem__(name, o))
             for name, i in (LAYERS.items() if small else ())]
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    try:
        for key, images in (("h", x), ("h-flip", x[:, :, ::-1].copy())):
            xt = est._to_tensor(images)  # type: ignore[attr-defined]
            with torch.inference_mode():
                for s in range(0, len(xt), 1024):
                    out[key].append(net.encoder(xt[s:s + 1024]).numpy())
                    if key == "h":
                        for name, fm in maps.items():
                            out[name].append(torch.cat([fm.mean((2, 3)), fm.std((2, 3))], 1).numpy())
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in out.items()}


def run_pair(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             held: tuple[int, int], args: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    """``{score: (AUROC, new flagged, known flagged)}`` for one held-out pair."""
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(args.seed)
    fit_rows = 2_000 if args.quick else FIT_ROWS
    known = rng.permutation(np.flatnonzero(~np.isin(y_train, held)))
    fit_idx = np.sort(known[:fit_rows])
    est = trained_encoder(x_train[fit_idx], held, args, fit_rows)
    small = args.encoder == "small"
    fit, test = representations(est, x_train[fit_idx], small), representations(est, x_test, small)
    perm = rng.permutation(fit_rows)
    cal, ref = perm[:round(fit_rows * CAL_ROWS / FIT_ROWS)], perm[round(fit_rows * CAL_ROWS / FIT_ROWS):]

    def both(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        return fn(a[ref], a[cal]), fn(a[ref], b)

    e_fit, e_test = unit(fit["h"]), unit(test["h"])
    ef_fit, ef_test = unit(e_fit + unit(fit["h-flip"])), unit(e_test + unit(test["h-flip"]))
    s: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k in (1, 20):
        s[f"knn-{k}"] = both(lambda r, q, k=k: knn_distances(r, q, k)[:, -1], e_fit, e_test)
    s["mahalanobis"] = both(mahalanobis, e_fit, e_test)
    s["mahalanobis-h"] = both(mahalanobis, fit["h"], test["h"])
    for m in (8, 16, 32, 64):
        s[f"pca{m}-residual"] = both(lambda r, q, m=m: pca_residual(r, q, m), e_fit, e_test)
    s["mahalanobis-flip"] = both(mahalanobis, ef_fit, ef_test)
    s["pca32-residual-flip"] = both(lambda r, q: pca_residual(r, q, 32), ef_fit, ef_test)
    norm_fit, norm_test = np.linalg.norm(fit["h"], axis=1), np.linalg.norm(test["h"], axis=1)
    s["neg-norm"] = (-norm_fit[cal], -norm_test)
    cos_cal, cos_test = (1 - d ** 2 / 2 for d in s["knn-1"])
    s["csi"] = (-cos_cal * norm_fit[cal], -cos_test * norm_test)
    for name in LAYERS if small else ():
        s[name] = both(lambda r, q: mahalanobis(r, q, 1e-3), fit[name], test[name])
    if small:
        from sklearn.cluster import KMeans

        l34_fit, l34_test = (np.concatenate([d["layer-3"], d["layer-4"]], axis=1) for d in (fit, test))
        s["layers-34"] = both(lambda r, q: mahalanobis(r, q, 1e-3), l34_fit, l34_test)
        groups = KMeans(20, n_init=3, random_state=args.seed).fit_predict(e_fit[ref])
        s["layer-4-tied20"] = both(lambda r, q: tied_mahalanobis(r, q, groups), fit["layer-4"], test["layer-4"])
        white = whitener(fit["layer-4"][ref])
        s["layer-4-wknn20"] = both(lambda r, q: knn_distances(white(r), white(q), 20)[:, -1],
                                   fit["layer-4"], test["layer-4"])
    px_fit = x_train[fit_idx].reshape(fit_rows, -1) / 255.0
    px_test = x_test.reshape(len(x_test), -1) / 255.0
    pca = PCA(n_components=50, random_state=0).fit(px_fit[ref])

    def pix(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = pca.transform(q)
        return z, np.linalg.norm(q - pca.inverse_transform(z), axis=1)

    (z_ref, _), (z_cal, r_cal), (z_test, r_test) = pix(px_fit[ref]), pix(px_fit[cal]), pix(px_test)
    s["pixels"] = (np.hypot(knn_distances(z_ref, z_cal, 20)[:, -1], r_cal),
                   np.hypot(knn_distances(z_ref, z_test, 20)[:, -1], r_test))
    for names in FUSIONS:
        if all(n in s for n in names):
            s[" & ".join(names)] = tuple(-sum(np.log(conformal_pvalues(s[n][0], s[n][i])) for n in names)
                                         for i in (0, 1))  # type: ignore[assignment]
    is_new = np.isin(y_test, held)
    out = {}
    for name, (c, t) in s.items():
        thr = conformal_threshold(c, args.rate)
        out[name] = (float(roc_auc_score(is_new, t)), float((t[is_new] > thr).mean()),
                     float((t[~is_new] > thr).mean()))
    return out


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x_train, y_train, x_test, y_test = fashion_mnist_splits()
    pairs = [tuple(int(c) for c in p.split("-")) for p in args.pairs.split(",") if p.strip()]
    if args.quick:
        pairs, args.epochs = pairs[:1], 1
    t0 = time.perf_counter()
    results = {p: run_pair(x_train, y_train, x_test, y_test, p, args) for p in pairs}  # type: ignore[arg-type]
    names = list(next(iter(results.values())))
    head = ["score", "AUROC mean (min)", *[f"AUROC {a}-{b}" for a, b in pairs], "new flagged mean (min)",
            "known flagged mean (max)"]
    rows = []
    for n in names:
        auc, new, known = (np.array([results[p][n][i] for p in pairs]) for i in range(3))
        rows.append([n, f"{auc.mean():.3f} ({auc.min():.3f})", *[f"{a:.3f}" for a in auc],
                     f"{new.mean():.1%} ({new.min():.1%})", f"{known.mean():.1%} ({known.max():.1%})"])
    log.info("simclr %s encoder, %d epochs, seed %d, rate %.2f; %.0f s in all\n%s", args.encoder, args.epochs,
             args.seed, args.rate, time.perf_counter() - t0, markdown_table(head, rows))


if __name__ == "__main__":
    main()
