"""Input-pipeline throughput against what the model consumes, and peak memory, on a FETAL_PLANES_DB-sized set of
generated images (12,400 files on disk, streamed: larger than the pipeline's in-memory cache limit).

The pipeline's rate is decode + resize + augmentation + batching with nothing consuming it; the model's rate is
training steps of the real model on batches already in memory. The pipeline must deliver at least 3x what the
model consumes, or the processor waits for data.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .data.records import Record

Progress = Callable[[str], None]


def write_images(folder: Path, count: int, size: tuple[int, int], progress: Progress = print) -> list[Record]:
    """`count` speckled gray PNGs of `size` (width, height) in six class folders (kept when already there)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        label = f"class{i % 6}"
        path = folder / label / f"{i:05d}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            image = rng.gamma(2.0, 30.0 + 10 * (i % 6), (size[1], size[0])).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(path, compress_level=1)
        records.append(Record(str(path), label, str(i)))
        if (i + 1) % 2000 == 0:
            progress(f"  {i + 1}/{count} images on disk")
    return records


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pipeline_rate(records: list[Record], image_size: int, batch_size: int, augment: bool,
                  limit: int | None = None) -> dict:
    """Images per second out of `image_dataset` (decode, resize, shuffle, augment, batch) over `limit` images."""
    from .data.augment import build_augmenter
    from .data.images import ImageSpec
    from .data.pipeline import image_dataset

    chosen = records[:limit] if limit else records
    labels = sorted({r.label for r in chosen})
    dataset = image_dataset(chosen, ImageSpec((image_size, image_size)), labels, batch_size, shuffle=True,
                            augment=build_augmenter() if augment else None)
    start, seen = time.perf_counter(), 0
    for images, _ in dataset:
        seen += int(images.shape[0])
    seconds = time.perf_counter() - start
    return {"images": seen, "seconds": seconds, "images_per_s": seen / seconds}


def model_rate(model, image_size: int, batch_size: int, steps: int = 10) -> dict:
    """Training images per second of `model` (compiled) on in-memory batches: what the trainer consumes."""
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    y = np.eye(model.outputs[0].shape[-1], dtype=np.float32)[np.arange(batch_size) % model.outputs[0].shape[-1]]
    model.train_on_batch(x, y)  # compile and warm up
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    return {"images": steps * batch_size, "seconds": seconds, "images_per_s": steps * batch_size / seconds}
