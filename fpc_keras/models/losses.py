"""Losses the suite's models train with (registered, so that checkpoints load with them)."""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fpc_keras")
def dice_cross_entropy(y_true, y_pred):
    """Soft Dice loss per item (over all its pixels and frames) plus pixel-wise binary cross-entropy."""
    axes = tuple(range(1, len(y_pred.shape)))
    overlap = keras.ops.sum(y_true * y_pred, axis=axes)
    total = keras.ops.sum(y_true, axis=axes) + keras.ops.sum(y_pred, axis=axes)
    dice = (2.0 * overlap + 1.0) / (total + 1.0)
    pixels = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=axes[:-1])
    return 1.0 - dice + pixels
