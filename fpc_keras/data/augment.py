"""Augmentation suited to ultrasound, applied to batches inside tf.data (never inside the exported model).

Small rotations, scale and shift (probe angle and depth), gain and contrast (time-gain compensation), and
multiplicative speckle noise. No vertical flip: the transducer is at the top of every image.
"""
from __future__ import annotations

import keras
import tensorflow as tf


class SpeckleNoise(keras.layers.Layer):
    """x * (1 + sigma * N(0, 1)), clipped to 0-255: the multiplicative noise of coherent imaging."""

    def __init__(self, sigma: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.sigma = sigma

    def call(self, images, training=True):
        if not training or self.sigma <= 0:
            return images
        noise = 1.0 + self.sigma * tf.random.normal(tf.shape(images))
        return tf.clip_by_value(images * noise, 0.0, 255.0)


def build_augmenter(rotation_deg: float = 10.0, zoom: float = 0.1, shift: float = 0.05, contrast: float = 0.2,
                    brightness: float = 0.15, speckle: float = 0.08, horizontal_flip: bool = False,
                    seed: int = 0) -> keras.Sequential:
    """A callable `augment(images, training=True)` on float32 batches with values 0-255."""
    layers = [
        keras.layers.RandomRotation(rotation_deg / 360.0, fill_mode="constant", seed=seed),
        keras.layers.RandomZoom((-zoom, zoom), fill_mode="constant", seed=seed + 1),
        keras.layers.RandomTranslation(shift, shift, fill_mode="constant", seed=seed + 2),
        keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=seed + 3),
        keras.layers.RandomBrightness(brightness, value_range=(0, 255), seed=seed + 4),
        SpeckleNoise(speckle),
    ]
    if horizontal_flip:
        layers.insert(0, keras.layers.RandomFlip("horizontal", seed=seed + 5))
    return keras.Sequential(layers, name="ultrasound_augment")
