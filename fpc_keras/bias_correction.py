"""Bias correction for full-integer int8 export (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.2; here measured on the representative images, not derived from
BatchNormalization statistics).

TFLite rounds each convolution's weights to int8 per output channel (symmetric, scale = max |w| / 127, after
folding a following BatchNormalization into them). The rounding errors of one channel do not cancel: they shift
that channel's output by a mean amount, and in depthwise convolutions, with 9 or 25 weights a channel, by much.
Shifts pile up with depth, and a float head reads biased features (EfficientNet-Lite2 on BUSI: the float head on
the int8 backbone's features scores exactly what the full int8 model scores, so the backbone carries the loss).
The shift of each channel, `mean(conv(x, Q(W) - W))` over the representative images, is subtracted from the bias
the converter folds into that channel (the BatchNormalization's beta, or the convolution's own bias), so the int8
model's outputs are centred on the float model's again. The Keras model is not changed: a corrected copy is
converted.
"""
from __future__ import annotations

from typing import Collection

import keras
import numpy as np

CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def int8_rounding_error(kernel: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """`Q(kernel) - kernel` for TFLite's per-output-channel symmetric int8 weights. Output channels: the last
    axis, or for a depthwise kernel (h, w, in, multiplier) the last two."""
    channels = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    flat = kernel.reshape(-1, channels)
    scale = np.abs(flat).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero channel rounds to itself
    return (np.round(flat / scale) * scale - flat).reshape(kernel.shape)


def _channels(conv: keras.layers.Layer) -> int:
    kernel = conv.kernel.shape
    return kernel[-2] * kernel[-1] if isinstance(conv, keras.layers.DepthwiseConv2D) else kernel[-1]


def _folded_norm(conv: keras.layers.Layer) -> keras.layers.BatchNormalization | None:
    """The BatchNormalization the converter folds into `conv`: its only consumer."""
    consumers = [node.operation for node in conv._outbound_nodes]
    if len(consumers) == 1 and isinstance(consumers[0], keras.layers.BatchNormalization) and consumers[0].center:
        return consumers[0]
    return None


def _correctable(model: keras.Model, skip: Collection[str] = ()) -> list[tuple[keras.layers.Layer,
                                                                             keras.layers.BatchNormalization | None]]:
    """Top-level 2-D convolutions called once and not named in `skip`, with the BatchNormalization folded into each
    (or None where the convolution's own bias takes the correction; one with neither is left as it is)."""
    pairs = []
    for layer in model.layers:
        if isinstance(layer, CONVOLUTIONS) and len(layer._inbound_nodes) == 1 and layer.name not in skip:
            norm = _folded_norm(layer)
            if norm is not None or layer.use_bias:
                pairs.append((layer, norm))
    return pairs


def _folded_kernel(conv: keras.layers.Layer, norm: keras.layers.BatchNormalization | None) -> np.ndarray:
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    if norm is None:
        return kernel
    gamma = norm.gamma.numpy() if norm.scale else np.ones(_channels(conv))
    factor = gamma / np.sqrt(norm.moving_variance.numpy() + norm.epsilon)
    return kernel * factor.reshape(kernel.shape[-2:] if isinstance(conv, keras.layers.DepthwiseConv2D) else -1)


def _shifted_output(conv: keras.layers.Layer, x, error: np.ndarray):
    """conv(x) with the weights' rounding error as its kernel: the part of the int8 output the rounding adds."""
    kernel = keras.ops.convert_to_tensor(error.astype(np.float32))
    options = {"strides": conv.strides, "padding": conv.padding, "dilation_rate": conv.dilation_rate}
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        return keras.ops.depthwise_conv(x, kernel, **options)
    if conv.groups > 1:  # CaffeNet: each group of output channels sees its own slice of the input channels
        return keras.ops.concatenate([keras.ops.conv(part, part_kernel, **options) for part, part_kernel in
                                      zip(keras.ops.split(x, conv.groups, axis=-1),
                                          keras.ops.split(kernel, conv.groups, axis=-1))], axis=-1)
    return keras.ops.conv(x, kernel, **options)


def _shift_model(model: keras.Model, pairs: list, errors: list[np.ndarray]) -> keras.Model:
    """`model`'s inputs -> per correctable convolution, each row's spatial mean of conv(x, rounding error) (rows:
    images, or a clip's frames); small outputs, so no layer's input is kept whole."""
    return keras.Model(model.input, [keras.ops.mean(_shifted_output(conv, conv.input, error), axis=(1, 2))
                                      for (conv, _), error in zip(pairs, errors)])


def bias_corrected(model: keras.Model, images: np.ndarray, batch_size: int = 2,
                   skip: Collection[str] = ()) -> tuple[keras.Model, int]:
    """A copy of `model` whose int8 conversion is bias-corrected on `images` (the representative images or
    clips), and the number of convolutions corrected (0: the copy equals the model). Convolutions named in `skip`
    (those a mixed export keeps in float, where the weights are not rounded) keep their biases."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    pairs = _correctable(copy, skip)
    if not pairs or not len(images):
        return copy, 0
    errors = [int8_rounding_error(_folded_kernel(conv, norm), isinstance(conv, keras.layers.DepthwiseConv2D))
              for conv, norm in pairs]
    shifts = _shift_model(copy, pairs, errors)
    sums, rows = [np.zeros(_channels(conv)) for conv, _ in pairs], 0
    for start in range(0, len(images), batch_size):
        outputs = shifts(np.asarray(images[start:start + batch_size], np.float32), training=False)
        outputs = [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
        rows += len(outputs[0])
        for total, output in zip(sums, outputs):
            total += output.sum(axis=0)
    for (conv, norm), total in zip(pairs, sums):
        target = norm.beta if norm is not None else conv.bias
        target.assign(target.numpy() - (total / rows).astype(np.float32))
    return copy, len(pairs)
