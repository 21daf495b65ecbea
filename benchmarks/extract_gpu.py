"""Benchmark: feature extraction from JPEG files at the decode/compute limit (library level, no Prefect/Dask).

Runs with what the GPU machine has (torch, torchvision, numpy, pillow, scikit-learn). Corpus:
``--n`` ImageNet-size JPEGs (500x375, quality 90) cut from scikit-learn's sample photographs
(``china.jpg``, ``flower.jpg``) with random crops, scales, flips and colour gains, written to a
temp folder. Per backbone (random weights; speed does not depend on weight values), in one run:

* **(a) decode**: every file's bytes (already in RAM) decoded; on CUDA as nvJPEG batches
  (``imgclust.extract.gpu_pipeline.decode_batch``), on CPU with PIL in a pool of one thread per core;
* **(b) forward**: ``Backbone.embed`` on a preprocessed batch already on the device (bf16 autocast
  and channels_last on CUDA), features copied back to the host;
* **(c) end to end**: files read by threads (the next batch while this one decodes), decoded + resized + normalised on the device in a
  producer thread (its own CUDA stream), forward in the main thread, two batches in flight;
* **(d) naive**: PIL decode + ``preprocess_image`` in the main thread, fp32 forward, batch 32.

Ratios: ``(c) / min(a, b)`` (target on one H100 >= 0.8) and ``(c) / (d)``.

    python benchmarks/extract_gpu.py                                  # GPU machine: resnet18,resnet50,vgg16
    .venv/bin/python benchmarks/extract_gpu.py --device cpu --n 128 --models resnet18   # smoke run here
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger("benchmarks.extract_gpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096, help="JPEG files (default: %(default)s)")
    p.add_argument("--models", default="resnet18,resnet50,vgg16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=0, help="batch size (0: from free GPU memory, 64 on CPU)")
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--producers", default="1",
                   help="comma list: decode/preprocess threads feeding the model in (c); one row each")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_corpus(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` distinct 500x375 JPEGs of natural-image content from scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(im) for im in load_sample_images().images]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = photos[i % len(photos)]
        scale = rng.uniform(1.0, 1.6)
        big = src.resize((int(src.width * scale), int(src.height * scale)), Image.Resampling.BILINEAR)
        x, y = int(rng.integers(0, big.width - 500 + 1)), int(rng.integers(0, big.height - 375 + 1))
        img = big.crop((x, y, x + 500, y + 375))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        gains = rng.uniform(0.8, 1.2, 3)
        arr = np.clip(np.asarray(img, np.float32) * gains, 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rate(datas: list[bytes], device: torch.device, batch: int) -> float:
    """(a) images/s decoding bytes already in memory."""
    from imgclust.extract.gpu_pipeline import decode_batch
    from imgclust.extract.images import decode_image

    t0 = time.perf_counter()
    if device.type == "cuda":
        for s in range(0, len(datas), batch):
            decode_batch(datas[s:s + batch], "RGB", device)
        sync(device)
    else:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(lambda d: decode_image(d, mode="RGB"), datas))
    return len(datas) / (time.perf_counter() - t0)


def forward_rate(backbone: Any, n: int, batch: int) -> float:
    """(b) images/s of ``embed`` on a preprocessed batch already on the device."""
    prep = backbone.preprocessing
    x = torch.randn(batch, prep.channels, prep.input_size, prep.input_size, device=backbone.device)
    backbone.embed(x)  # warm-up (cuDNN autotune)
    sync(backbone.device)
    t0 = time.perf_counter()
    for _ in range(max(1, n // batch)):
        backbone.embed(x)
    sync(backbone.device)
    return max(1, n // batch) * batch / (time.perf_counter() - t0)


def end_to_end_rate(backbone: Any, paths: list[Path], batch: int, producers: int = 1) -> tuple[float, int]:
    """(c) images/s from files: threaded reads, device decode + preprocess in ``producers`` threads (each on
    its own CUDA stream, taking every ``producers``-th batch), forward in the main thread."""
    from imgclust.extract.gpu_pipeline import decode_batch, preprocess_on_device

    device, prep = backbone.device, backbone.preprocessing
    batches: queue.Queue[Any] = queue.Queue(maxsize=2 * producers)
    starts = list(range(0, len(paths), batch))

    def produce(mine: list[int]) -> None:
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        with ThreadPoolExecutor(8) as readers, ThreadPoolExecutor(1) as ahead:
            def read(s: int) -> list[bytes]:
                return list(readers.map(Path.read_bytes, paths[s:s + batch]))

            pending = ahead.submit(read, mine[0]) if mine else None
            for j in range(len(mine)):
                assert pending is not None
                datas = pending.result()
                if j + 1 < len(mine):  # the next batch's files are read while this one decodes
                    pending = ahead.submit(read, mine[j + 1])
                ctx = torch.cuda.stream(stream) if stream is not None else _null()
                with ctx:
                    dec = decode_batch(datas, prep.mode, device)
                    x = preprocess_on_device([dec.images[i] for i in sorted(dec.images)], prep)
                    done = torch.cuda.Event() if stream is not None else None
                    if done is not None:
                        done.record(stream)
                batches.put((x, done, len(dec.errors)))
        batches.put(None)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=produce, args=(starts[p::producers],), daemon=True) for p in range(producers)]
    for t in threads:
        t.start()
    n = bad = finished = 0
    while finished < producers:
        item = batches.get()
        if item is None:
            finished += 1
            continue
        x, done, errors = item
        if done is not None:
            torch.cuda.current_stream(device).wait_event(done)
        n += backbone.embed(x).shape[0]
        bad += errors
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0), bad


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def naive_rate(name: str, paths: list[Path], device: torch.device) -> float:
    """(d) PIL decode + preprocess in the main thread, fp32 forward, batch 32."""
    from imgclust.extract.backbones import create_backbone
    from imgclust.extract.backbones.preprocessing import preprocess_image

    backbone = create_backbone(name, weights="random", device=str(device))
    backbone.uses_amp = False  # fp32, no channels_last: the baseline a first implementation writes
    try:
        t0 = time.perf_counter()
        for s in range(0, len(paths), 32):
            imgs = [np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")) for p in paths[s:s + 32]]
            backbone.embed(torch.stack([preprocess_image(a, backbone.preprocessing) for a in imgs]))
        sync(device)
        return len(paths) / (time.perf_counter() - t0)
    finally:
        backbone.uses_amp = type(backbone).uses_amp


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from imgclust.extract.backbones import create_backbone
    from imgclust.extract.gpu_pipeline import auto_batch_size

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    work = Path(tempfile.mkdtemp(prefix="imgclust-bench-gpu-"))
    try:
        paths = make_corpus(work, args.n, args.seed)
        datas = [p.read_bytes() for p in paths]
        rows = []
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            backbone = create_backbone(name, weights="random", device=str(device))
            batch = args.batch or auto_batch_size(backbone, max_batch=args.max_batch)
            decode_rate(datas[: min(len(datas), 2 * batch)], device, batch)  # warm-up (nvJPEG handles)
            a = decode_rate(datas, device, batch)
            b = forward_rate(backbone, args.n, batch)
            d = naive_rate(name, paths[: min(len(paths), 1024)], device)
            for producers in [int(v) for v in args.producers.split(",")]:
                end_to_end_rate(backbone, paths[: min(len(paths), 2 * batch * producers)], batch, producers)  # warm-up
                c, bad = end_to_end_rate(backbone, paths, batch, producers)
                log.info("%s: decode %.0f/s, forward %.0f/s, end to end %.0f/s (%d producers), naive %.0f/s",
                         name, a, b, c, producers, d)
                rows.append((name, batch, producers, a, b, c, d, bad))
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"{args.n} JPEGs 500x375 q90; device {device} ({gpu}); {os.cpu_count()} cores; torch {torch.__version__}\n")
        print("| model | batch | (c) producers | (a) decode img/s | (b) forward img/s | (c) end to end img/s | "
              "(d) naive img/s | (c) / min(a, b) | (c) / (d) | bottleneck | quarantined |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, batch, producers, a, b, c, d, bad in rows:
            print(f"| {name} | {batch} | {producers} | {a:,.0f} | {b:,.0f} | {c:,.0f} | {d:,.0f} | {c / min(a, b):.2f} | "
                  f"{c / d:.1f} | {'decode' if a < b else 'model'} | {bad} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
