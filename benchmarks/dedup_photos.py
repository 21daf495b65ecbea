"""Benchmark: near-duplicate groups on real photos, per kind of variant, and the search cost at scale.

**Corpus.** A photo-variant corpus (:func:`imgclust.data.photos.build_photo_variant_corpus`) from Debian's wallpapers:
one source photo per family (``--n-sources``, default all), each turned into 12 files (``original``, ``crop85``,
``half``, ``thumb``, ``jpeg35``, ``jpeg60``, ``jpeg90``, ``flip``, ``colour``, ``rotate``, ``webp``, ``png``;
:data:`imgclust.data.photos.VARIANT_KINDS`), masters at most ``--max-side`` px. The files go through the product's
path: ``ingest`` -> ``extract_shard`` per extractor -> :func:`imgclust.models.dedup.dedup_store` (the default
:class:`~imgclust.models.dedup.DedupConfig`: threshold 0.98, k 10, representative rule) and, for the sweep,
:func:`~imgclust.models.dedup.find_near_duplicates` on the same stored rows.

**Metric (pairwise).** A pair of distinct images is *positive* when both come from the same source photo (one
corpus folder) and *predicted positive* when both are in one near-duplicate group (an image in no group shares
a group with nothing). Precision = true predicted pairs / predicted pairs; recall = true predicted pairs /
positive pairs; F1 their harmonic mean.

* *per kind* K: recall over the pairs (``original``, K-variant) of each source; precision over the predicted
  pairs that involve a K image (either side, any partner); F1 of the two.
* *goal*: all pairs among the images of kinds ``original``, ``crop85``, ``half``, ``jpeg35``, ``colour`` and
  ``rotate`` (the issue's goal set: crops to 85 %, half-size copies, JPEG quality 35, brightness changes,
  small rotations), variant-variant pairs included; *all*: all pairs of the corpus (every kind, ``flip``
  too).

**Cost.** Synthetic L2-normalised Gaussian rows (the search time does not depend on the values): the all-pairs
search of ``find_near_duplicates`` (what ``dedup_store`` runs: exact faiss k-NN of every row, then the grouping)
at ``--cost-sizes`` rows of ``--cost-dims`` dimensions, and the nightly flagging
(:func:`~imgclust.models.dedup.nearest_stored`, ``--cost-new`` new rows against the stored rows streamed in batches of
65,536), each in a fresh process: seconds and the growth of the process's peak RSS (VmHWM). 1M rows are
projected from the largest measured size: all-pairs time x (1M / n)^2 and memory x (1M / n); nightly time and
memory from the stored rows' linear term.

    .venv/bin/python benchmarks/dedup_photos.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/dedup_photos.py --quick    # smoke run
    .venv/bin/python benchmarks/dedup_photos.py --seed 1 --no-cost --extractors pixels-rgb32,layout  # other variants
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from quiet import add_quiet_args, wait_for_quiet

log = logging.getLogger("benchmarks.dedup_photos")

GOAL_KINDS = ("crop85", "half", "jpeg35", "colour", "rotate")
EXTRACTORS = ("pixels", "pixels-rgb32", "hog", "colorhist", "resnet18", "layout")
DAY = dt.date(2026, 12, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="corpus seed and random-weight seed (default: 0)")
    p.add_argument("--n-sources", type=int, default=None, help="photo families to use (default: all)")
    p.add_argument("--max-side", type=int, default=1024, help="longest side of each master (default: 1024)")
    p.add_argument("--extractors", default=",".join(EXTRACTORS),
                   help="backbones (neural ones with random weights: none can be downloaded here)")
    p.add_argument("--thresholds", default="0.9,0.95,0.98,0.99", help="cosine thresholds of the sweep")
    p.add_argument("--cost-sizes", default="10000,30000,100000", help="rows of the all-pairs cost rows")
    p.add_argument("--cost-dims", default="253,512", help="dimensions of the cost rows")
    p.add_argument("--cost-new", type=int, default=1000, help="new rows of the nightly flagging cost rows")
    p.add_argument("--work-dir", help="where the corpus and store go (default: a temporary folder, removed)")
    p.add_argument("--no-cost", action="store_true", help="only the quality tables (e.g. another corpus seed)")
    p.add_argument("--quick", action="store_true", help="smoke run: 6 sources, small cost sizes")
    p.add_argument("--cost-worker", nargs=4, metavar=("MODE", "N", "D", "NEW"), help=argparse.SUPPRESS)
    add_quiet_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.n_sources, args.cost_sizes, args.cost_dims, args.cost_new = 6, "2000,5000", "253", 200
    return args


# ---- the metric ----------------------------------------------------------------------------------
def pair_scores(truth: np.ndarray, pred: np.ndarray, kinds: np.ndarray) -> dict[str, Any]:
    """Pairwise precision/recall/F1 (module docstring): ``truth`` source index per image, ``pred`` group index
    (-1: in no group), ``kinds`` variant kind per image. Returns ``{"goal": (P, R, F1), "all": ..., kind: ...}``."""
    n = len(truth)
    upper = np.triu(np.ones((n, n), bool), 1)
    positive = (truth[:, None] == truth[None, :]) & upper
    predicted = (pred[:, None] == pred[None, :]) & (pred[:, None] >= 0) & upper

    def prf(mask: np.ndarray) -> tuple[float, float, float]:
        tp = int((positive & predicted & mask).sum())
        n_pred, n_pos = int((predicted & mask).sum()), int((positive & mask).sum())
        precision = tp / n_pred if n_pred else 1.0
        recall = tp / n_pos if n_pos else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    goal = np.isin(kinds, ("original", *GOAL_KINDS))
    out: dict[str, Any] = {"goal": prf(goal[:, None] & goal[None, :]), "all": prf(np.ones((n, n), bool))}
    is_orig = kinds == "original"
    for kind in dict.fromkeys(kinds.tolist()):
        if kind == "original":
            continue
        is_k = kinds == kind
        pairs_ok = (is_orig[:, None] & is_k[None, :]) | (is_k[:, None] & is_orig[None, :])
        n_pos = int((positive & pairs_ok).sum())
        recall = int((positive & predicted & pairs_ok).sum()) / n_pos if n_pos else 1.0
        involves = is_k[:, None] | is_k[None, :]
        n_pred = int((predicted & involves).sum())
        precision = int((predicted & positive & involves).sum()) / n_pred if n_pred else 1.0
        out[kind] = (precision, recall,
                     2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return out


def groups_to_pred(ids: list[str], table: Any) -> np.ndarray:
    """Group index per image id (-1 for images in no group) from a :data:`~imgclust.models.dedup.DEDUP_SCHEMA` table."""
    group_of = dict(zip(table.column("image_id").to_pylist(), table.column("group_id").to_pylist(), strict=True))
    names = {g: i for i, g in enumerate(sorted(set(group_of.values())))}
    return np.asarray([names[group_of[i]] if i in group_of else -1 for i in ids], np.int64)


# ---- quality on the corpus -----------------------------------------------------------------------
def quality(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], list[str], int]:
    from imgclust.config import ExtractConfig, IngestConfig
    from imgclust.data.photos import build_photo_variant_corpus
    from imgclust.extract.shard import extract_shard
    from imgclust.io.features import iter_feature_batches
    from imgclust.io.manifest import ingest, plan_shards, read_manifest
    from imgclust.io.store import Store
    from imgclust.models.dedup import DedupConfig, dedup_store, find_near_duplicates, groups_path

    corpus = build_photo_variant_corpus(work / "corpus", seed=args.seed, n_sources=args.n_sources,
                                        max_side=args.max_side)
    store = Store(work / "store")
    ingest(store, str(corpus.root), config=IngestConfig(), date=DAY, run_id="bench")
    manifest = read_manifest(store, columns=["image_id", "uri"])
    record_of = {i: corpus.record_of(u) for i, u in zip(manifest.column("image_id").to_pylist(),
                                                        manifest.column("uri").to_pylist(), strict=True)}
    if len(record_of) != len(corpus.records):
        raise RuntimeError(f"ingest kept {len(record_of)} of {len(corpus.records)} corpus files")
    specs = plan_shards(store, shard_size=256)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    rows: list[dict[str, Any]] = []
    for name in args.extractors.split(","):
        weights = "random" if name.startswith("resnet") else None
        extract = ExtractConfig(extractor=name, weights=weights, device="cpu", shard_size=256, seed=args.seed)
        busy = wait_for_quiet(args.max_busy, args.max_wait)
        t0 = time.perf_counter()
        key = ""
        for spec in specs:
            key = extract_shard(store, spec, extract)["extractor_key"]
        extract_s = time.perf_counter() - t0
        summary = dedup_store(store, key)  # the defaults, as `imgclust dedup` runs them
        ids: list[str] = []
        blocks = []
        for batch_ids, X in iter_feature_batches(store, key):
            ids += batch_ids
            blocks.append(X)
        X = np.concatenate(blocks)
        truth = np.asarray([sorted(corpus.groups()).index(record_of[i].group) for i in ids], np.int64)
        kinds = np.asarray([record_of[i].kind for i in ids])
        base = {"extractor": name, "key": key, "dim": X.shape[1], "images": len(ids), "extract_s": extract_s,
                "busy": busy}
        default = DedupConfig()
        table = store.read_parquet(groups_path(key))
        rows.append({**base, "threshold": default.threshold, "rule": default.rule, "k": default.k, "default": True,
                     "groups": summary["groups"], "scores": pair_scores(truth, groups_to_pred(ids, table), kinds)})
        sweep = [(t, "representative") for t in thresholds if t != default.threshold] + [
            (default.threshold, "components")]
        for threshold, rule in sweep:
            config = DedupConfig(threshold=threshold, rule=rule)  # type: ignore[arg-type]
            t = find_near_duplicates(ids, X, config)
            rows.append({**base, "threshold": threshold, "rule": rule, "k": config.k, "default": False,
                         "groups": len(set(t.column("group_id").to_pylist())),
                         "scores": pair_scores(truth, groups_to_pred(ids, t), kinds)})
        log.info("%s: goal F1 %.3f at the default", name, rows[-len(sweep) - 1]["scores"]["goal"][2])
    return rows, corpus.kinds(), len(corpus.groups())


# ---- cost at scale: one fresh process per row ------------------------------------------------------
def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def cost_worker(mode: str, n: int, d: int, new: int) -> None:
    """Child process: time the all-pairs search (``pairs``) or the nightly streaming search (``nightly``)."""
    from imgclust.models.dedup import DedupConfig, find_near_duplicates, nearest_stored

    rng = np.random.default_rng(0)
    base = _peak_kib()
    if mode == "pairs":
        X = rng.standard_normal((n, d), dtype=np.float32)
        ids = [f"r{i:07d}" for i in range(n)]
        t0 = time.perf_counter()
        find_near_duplicates(ids, X, DedupConfig())
    else:
        X_new = rng.standard_normal((new, d), dtype=np.float32)
        batch = 65536

        def stored() -> Any:  # generated batch by batch, as read from the store's shards
            for lo in range(0, n, batch):
                m = min(batch, n - lo)
                yield [f"s{lo + j:07d}" for j in range(m)], rng.standard_normal((m, d), dtype=np.float32)

        t0 = time.perf_counter()
        nearest_stored(X_new, stored())
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mib": (_peak_kib() - base) / 1024}))


def cost(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for d in [int(x) for x in args.cost_dims.split(",")]:
        for mode in ("pairs", "nightly"):
            for n in [int(x) for x in args.cost_sizes.split(",")]:
                busy = wait_for_quiet(args.max_busy, args.max_wait)
                out = subprocess.run([sys.executable, __file__, "--cost-worker", mode, str(n), str(d),
                                      str(args.cost_new)], check=True, capture_output=True, text=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"mode": mode, "n": n, "d": d, "new": args.cost_new, "busy": busy, **result})
                log.info("cost %s n=%d d=%d: %.1f s, %.0f MiB", mode, n, d, result["seconds"], result["peak_mib"])
    return rows


# ---- tables --------------------------------------------------------------------------------------
def _f(x: float) -> str:
    return f"{x:.2f}"


def print_tables(rows: list[dict[str, Any]], kinds: list[str], n_groups: int, costs: list[dict[str, Any]]) -> None:
    variant_kinds = [k for k in kinds if k != "original"]
    print(f"\n{n_groups} source photos x {len(kinds)} kinds = {rows[0]['images']} images\n")
    print("Default settings (threshold 0.98, k 10, representative rule): pairwise F1 per kind of variant\n")
    print("| extractor (dim) | goal P | goal R | goal F1 | all F1 | " + " | ".join(variant_kinds)
          + " | groups | extract s | others' CPU % |")
    print("|---" * (len(variant_kinds) + 8) + "|")
    for r in rows:
        if r["default"]:
            s = r["scores"]
            print(f"| {r['extractor']} ({r['dim']}) | {_f(s['goal'][0])} | {_f(s['goal'][1])} | **{_f(s['goal'][2])}** "
                  f"| {_f(s['all'][2])} | " + " | ".join(_f(s[k][2]) for k in variant_kinds)
                  + f" | {r['groups']} | {r['extract_s']:.1f} | {r['busy']:.0f} |")
    print("\nSweep (k 10): goal and all-pairs precision / recall / F1\n")
    print("| extractor | threshold | rule | goal P | goal R | goal F1 | all P | all R | all F1 | groups |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["extractor"], r["rule"] != "representative", r["threshold"])):
        s = r["scores"]
        mark = " (default)" if r["default"] else ""
        print(f"| {r['extractor']} | {r['threshold']:g}{mark} | {r['rule']} | " + " | ".join(
            _f(v) for v in (*s["goal"], *s["all"])) + f" | {r['groups']} |")
    if not costs:
        return
    print("\nCost on synthetic rows (fresh process each; peak = growth of peak RSS)\n")
    print("| search | rows n | D | seconds | peak MiB | projected 1M stored: seconds | projected: GiB | others' CPU % |")
    print("|---|---|---|---|---|---|---|---|")
    for c in costs:
        scale = 1_000_000 / c["n"]
        if c["mode"] == "pairs":
            what = "all pairs (dedup_store: k-NN of every row + groups)"
            t1m, m1m = c["seconds"] * scale * scale, c["peak_mib"] * scale / 1024
        else:
            what = f"nightly: {c['new']} new vs n stored (streamed)"
            t1m, m1m = c["seconds"] * scale, c["peak_mib"] / 1024
        print(f"| {what} | {c['n']:,} | {c['d']} | {c['seconds']:.1f} | {c['peak_mib']:.0f} | {t1m:,.0f} | "
              f"{m1m:.2f} | {c['busy']:.0f} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cost_worker:
        mode, n, d, new = args.cost_worker
        cost_worker(mode, int(n), int(d), int(new))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="dedup-photos-"))
    t0 = time.perf_counter()
    try:
        rows, kinds, n_groups = quality(args, work)
        costs = [] if args.no_cost else cost(args)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print_tables(rows, kinds, n_groups, costs)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
