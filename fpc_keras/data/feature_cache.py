"""Backbone features computed once per image (and per augmented copy) and kept on disk under a key of the
backbone's weights, the preprocessing and the file, so that a head's epoch costs a fraction of a second; and the
memory-mapped rows they are read from."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from ..io import atomic_path, file_key
from ..predictor import keras_predict_fn
from .images import ImageSpec
from .pipeline import image_dataset
from .records import Record

Progress = Callable[[str], None]


class StackedRows:
    """Several arrays of equal length (the cached features of the training set and of its augmented copies) read
    as one: row i is row i % n of array i // n. Memory-mapped caches stay on disk; a batch is read when gathered."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays, self.rows = list(arrays), len(arrays[0])
        self.shape = (self.rows * len(self.arrays), *arrays[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        out = np.empty((len(index), *self.shape[1:]), np.float32)
        for part in np.unique(index // self.rows):
            chosen = index // self.rows == part
            out[chosen] = self.arrays[part][index[chosen] % self.rows]
        return out


def extractor_key(extractor: keras.Model, settings: str) -> str:
    """A key of what a feature extractor computes: its architecture (its layers, not the model's auto-numbered name:
    same weights, other layers, other features), its weights and the input `settings` (preprocessing)."""
    digest = hashlib.sha256(settings.encode())
    digest.update(json.dumps(extractor.get_config()["layers"], sort_keys=True, default=str).encode())
    for weight in extractor.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]


def _images(count: int, variant: str) -> str:
    return f"{count} images" + (f" ({variant})" if variant else "")


class FeatureCache:
    """Backbone features per image and augmented copy, computed once and kept as `<folder>/<model key>/<image
    key>.npy`. The model key changes with the extractor's architecture and weights and the preprocessing; the image
    key with the file's path, size and mtime and the copy (`variant`). Per image, so another split of the same
    images (another fold, validation fraction or class subset) reuses them; an augmented copy is drawn with a key
    made from the image and the copy, not from its place in a batch, so it is the same copy in every split. The rows
    of a list of images are assembled into one memory-mapped file (rebuilt from the per-image files when missing)
    from which training reads batch by batch."""

    def __init__(self, folder: Path, extractor: keras.Model, spec: ImageSpec, progress: Progress):
        self.extractor, self.spec, self.progress = extractor, spec, progress
        self.model_key = extractor_key(extractor, repr(spec))
        self.store = Path(folder) / self.model_key

    @staticmethod
    def image_key(record: Record, variant: str = "") -> str:
        return file_key(record.source, variant)

    def features(self, records: Sequence[Record], augment: Callable | None = None, variant: str = "") -> np.ndarray:
        """Features of `records` (optionally of an augmented copy; `variant` names it in the keys), one row each."""
        keys = [self.image_key(record, variant) for record in records]
        missing = [i for i, key in enumerate(keys) if not (self.store / f"{key}.npy").is_file()]
        if missing:
            self._compute([records[i] for i in missing], [keys[i] for i in missing], augment, variant)
        else:
            self.progress(f"      features of {_images(len(records), variant)} from the cache {self.store}")
        return self._assembled(keys)

    def _compute(self, records: list[Record], keys: list[str], augment: Callable | None, variant: str) -> None:
        self.progress(f"      computing backbone features of {_images(len(records), variant)} (once per image; cached)")
        start = time.perf_counter()
        extract = keras_predict_fn(self.extractor)  # (predict_on_batch repeats rows under MirroredStrategy)
        for images, index in image_dataset(records, self.spec, None, 32):
            index = index.numpy()
            if augment is not None:  # a 63-bit key from each image's own key
                images = tf.concat([augment(images[j:j + 1], int(keys[i][:15], 16)) for j, i in enumerate(index)],
                                   axis=0)
            for i, row in zip(index, extract(images)):
                with atomic_path(self.store / f"{keys[i]}.npy", suffix=".npy") as tmp:
                    np.save(tmp, np.asarray(row, np.float32))
        self.progress(f"      {len(records) / (time.perf_counter() - start):.1f} images/s")

    def _assembled(self, keys: list[str]) -> np.ndarray:
        """The rows of `keys` in order, as one memory-mapped array (memory holds one row while it is written)."""
        path = self.store / "lists" / f"{hashlib.sha256('|'.join(keys).encode()).hexdigest()[:24]}.npy"
        if path.is_file():
            try:
                rows = np.load(path, mmap_mode="r")
                if len(rows) == len(keys):
                    return rows
            except (OSError, ValueError):
                pass  # a damaged list file is rebuilt
        first = np.load(self.store / f"{keys[0]}.npy")
        with atomic_path(path, suffix=".npy") as tmp:
            rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keys), *first.shape))
            for n, key in enumerate(keys):
                rows[n] = np.load(self.store / f"{key}.npy")
            rows.flush()
            del rows
        return np.load(path, mmap_mode="r")
