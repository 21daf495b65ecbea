"""Benchmark: decoding large real photos for a 224-px model, and resnet50 and a ViT through the extraction path.

The photos are a photo-variant corpus (:mod:`imgclust.data.photos`) built at full size from Debian's wallpapers:
baseline JPEG variants (re-encode q90, 85% crop, mirror, colour shift) of every family's largest file; only
those of at least ``--min-mp`` megapixels are used. In one run, side by side:

* **decode**: bytes (already in memory) -> ``decode_image`` -> the model's resize/crop/normalise
  (``preprocess_image``), in a fresh process per row with 1 or ``--threads`` decode threads (as
  ``extract.py`` decodes ahead of the model). *full*: ``decode_image(data)``; *reduced*:
  ``decode_image(data, target_side=R)`` (libjpeg DCT scaling, what extraction now does). Peak memory is
  the growth of the process's peak RSS (VmHWM) over its value after imports and reading the bytes.
* **models** (``--models``, default resnet50 and DINOv2 ViT-S/14; random weights: speed does not depend on
  weight values), on ``--model-images`` of them: *bare*: ``backbone.embed`` on tensors decoded and preprocessed
  beforehand (the model alone); *extract*: ``imgclust.extract.shard.extract_shard`` (read + decode + preprocess +
  embed + Parquet write) with the reduced decode (the default), and for the first model also with the full
  decode (``decode_image`` without ``target_side``, as before). The ratio column is extract / bare.

A warm-up (a few images / one batch / one small shard) precedes every timed part and is excluded.

    .venv/bin/python benchmarks/photos_decode.py            # ~5-8 min on 2 cores
    .venv/bin/python benchmarks/photos_decode.py --quick    # smoke run
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quiet import add_quiet_args, wait_for_quiet

log = logging.getLogger("benchmarks.photos_decode")

KINDS = ("jpeg90", "crop85", "flip", "colour")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="corpus seed and random-weight seed (default: 0)")
    p.add_argument("--min-mp", type=float, default=2.0, help="only JPEGs of at least this many megapixels")
    p.add_argument("--threads", type=int, default=4, help="decode threads of the threaded rows (extract's default)")
    p.add_argument("--model-images", type=int, default=64, help="photos for the model rows (default: 64)")
    p.add_argument("--models", default="resnet50,dinov2-vits14",
                   help="comma-separated backbones for the model rows (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--work-dir", help="where the corpus and stores go (default: a temporary folder, removed)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 sources, 16 model images")
    p.add_argument("--decode-worker", nargs=4, metavar=("LIST", "PREP", "TARGET", "THREADS"), help=argparse.SUPPRESS)
    add_quiet_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.model_images = 16
    return args


# ---- decode rows: one fresh process each ---------------------------------------------------------
def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def decode_worker(list_file: str, prep_json: str, target: str, threads: str) -> None:
    """Child process: decode + preprocess every file in ``list_file``; print img/s and peak RSS growth (JSON)."""
    from imgclust.extract.backbones.preprocessing import Preprocessing, preprocess_image
    from imgclust.extract.images import decode_image

    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(prep_json).items()}
    prep = Preprocessing(**fields)
    blobs = [Path(p).read_bytes() for p in Path(list_file).read_text().split("\n") if p]
    target_side = int(target) or None

    def one(data: bytes) -> int:
        return int(preprocess_image(decode_image(data, target_side=target_side), prep).shape[0])

    with concurrent.futures.ThreadPoolExecutor(max_workers=int(threads)) as pool:
        base = _peak_kib()
        list(pool.map(one, blobs[:2]))  # warm-up (thread start, first-use allocations); its peak counts too
        t0 = time.perf_counter()
        n = len(list(pool.map(one, blobs)))
        seconds = time.perf_counter() - t0
    print(json.dumps({"img_s": n / seconds, "peak_mib": (_peak_kib() - base) / 1024, "images": n}))


def bench_decode(files: list[Path], prep: Any, work: Path, full: bool, threads: int,
                 quiet: Callable[[], float]) -> dict[str, Any]:
    listing = work / "decode-files.txt"
    listing.write_text("\n".join(str(f) for f in files))
    busy = quiet()
    cmd = [sys.executable, __file__, "--decode-worker", str(listing), json.dumps(dataclasses.asdict(prep)),
           "0" if full else str(prep.resize_size), str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "busy": busy}


# ---- model rows ---------------------------------------------------------------------------------
def bench_bare(backbone: Any, files: list[Path], batch_size: int, quiet: Callable[[], float]) -> dict[str, Any]:
    import torch

    from imgclust.extract.images import decode_image

    tensors = [backbone.preprocess(decode_image(f.read_bytes(), target_side=backbone.preprocessing.resize_size))
               for f in files]
    batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
    backbone.embed(batches[0][:8])  # warm-up
    busy = quiet()
    t0 = time.perf_counter()
    n = sum(backbone.embed(batch).shape[0] for batch in batches)
    return {"img_s": n / (time.perf_counter() - t0), "images": n, "busy": busy}


def bench_extract(cfg: Any, work: Path, name: str, corpus: Path, warm_corpus: Path, full_decode: bool,
                  quiet: Callable[[], float]) -> dict[str, Any]:
    import imgclust.extract.shard as extract
    from imgclust.extract.images import decode_image
    from imgclust.io.manifest import ingest, plan_shards
    from imgclust.io.store import Store

    def stores() -> tuple[Store, Store]:
        warm, timed = Store(work / "stores" / f"{name}-warmup"), Store(work / "stores" / name)
        ingest(warm, str(warm_corpus))
        ingest(timed, str(corpus))
        return warm, timed

    warm, store = stores()
    original = extract.decode_image
    if full_decode:  # the decode before reduced-scale JPEG decoding: always full size
        extract.decode_image = functools.partial(_full_decode, decode_image)  # type: ignore[assignment]
    try:
        extract.extract_shard(warm, plan_shards(warm, shard_size=cfg.batch_size)[0], cfg)
        specs = plan_shards(store, shard_size=cfg.shard_size)
        busy = quiet()
        t0 = time.perf_counter()
        n = sum(extract.extract_shard(store, spec, cfg)["n_features"] for spec in specs)
        return {"img_s": n / (time.perf_counter() - t0), "images": n, "busy": busy}
    finally:
        extract.decode_image = original  # type: ignore[assignment]


def _full_decode(decode: Callable[..., Any], data: bytes, **kwargs: Any) -> Any:
    kwargs.pop("target_side", None)
    return decode(data, **kwargs)


# ---- corpus, table, main -------------------------------------------------------------------------
def large_jpegs(args: argparse.Namespace, work: Path) -> list[Path]:
    from PIL import Image

    from imgclust.data.photos import build_photo_variant_corpus, family_representatives, find_system_photos

    photos = find_system_photos()
    n_sources = 4 if args.quick else None
    if n_sources is not None:
        n_sources = min(n_sources, len(family_representatives(photos)))
    corpus = build_photo_variant_corpus(work / "corpus", seed=args.seed, n_sources=n_sources, kinds=KINDS,
                                        photos=photos)
    files = []
    for record in corpus.records:
        with Image.open(record.path) as im:
            if im.width * im.height >= args.min_mp * 1e6:
                files.append(record.path)
    if not files:
        raise SystemExit(f"no corpus JPEG has {args.min_mp} MP or more; lower --min-mp")
    return files


def megapixels(files: list[Path]) -> str:
    from PIL import Image

    mp = []
    for f in files:
        with Image.open(f) as im:
            mp.append(im.width * im.height / 1e6)
    mp.sort()
    return f"{mp[0]:.1f}-{mp[-1]:.1f} (median {mp[len(mp) // 2]:.1f})"


def table(rows: list[tuple[str, str, dict[str, Any]]], files_mp: str, model_mp: str) -> str:
    head = ["what", "threads", "images (MP)", "img/s", "extract / bare", "peak RSS growth (MiB)",
            "others' CPU % before"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for what, threads, r in rows:
        mp = model_mp if "bare" in r else files_mp
        peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
        ratio = f"{r['img_s'] / r['bare']:.2f}" if r.get("bare") else "-"
        cells = [what, threads, f"{r['images']} ({mp})", f"{r['img_s']:.1f}", ratio, peak, f"{r['busy']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.decode_worker:
        decode_worker(*args.decode_worker)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import numpy as np
    import torch

    from imgclust.config import ExtractConfig
    from imgclust.extract.shard import backbone_for

    with tempfile.TemporaryDirectory(prefix="imgclust-bench-photos-") as tmp:
        work = Path(args.work_dir or tmp)
        quiet = functools.partial(wait_for_quiet, args.max_busy, args.max_wait)
        files = large_jpegs(args, work)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        cfgs = {m: ExtractConfig(extractor=m, weights="random", device="cpu", batch_size=args.batch_size,
                                 shard_size=args.batch_size * 2, seed=args.seed, decode_on="cpu") for m in models}
        prep = backbone_for(cfgs[models[0]]).preprocessing
        log.info("%d JPEGs; %s input %s; torch threads %d", len(files), models[0], prep.describe(),
                 torch.get_num_threads())
        rows: list[tuple[str, str, dict[str, Any]]] = []
        for threads in (1, args.threads):
            for full in (True, False):
                what = "decode full + preprocess" if full else f"decode reduced (target_side={prep.resize_size}) + preprocess"
                rows.append((what, str(threads), bench_decode(files, prep, work, full, threads, quiet)))
                log.info("%s, %d threads: %s", what, threads, rows[-1][2])
        pick = np.sort(np.random.default_rng(args.seed).choice(len(files), min(args.model_images, len(files)),
                                                               replace=False))
        chosen = [files[i] for i in pick]
        for folder, subset in (("model-corpus", chosen), ("model-warmup", chosen[:8])):
            (work / folder).mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(subset):
                shutil.copyfile(f, work / folder / f"{i:04d}-{f.parent.name}-{f.name}")
        torch_threads = f"torch {torch.get_num_threads()}"
        for m, cfg in cfgs.items():
            bare = bench_bare(backbone_for(cfg), chosen, args.batch_size, quiet)
            rows.append((f"{m} bare forward (pre-decoded tensors)", torch_threads, {**bare, "bare": 0.0}))
            log.info("%s bare: %s", m, bare)
            for full in (False, True) if m == models[0] else (False,):
                label = "full decode (before)" if full else "reduced decode (now)"
                result = bench_extract(cfg, work, f"{m}-{'full' if full else 'reduced'}", work / "model-corpus",
                                       work / "model-warmup", full, quiet)
                rows.append((f"{m} extract_shard, {label}", f"{torch_threads} + decode {cfg.decode_threads}",
                             {**result, "bare": bare["img_s"]}))
                log.info("%s extract %s: %s", m, label, result)
        print(table(rows, megapixels(files), megapixels(chosen)))


if __name__ == "__main__":
    main()
