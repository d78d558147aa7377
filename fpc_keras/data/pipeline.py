"""Records -> tf.data: parallel decode (Pillow, through `fit_image`), resize with pad/crop/stretch, channels,
in-memory cache of the decoded uint8 images where they fit, shuffling, augmentation, batching, prefetch.

A file that fails to decode raises BadInputError naming it (the CLI prints only that message), or, with
`on_bad_input="skip"`, is dropped and counted in `SkipLog`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from ..errors import BadInputError
from .augment import mixup
from .images import ImageSpec
from .records import Record

CACHE_LIMIT_BYTES = 1_500_000_000
AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class SkipLog:
    """Files skipped under on_bad_input=skip: counted, and reported by name."""
    skipped: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, source: str, reason: str) -> None:
        with self.lock:
            self.skipped[source] = reason

    def summary(self) -> str:
        if not self.skipped:
            return "no file skipped"
        first = next(iter(self.skipped.items()))
        return f"{len(self.skipped)} unreadable file(s) skipped, e.g. {first[0]}: {first[1]}"


def _loader(spec: ImageSpec, records: Sequence[Record], skip_log: SkipLog | None) -> Callable:
    shape = (*spec.size, spec.channels)

    def load(index: np.int64):
        record = records[int(index)]
        try:
            return spec.load(record.source), np.bool_(True)
        except BadInputError as exc:
            if skip_log is None:
                raise
            skip_log.add(record.source, exc.what)
            return np.zeros(shape, np.uint8), np.bool_(False)

    return load


def shuffled_order(n: int, seed: int) -> Callable[[int], np.ndarray]:
    return lambda epoch: np.random.default_rng((seed, epoch)).permutation(n)


def balanced_order(class_ids: np.ndarray, seed: int,
                   groups: Sequence[str] | None = None) -> Callable[[int], np.ndarray]:
    """len(class_ids) draws per epoch with every class equally likely (class-balanced sampling). With `groups`
    (sources, patients), a class's draw then picks one of its groups uniformly and an item of that group: a source
    with 20 videos weighs no more than one with a single video."""
    class_ids = np.asarray(class_ids)
    group_ids = (np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None
                 else np.arange(len(class_ids)))
    members = [[np.flatnonzero((class_ids == c) & (group_ids == g)) for g in np.unique(group_ids[class_ids == c])]
               for c in np.unique(class_ids)]

    def order(epoch: int) -> np.ndarray:
        rng = np.random.default_rng((seed, epoch))
        classes = rng.integers(0, len(members), len(class_ids))
        picked = []
        for c in classes:
            items = members[c][rng.integers(len(members[c]))]
            # A group of one takes no second draw: without `groups` the stream is the class-balanced one of before.
            picked.append(items[0] if len(items) == 1 else items[rng.integers(len(items))])
        return np.array(picked, np.int64)
    return order


def _ordered(order: Callable[[int], np.ndarray], key) -> tf.data.Dataset:
    """The item indices `order(key)` as a dataset (key: an int64 scalar tensor)."""
    indices = tf.numpy_function(lambda k: order(int(k)).astype(np.int64), [key], tf.int64)
    return tf.data.Dataset.from_tensor_slices(tf.ensure_shape(indices, (None,)))


def epoch_batches(order: Callable[[int], np.ndarray], first: int, epochs: int, batch_size: int) -> tf.data.Dataset:
    """Batches of item indices for epochs first..epochs-1, epoch e in the order `order(e)`: a function of the seed
    and e alone, so a run resumed at epoch e sees exactly the batches an uninterrupted run would (fit with
    steps_per_epoch, which keeps one iterator across epochs)."""
    return tf.data.Dataset.range(first, epochs).flat_map(lambda epoch: _ordered(order, epoch).batch(batch_size))


def balanced_indices(class_ids: np.ndarray, seed: int = 0) -> tf.data.Dataset:
    """An endless stream of item indices in which every class is equally likely (`balanced_order`), drawn anew
    each time the stream is iterated again (each epoch)."""
    order = balanced_order(class_ids, seed)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return keys.flat_map(lambda key: _ordered(order, key % (1 << 62)))


def image_dataset(records: Sequence[Record], spec: ImageSpec, labels: Sequence[str] | None = None,
                  batch_size: int = 16, shuffle: bool = False, seed: int = 0,
                  augment: Callable | None = None, skip_log: SkipLog | None = None,
                  balanced: bool = False, mixup_alpha: float = 0.0) -> tf.data.Dataset:
    """Batches of (float32 images 0-255, one-hot labels).

    Without labels it yields (images, record indices), so that predictions can be matched to the
    records that were loaded (skipped files leave gaps). `balanced`: each epoch draws len(records) items with
    every class equally likely (decoded anew each time, so no in-memory cache). `mixup_alpha` > 0 blends each
    batch's images and labels in pairs after the augmentation (`augment.mixup`).
    """
    records = list(records)
    if not records:
        raise BadInputError("no records to load (empty split)", "check the dataset path and its splits")
    if mixup_alpha and labels is None:
        raise BadInputError("mixup needs the labels of the batches it blends", "pass labels, or mixup_alpha=0")
    load = _loader(spec, records, skip_log)
    if balanced:
        ids = label_ids(records, labels)
        # An endless stream cut to one epoch: its length is stated so that Keras knows the epoch's steps.
        ds = balanced_indices(ids, seed).take(len(records)).apply(tf.data.experimental.assert_cardinality(len(records)))
    else:
        ds = tf.data.Dataset.from_tensor_slices(np.arange(len(records), dtype=np.int64))
    ds = ds.map(lambda i: (i, *tf.numpy_function(load, [i], (tf.uint8, tf.bool))), num_parallel_calls=AUTOTUNE,
                deterministic=True)
    if skip_log is not None:
        ds = ds.filter(lambda i, *rest: rest[-1])  # drops skipped files; the length is then unknown
    shape = (*spec.size, spec.channels)
    ds = ds.map(lambda i, x, ok: (i, tf.ensure_shape(x, shape)))
    if not balanced and len(records) * int(np.prod(shape)) < CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if shuffle and not balanced:
        ds = ds.shuffle(min(len(records), 4096), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_targets(records, labels), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size)
    if augment is not None or mixup_alpha:  # one key per batch, new each epoch, the same in every run of this seed
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, keys).map(_batch_transform(augment, mixup_alpha, seed),
                                               num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _batch_transform(augment: Callable | None, mixup_alpha: float, seed: int) -> Callable:
    def transform(batch: tuple, key: tf.Tensor) -> tuple:
        images, targets = batch
        if augment is not None:
            images = augment(images, key)
        if mixup_alpha:
            images, targets = mixup(images, targets, key, mixup_alpha, seed)
        return images, targets
    return transform


def _targets(records: Sequence[Record], labels: Sequence[str] | None) -> Callable:
    if labels is None:
        return lambda i, x: (tf.cast(x, tf.float32), i)
    index = {label: k for k, label in enumerate(labels)}
    unknown = sorted({r.label for r in records if r.label not in index}, key=str)
    if unknown:
        example = next(r.source for r in records if r.label == unknown[0])
        raise BadInputError(f"class(es) {unknown} (e.g. {example}) are not among the model's classes {list(labels)}",
                            "map them with data.aliases / --alias OLD=NEW, or remove those files")
    label_ids = tf.constant([index[r.label] for r in records], dtype=tf.int32)
    depth = len(labels)
    return lambda i, x: (tf.cast(x, tf.float32), tf.one_hot(tf.gather(label_ids, i), depth))


def label_ids(records: Sequence[Record], labels: Sequence[str]) -> np.ndarray:
    index = {label: k for k, label in enumerate(labels)}
    return np.array([index[r.label] for r in records], dtype=np.int64)


def segmentation_arrays(records: Sequence[Record], spec: ImageSpec,
                        progress: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images (N, H, W, C) and their masks (N, H, W, 1), uint8 on the model's grid (masks 0/255,
    bilinear at the edges). Held in memory: a segmentation training set is read once, not every epoch."""
    from .hc18 import read_mask
    from .images import fit_image

    records = list(records)
    if not records:
        raise BadInputError("no records to load (empty split)", "check the dataset path and its splits")
    images, masks = [], []
    for n, record in enumerate(records, start=1):
        if "mask" not in record.extras:
            raise BadInputError(f"{record.source} has no annotation mask", "train segmentation on annotated images")
        images.append(spec.load(record.source))
        masks.append(fit_image(read_mask(record.extras["mask"]).astype(np.uint8)[:, :, None] * 255, spec.size,
                               spec.resize))
        if n % 200 == 0:
            progress(f"      read {n}/{len(records)} images and masks")
    return np.stack(images), np.stack(masks)


def segmentation_dataset(images: np.ndarray, masks: np.ndarray, batch_size: int, shuffle: bool = False,
                         seed: int = 0, off_plane_fraction: float = 0.0, frames: int = 0) -> tf.data.Dataset:
    """Batches of (float32 images 0-255, (masks 0-1, one-hot plane labels)).

    With `shuffle` (training), every item is seen through a random probe pose (fpc_keras.data.sweeps): image and
    mask warped together, gain and speckle; `off_plane_fraction` of them are off-plane frames labelled so.
    Without it, the items pass unchanged as standard planes. With `frames` > 0 (video models) every item becomes
    a new random sweep of that many frames each epoch: (B, T, H, W, C) clips, per-frame masks and labels.
    """
    from .sweeps import PLANE_LABELS, make_sweep, render, training_pose

    classes = len(PLANE_LABELS)
    rng = np.random.default_rng(seed)
    lock = threading.Lock()

    def augment(index: np.int64):
        with lock:
            item_rng = np.random.default_rng(rng.integers(1 << 62))
        if frames:
            clip, clip_masks, labels, _ = make_sweep(images[index], masks[index], frames, item_rng)
            return clip, clip_masks, np.array([PLANE_LABELS.index(label) for label in labels], np.int64)
        pose = training_pose(item_rng, off_plane=item_rng.random() < off_plane_fraction)
        image, mask = render(images[index], masks[index], pose, item_rng)
        return image, mask, np.int64(PLANE_LABELS.index(pose.label))

    lead = (frames,) if frames else ()

    def load(index):
        if shuffle or frames:
            image, mask, label = tf.numpy_function(augment, [index], (tf.uint8, tf.uint8, tf.int64))
        else:
            image, mask, label = tf.gather(images, index), tf.gather(masks, index), tf.constant(0, tf.int64)
        image = tf.ensure_shape(image, (*lead, *images.shape[1:]))
        mask = tf.ensure_shape(mask, (*lead, *masks.shape[1:]))
        label = tf.ensure_shape(label, lead)
        return tf.cast(image, tf.float32), (tf.cast(mask, tf.float32) / 255.0, tf.one_hot(label, classes))

    ds = tf.data.Dataset.range(len(images))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=not shuffle).batch(batch_size).prefetch(AUTOTUNE)


def sweep_arrays(images: np.ndarray, masks: np.ndarray, frames: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One fixed sweep per item (item i drawn with seed (seed, i), so the same data always gives the same sweeps):
    clips (N, T, H, W, C), masks (N, T, H, W, 1), plane label ids (N, T), best-frame index (N,)."""
    from .sweeps import PLANE_LABELS, make_sweep

    out = [make_sweep(image, mask, frames, np.random.default_rng((seed, i)))
           for i, (image, mask) in enumerate(zip(images, masks))]
    labels = np.array([[PLANE_LABELS.index(label) for label in item[2]] for item in out], np.int64)
    return (np.stack([item[0] for item in out]), np.stack([item[1] for item in out]), labels,
            np.array([item[3] for item in out], np.int64))


def clip_dataset(videos: Sequence[np.ndarray], class_ids: np.ndarray, classes: int, clip_length: int,
                 batch_size: int, draws_per_video: int, first_epoch: int, epochs: int, seed: int = 0,
                 augment: Callable | None = None, groups: Sequence[str] | None = None) -> tf.data.Dataset:
    """Training clips of decoded videos (uint8 T x H x W x C each): per epoch `draws_per_video` x len(videos)
    draws with every class equally likely, and within a class every source `groups` names (`balanced_order`),
    each a random stretch at a random speed
    (`video.sample_clip`), augmented as whole clips. Batch b of epoch e is a function of (seed, e, b) alone, so a
    run resumed at epoch e sees what an uninterrupted one would (fit with steps_per_epoch)."""
    from .video import sample_clip

    draws = np.tile(np.asarray(class_ids), draws_per_video)
    draw_groups = None if groups is None else np.tile(np.asarray(groups), draws_per_video)
    steps = -(-len(draws) // batch_size)
    indices = epoch_batches(balanced_order(draws, seed, draw_groups), first_epoch, epochs, batch_size)
    keys = tf.data.Dataset.range(first_epoch * steps, epochs * steps)
    eye = np.eye(classes, dtype=np.float32)
    shape = (clip_length, *videos[0].shape[1:])

    def gather(batch: np.ndarray, key: np.int64) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((seed, int(key)))
        chosen = [int(draws_index) % len(videos) for draws_index in batch]
        clips = [videos[v][sample_clip(len(videos[v]), clip_length, rng)] for v in chosen]
        return np.stack(clips).astype(np.float32), eye[np.asarray(class_ids)[chosen]]

    def load(batch, key):
        clips, labels = tf.numpy_function(gather, [batch, key], (tf.float32, tf.float32))
        clips, labels = tf.ensure_shape(clips, (None, *shape)), tf.ensure_shape(labels, (None, classes))
        return (augment.clips(clips, key) if augment is not None else clips), labels

    return tf.data.Dataset.zip(indices, keys).map(load).prefetch(AUTOTUNE)
