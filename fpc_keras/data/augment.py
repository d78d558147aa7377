"""Augmentation suited to ultrasound, applied to batches inside tf.data (never inside the exported model).

Small rotations, scale and shift (probe angle and depth), gain and contrast (time-gain compensation), and
multiplicative speckle noise (uniform, mean 1, standard deviation `speckle`). No vertical flip: the transducer is
at the top of every image.

Rotation, scale, shift and the optional horizontal flip are composed into one affine matrix per image and applied
in a single bilinear resampling pass (three separate Keras layers resampled three times and halved the pipeline's
rate). Every random draw is stateless, keyed by (seed, key): the same key gives the same batch, so an augmented
copy is a function of its seed and a resumed run sees the augmentation an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import tensorflow as tf

VERSION = 2  # 1: three Keras layers (rotation, zoom, translation), Gaussian speckle; 2: one composed warp,
# stateless draws, uniform speckle
MIXUP_STREAM = 7919  # mixup's draws come from a stream of their own: the same key never repeats the warp's


@dataclass(frozen=True)
class UltrasoundAugment:
    """`augment(images, key)` on float32 batches (B, H, W, C) with values 0-255; `key` an int64 scalar tensor."""

    rotation_deg: float = 10.0
    zoom: float = 0.1
    shift: float = 0.05
    contrast: float = 0.2
    brightness: float = 0.15
    speckle: float = 0.08
    horizontal_flip: bool = False
    seed: int = 0

    @property
    def fingerprint(self) -> str:
        """Names this augmentation (version, settings, seed) in feature-cache keys: change any, and cached
        augmented copies are recomputed."""
        return hashlib.sha256(f"{VERSION}:{self!r}".encode()).hexdigest()[:12]

    def __call__(self, images: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        return self._augment(images, key, 1)

    def clips(self, clips: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        """Clips (B, T, H, W, C): one rotation, scale, shift, flip, contrast and gain per clip, the same on all its
        frames (a probe held still); speckle drawn anew per frame, as a live image's is."""
        shape = tf.shape(clips)
        frames = tf.reshape(clips, tf.concat([[-1], shape[2:]], axis=0))
        return tf.reshape(self._augment(frames, key, shape[1]), shape)

    def _augment(self, images: tf.Tensor, key: tf.Tensor, frames) -> tf.Tensor:
        """`images` hold len / frames groups of `frames` consecutive images that share their draws."""
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.cast(key, tf.int64), tf.constant(self.seed, tf.int64)]), 7)
        draw = _Draws(tf.shape(images)[0] // frames, frames)
        images = self._warp(images, seeds[:4], draw)
        images = self._gain(images, seeds[4:6], draw)
        if self.speckle > 0:  # uniform noise of the same mean and variance: three times cheaper to draw
            half_width = self.speckle * math.sqrt(3.0)
            images = images * tf.random.stateless_uniform(tf.shape(images), seeds[6], 1.0 - half_width,
                                                          1.0 + half_width)
        return tf.clip_by_value(images, 0.0, 255.0)

    def _warp(self, images: tf.Tensor, seeds: tf.Tensor, draw: "_Draws") -> tf.Tensor:
        """One bilinear resampling through the composed inverse map output pixel -> input pixel."""
        height, width = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
        angle = draw.uniform(seeds[0], math.radians(self.rotation_deg))
        scale = 1.0 + draw.uniform(seeds[1], self.zoom)
        offsets = draw.uniform(seeds[2], self.shift, columns=2)
        tx, ty = offsets[:, 0] * width, offsets[:, 1] * height
        cx, cy = (width - 1) / 2, (height - 1) / 2
        cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
        a0, a1, a2 = cos, -sin, cx - cos * cx + sin * cy - tx
        b0, b1, b2 = sin, cos, cy - sin * cx - cos * cy - ty
        if self.horizontal_flip:  # mirror the output column first: x -> (W - 1) - x
            flip = draw.uniform(seeds[3], 1.0) < 0.0
            a2, b2 = tf.where(flip, a2 + a0 * (width - 1), a2), tf.where(flip, b2 + b0 * (width - 1), b2)
            a0, b0 = tf.where(flip, -a0, a0), tf.where(flip, -b0, b0)
        zeros = tf.zeros_like(a0)
        transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="CONSTANT")

    def _gain(self, images: tf.Tensor, seeds: tf.Tensor, draw: "_Draws") -> tf.Tensor:
        """Contrast about each image's mean, then a brightness offset (a fraction of the 0-255 range)."""
        factor = 1.0 + draw.uniform(seeds[0], self.contrast)[:, None, None, None]
        offset = 255.0 * draw.uniform(seeds[1], self.brightness)[:, None, None, None]
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        return images * factor + (mean * (1.0 - factor) + offset)  # = (x - mean) * factor + mean + offset


@dataclass(frozen=True)
class _Draws:
    """Uniform draws per group of `frames` consecutive images, repeated for each image of the group."""

    groups: tf.Tensor
    frames: tf.Tensor | int

    def uniform(self, seed: tf.Tensor, limit: float, columns: int | None = None) -> tf.Tensor:
        shape = tf.stack([self.groups] if columns is None else [self.groups, columns])
        return tf.repeat(tf.random.stateless_uniform(shape, seed, -limit, limit), self.frames, axis=0)


def mixup(images: tf.Tensor, labels: tf.Tensor, key: tf.Tensor, alpha: float, seed: int = 0
          ) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al. 2018): each image and its one-hot label blended with another of the batch's,
    lambda * own + (1 - lambda) * other, lambda ~ Beta(alpha, alpha) per image. Stateless, keyed like the
    augmentation: the same key gives the same pairs and weights."""
    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.cast(key, tf.int64), tf.constant(seed + MIXUP_STREAM, tf.int64)]), 3)
    size = tf.shape(images)[:1]
    first, second = (tf.random.stateless_gamma(size, s, alpha) for s in (seeds[0], seeds[1]))
    weight = first / (first + second)
    partner = tf.argsort(tf.random.stateless_uniform(size, seeds[2]))

    def blend(x: tf.Tensor) -> tf.Tensor:  # the same weight and partner for an image and its label
        own = tf.reshape(weight, tf.concat([size, tf.ones([tf.rank(x) - 1], tf.int32)], axis=0))
        return own * x + (1 - own) * tf.gather(x, partner)
    return blend(images), blend(labels)


def build_augmenter(seed: int = 0, **settings) -> UltrasoundAugment:
    """The suite's ultrasound augmentation (`UltrasoundAugment`'s defaults, any of them overridden)."""
    return UltrasoundAugment(seed=seed, **settings)
