"""Clustering quality on Fashion-MNIST: every deep method next to the seed paper's table and plain baselines.

    python benchmarks/quality.py [--split test|all] [--methods convae+umap,convae,...] [--epochs N]
                                 [--max-iter N] [--threads N] [--out FILE.md] [--labels-out DIR]

Prints one Markdown section: a header (date, host, CPU count, torch threads, load average before
and after, the command) and a table of ACC / NMI (Hungarian accuracy, normalised mutual
information) with wall time and device for each row, the published Fashion-MNIST numbers of
METHODS.md §4 (Qian et al. 2025, Table) beside them, and pixel baselines computed in the same run:
raw pixels + k-means, IPCA(50) + UMAP(10) + k-means, IPCA(50) + UMAP(10) + GMM (how much of N2D's gain is
the GMM alone) and the same with the GMM consensus of ``n2d`` (how much the consensus adds). Labels are used only for scoring; defaults were chosen once, on a 10k
*train* subset (BENCHMARKS.md, "Choosing the N2D clusterer").

Shared pretraining: ``convae``, ``convae+umap``, ``dec``, ``idec`` and ``nnc`` all start from the
same conv autoencoder (METHODS.md §4 stage 1), so it is trained once (with the settings of
``create_deep("convae")``) and handed to the others as ``pretrained``; each such row's ``train s``
is the shared pretraining time plus the row's own time (what a user running the method alone
would pay), and the ``own s`` column is the row's own part. ``ascae``/``scae``/``deepcluster``
train from scratch. ``X+umap`` = the method's features, then UMAP(10, n_neighbors 20, min_dist 0)
and a full-covariance GMM (N2D's last two stages, McConville et al. 2020); ``n2d`` = ``convae+umap``,
the library's ``create_deep("n2d")`` recipe computed from the shared ConvAE, ``n2d-scae`` = ``scae+umap``; the GMM of ``X+umap`` rows is
the consensus of ``N2D_CONSENSUS_RUNS`` EM runs, as in ``n2d``. ``simclr-resnet`` (:data:`RECIPES`) is ``simclr``
with the ResNet-18 encoder and SCAN's head: ``--split all --methods simclr-resnet --device cuda`` trains and
clusters the 70k recipe of BENCHMARKS.md in one run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from imgclust.deep.methods import N2D_CONSENSUS_RUNS

log = logging.getLogger("benchmarks.quality")

PUBLISHED = {  # METHODS.md §4, Fashion-MNIST column: ACC, NMI
    "k-means (paper)": (0.474, 0.512), "DEC (paper)": (0.518, 0.546), "IDEC (paper)": (0.529, 0.557),
    "VaDE (paper)": (0.629, 0.611), "DSCDA (paper)": (0.662, 0.645), "TDEC (paper)": (0.645, 0.693),
    "DeepDPM (paper)": (0.610, 0.500), "NNC (paper, Qian et al.)": (0.646, 0.707),
    "N2D (McConville et al. 2020, 70k)": (0.672, 0.684),
}
_SHARED_AE = ("convae", "dec", "idec", "nnc")
RECIPES = {"simclr-resnet": ("simclr", {"encoder": "resnet18", "clusterer": "scan"})}
"""Method names of this benchmark that are a library method with options (``imgclust refine --option``):
``simclr-resnet`` = ``simclr`` with the CIFAR-stem ResNet-18 and SCAN's head on whitened neighbours, the recipe
of BENCHMARKS.md's 70k result (meant for a GPU: ~20 min of training for 10k images on 2 CPU cores)."""
Row = tuple[str, float, float, float, float, str]  # name, ACC, NMI, train s, own s, device


def _score(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    from imgclust.metrics import cluster_accuracy, nmi

    return cluster_accuracy(y, pred), nmi(y, pred)


def _kmeans_all_rows(X: np.ndarray, seed: int) -> np.ndarray:
    """k-means (k=10, 10 restarts) trained on every row of ``X`` (n, d), not the library's default sample of
    256 points per centroid: with a sample, the baseline itself moved between ACC 0.488 and 0.539 across runs."""
    from imgclust.cluster.classic import FaissKMeans

    km = FaissKMeans(n_clusters=10, n_redo=10, seed=seed, max_points_per_centroid=-(-len(X) // 10))
    return km.fit(X).predict(X)


def _umap(feats: np.ndarray, seed: int) -> np.ndarray:
    """UMAP(10, 20 neighbours, min_dist 0) of features ``(N, d)`` -> ``(N, 10)`` (N2D's settings)."""
    from imgclust.reduce.streaming import UMAPReducer

    return UMAPReducer(n_components=10, n_neighbors=20, min_dist=0.0, fit_sample=None,
                       random_state=seed).fit(feats).embedding_


def _gmm(Z: np.ndarray, seed: int, runs: int = 1) -> np.ndarray:
    """Full-covariance GMM (k=10, every row) labels ``(N,)`` of ``Z`` ``(N, d)``: N2D's clusterer; ``runs`` > 1 =
    the evidence-accumulation consensus of that many EM runs (the library's ``consensus_runs``)."""
    from imgclust.cluster.gmm import GaussianMixtureClusterer

    return GaussianMixtureClusterer(n_clusters=10, fit_sample=None, random_state=seed,
                                    consensus_runs=runs).fit(Z).predict(Z)



def baselines(x: np.ndarray, y: np.ndarray, seed: int) -> list[Row]:
    from imgclust.reduce.streaming import StreamingPCA

    flat = x.reshape(len(x), -1).astype(np.float32) / 255.0
    rows: list[Row] = []
    t0 = time.perf_counter()
    pred = _kmeans_all_rows(flat, seed)
    s = time.perf_counter() - t0
    rows.append(("raw pixels + k-means", *_score(y, pred), s, s, "cpu"))
    t0 = time.perf_counter()
    u = _umap(StreamingPCA(n_components=50).fit(flat).transform(flat), seed)
    s = time.perf_counter() - t0
    t1 = time.perf_counter()
    pred = _kmeans_all_rows(u, seed)
    s_km = time.perf_counter() - t1
    rows.append(("IPCA(50) + UMAP(10) + k-means", *_score(y, pred), s + s_km, s + s_km, "cpu"))
    t1 = time.perf_counter()
    pred = _gmm(u, seed)
    s_gmm = time.perf_counter() - t1
    rows.append(("IPCA(50) + UMAP(10) + GMM", *_score(y, pred), s + s_gmm, s + s_gmm, "cpu"))
    t1 = time.perf_counter()
    pred = _gmm(u, seed, N2D_CONSENSUS_RUNS)
    s_gmm = time.perf_counter() - t1
    rows.append((f"IPCA(50) + UMAP(10) + GMM consensus ({N2D_CONSENSUS_RUNS} runs)", *_score(y, pred), s + s_gmm, s + s_gmm,
                 "cpu"))
    return rows


class Runner:
    """Trains the requested methods, sharing one pretrained conv autoencoder where methods start from it."""

    def __init__(self, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> None:
        self.x, self.y, self.args = x, y, args
        self._ae: Any = None
        self._ae_seconds = 0.0
        self._fitted: dict[str, tuple[Any, float]] = {}
        self.predictions: dict[str, np.ndarray] = {}
        """Labels ``(N,)`` of each scored method, by its requested name."""

    def _create(self, name: str, **extra: Any) -> Any:
        from imgclust.deep.methods import create_deep

        a = self.args
        return create_deep(name, k=10, epochs=a.epochs, max_iter=a.max_iter, seed=a.seed, device=a.device, **extra)

    def pretrained_ae(self) -> tuple[Any, float]:
        """The shared ConvAE and its training seconds; with ``--pretrained DIR`` it is loaded from DIR when
        a previous run saved it there (its recorded time is reused), else trained and saved there."""
        if self._ae is not None:
            return self._ae, self._ae_seconds
        from imgclust.deep.autoencoder import AutoencoderClusterer
        from imgclust.deep.training import data_fingerprint

        where = self.args.pretrained
        if where and os.path.exists(os.path.join(where, "estimator.json")):
            self._ae = AutoencoderClusterer.load(where)
            with open(os.path.join(where, "bench.json"), encoding="utf-8") as fh:
                info = json.load(fh)
            self._ae_seconds = float(info["seconds"])
            if info.get("data") != data_fingerprint(self.x):
                raise SystemExit(f"{where} holds an autoencoder trained on other images; use another --pretrained")
            log.info("loaded the shared conv autoencoder from %s (trained in %.0f s)", where, self._ae_seconds)
            return self._ae, self._ae_seconds
        log.info("pretraining the shared conv autoencoder on %d images", len(self.x))
        t0 = time.perf_counter()
        self._ae = self._create("convae").fit(self.x)
        self._ae_seconds = time.perf_counter() - t0
        if where:
            self._ae.save(where)
            with open(os.path.join(where, "bench.json"), "w", encoding="utf-8") as fh:
                json.dump({"seconds": self._ae_seconds, "load_after": _load(), "data": data_fingerprint(self.x)}, fh)
        return self._ae, self._ae_seconds

    def fitted(self, name: str) -> tuple[Any, float, float]:
        """``(estimator, total seconds, own seconds)`` of method ``name`` fitted on the images."""
        if name == "convae":
            ae, s = self.pretrained_ae()
            return ae, s, s
        if name in self._fitted:
            est, own = self._fitted[name]
        else:
            extra: dict[str, Any] = {}
            if name in _SHARED_AE:
                extra["pretrained"] = self.pretrained_ae()[0]
            base, options = RECIPES.get(name, (name, {}))
            if base == "simclr" and self.args.tone_curve is not None:
                extra["tone_curve"] = self.args.tone_curve
            est = self._create(base, **options, **extra)
            t0 = time.perf_counter()
            est.fit(self.x)
            own = time.perf_counter() - t0
            self._fitted[name] = (est, own)
        total = own + (self._ae_seconds if name in _SHARED_AE else 0.0)
        return est, total, own

    def row(self, method: str) -> Row:
        from imgclust.devices import resolve_device

        labels = {"n2d": "n2d (ours: ConvAE + UMAP + GMM)", "n2d-scae": "n2d-scae (ours: SCAE F + UMAP + GMM)",
                  "n2d-ensemble": "n2d-ensemble (ours: pixels + 5 SCAE, UMAP + GMM runs per view, one consensus)",
                  "simclr": "simclr (ours: SimCLR CNN + UMAP + GMM)",
                  "simclr-resnet": "simclr-resnet (ours: SimCLR ResNet-18 + SCAN, whitened neighbours)"}
        label, requested = labels.get(method, f"{method} (ours)"), method
        method = {"n2d": "convae+umap", "n2d-scae": "scae+umap"}.get(method, method)
        name, umap = method.removesuffix("+umap"), method.endswith("+umap")
        est, total, own = self.fitted(name)
        pred = est.labels_
        if umap:
            t0 = time.perf_counter()
            feats = est.transform(self.x)
            pred = _gmm(_umap(feats, self.args.seed), self.args.seed, N2D_CONSENSUS_RUNS)
            extra = time.perf_counter() - t0
            total, own = total + extra, extra
        self.predictions[requested] = pred
        return (label, *_score(self.y, pred), total, own, str(resolve_device(self.args.device)))


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _save_labels(folder: str, name: str, pred: np.ndarray, y: np.ndarray) -> None:
    """Write ``pred`` ``(N,)`` to ``folder/name.npy`` and log each cluster's size and its two largest classes."""
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f"{name}.npy"), pred)
    for c in np.unique(pred):
        classes, counts = np.unique(y[pred == c], return_counts=True)
        top = np.argsort(-counts)[:2]
        log.info("%s cluster %d: %d images; top classes %s", name, c, counts.sum(),
                 ", ".join(f"{classes[i]} ({counts[i]})" for i in top))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=["test", "all"], default="test")
    p.add_argument("--methods", default="n2d,n2d-scae,convae,ascae,ascae+umap,scae,dec,idec,nnc,deepcluster")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-iter", type=int, default=2000)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--limit", type=int, default=None, help="seeded subset (smoke runs)")
    p.add_argument("--pretrained", default=None, help="folder to save the shared ConvAE in, or load it from "
                   "when a previous run saved it there (lets several runs share one pretraining)")
    from imgclust.deep.contrastive import TONE_CURVES

    p.add_argument("--tone-curve", default=None, choices=TONE_CURVES,
                   help="simclr's per-view tone curve (default: the method's own default)")
    p.add_argument("--no-baselines", action="store_true", help="skip the pixel baselines (split runs)")
    p.add_argument("--out", default=None, help="also write the Markdown section to this file")
    p.add_argument("--labels-out", default=None, help="folder to save each method's labels in "
                   "(<method>-seed<S>.npy) and log which classes each cluster holds")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from imgclust.data.datasets import load_fashion_mnist

    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_before, t_all = datetime.now(timezone.utc), _load(), time.perf_counter()
    x, y = load_fashion_mnist(args.split)
    if args.limit:
        idx = np.sort(np.random.default_rng(args.seed).choice(len(x), args.limit, replace=False))
        x, y = x[idx], y[idx]
    rows = [] if args.no_baselines else baselines(x, y, args.seed)
    runner = Runner(x, y, args)
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        log.info("training %s on %d images (load %s)", method, len(x), _load())
        rows.append(runner.row(method))
        log.info("%s: ACC %.3f NMI %.3f in %.0f s", *rows[-1][:4])
        if args.labels_out:
            _save_labels(args.labels_out, f"{method}-seed{args.seed}", runner.predictions[method], y)
    lines = [
        f"### Clustering quality, Fashion-MNIST {args.split} ({len(x)} images), {started:%Y-%m-%d %H:%M} UTC", "",
        f"- machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} intra-op threads; load average (1/5/15 min) before {load_before}, "
        f"after {_load()}; whole run {time.perf_counter() - t_all:.0f} s",
        f"- command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- settings: epochs={args.epochs}, max_iter={args.max_iter}, seed={args.seed}, device={args.device}"
        + (f", simclr tone curve {args.tone_curve or 'default'}"
           if {"simclr", "simclr-resnet"} & set(args.methods.split(",")) else "") + "; "
        "convae / dec / idec / nnc share one pretrained ConvAE (its time is included in their `train s`)", "",
        "| method | ACC | NMI | train s | own s | device |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.3f} | {m:.3f} | {s:.0f} | {o:.0f} | {d} |" for n, a, m, s, o, d in rows]
    lines += [f"| {n} | {a:.3f} | {m:.3f} | - | - | published |" for n, (a, m) in PUBLISHED.items()]
    text = "\n".join(lines)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)  # the benchmark's table is its output


if __name__ == "__main__":
    main()
