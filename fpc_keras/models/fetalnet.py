"""FetalNet (Płotka, Klasa et al. 2021): one network that segments, classifies the plane and (through
fpc_keras.biometry) measures, on frames or on video.

    frame model:  image -> encoder (plain U-Net or ImageNet backbone) -> bottleneck
                        -> plane head (GAP -> Dense -> softmax)              output `plane`  (B, N)
                        -> decoder with attention-gated skips -> sigmoid     output `mask`   (B, H, W, 1)
    video model:  clip (B, T, H, W, 3) -> frames folded into the batch -> the same encoder per frame
                        -> ConvLSTM over the bottleneck sequence (the temporal module, unrolled for TFLite)
                        -> the same decoder and plane head per frame         `mask` (B, T, H, W, 1), `plane` (B, T, N)

Attention gates (Oktay et al. 2018) weight each skip connection by a map computed from the skip and the coarser
decoder signal, so the decoder attends to the skull rather than to bright tissue elsewhere. Outputs are ordered
(mask, plane): the mask is the model's primary output (evaluation, export and the edge runner read it first).
"""
from __future__ import annotations

import keras

from ..config import RunConfig
from ..errors import BadInputError
from .backbones import apply_backbone, taps_per_scale
from .layers import FoldFrames, UnfoldFrames

TEMPORAL = ("none", "convlstm")
PLAIN_ENCODER = "unet"


def build_fetalnet(config: RunConfig) -> keras.Model:
    m, d = config.model.section(), config.data
    if m.num_classes < 2:
        raise ValueError("model.num_classes must be set (>= 2 plane classes) before building")
    height, width = d.image_size
    step = 2 ** (m.depth if m.backbone == PLAIN_ENCODER else 5)
    if height % step or width % step:
        raise BadInputError(f"data.image_size {d.image_size} is not a multiple of {step}",
                            f"use sizes divisible by {step} (the encoder halves the grid that many times)")
    if m.temporal not in TEMPORAL:
        raise BadInputError(f"model.temporal is {m.temporal!r}", f"use one of: {', '.join(TEMPORAL)}")
    if m.temporal == "none":
        inputs = keras.Input((height, width, 3), name="image")
        skips, bottleneck = _encoder(inputs, m.backbone, m.weights, m.base_filters, m.depth)
        mask = _decoder(bottleneck, skips, m.base_filters, m.attention == "gates")
        plane = _plane_head(bottleneck, m.num_classes, m.dropout)
        return keras.Model(inputs, [mask, plane], name=f"fetalnet_{m.backbone}")
    frames = d.clip_length
    inputs = keras.Input((frames, height, width, 3), name="clip")
    skips, bottleneck = _encoder(FoldFrames(name="fold_frames")(inputs), m.backbone, m.weights, m.base_filters,
                                 m.depth)
    sequence = UnfoldFrames(frames, name="unfold_bottleneck")(bottleneck)
    sequence = keras.layers.ConvLSTM2D(bottleneck.shape[-1], 3, padding="same", return_sequences=True,
                                       unroll=True, name="temporal_convlstm")(sequence)
    temporal = keras.layers.Add(name="temporal_residual")([bottleneck, FoldFrames(name="fold_temporal")(sequence)])
    mask = _decoder(temporal, skips, m.base_filters, m.attention == "gates")
    plane = _plane_head(temporal, m.num_classes, m.dropout)
    return keras.Model(inputs, [UnfoldFrames(frames, name="mask_frames")(mask),
                                UnfoldFrames(frames, name="plane_frames")(plane)],
                       name=f"fetalnet_video_{m.backbone}")


def _conv_block(x, filters: int, name: str):
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def _encoder(inputs, backbone: str, weights: str, base: int, depth: int):
    """(skips from fine to coarse, bottleneck). The plain encoder scales 0-255 to 0-1 itself."""
    if backbone == PLAIN_ENCODER:
        x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
        skips = []
        for level in range(depth):
            x = _conv_block(x, base * 2 ** level, f"enc{level + 1}")
            skips.append(x)
            x = keras.layers.MaxPooling2D(name=f"enc{level + 1}_pool")(x)
        return skips, _conv_block(x, base * 2 ** depth, "bottleneck")
    features = apply_backbone(inputs, backbone, weights)
    encoder = keras.Model(keras.utils.get_source_inputs(inputs)[0], features)
    return taps_per_scale(encoder, inputs.shape[1], (2, 4, 8, 16)), features


def _attention_gate(skip, gating, name: str):
    """Additive attention gate: alpha = sigmoid(psi(relu(Wx skip + Wg gating))), skip * alpha."""
    inter = max(skip.shape[-1] // 2, 4)
    theta = keras.layers.Conv2D(inter, 1, name=f"{name}_skip_proj")(skip)
    phi = keras.layers.Conv2D(inter, 1, name=f"{name}_gate_proj")(gating)
    joined = keras.layers.Activation("relu", name=f"{name}_relu")(keras.layers.Add(name=f"{name}_add")([theta, phi]))
    alpha = keras.layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_alpha")(joined)
    return keras.layers.Multiply(name=f"{name}_scale")([skip, alpha])


def _decoder(x, skips: list, base: int, gates: bool):
    """Upsample step by step to the input grid, merging each (gated) skip; `mask` = sigmoid probability."""
    for level in reversed(range(len(skips))):
        filters = base * 2 ** level
        x = keras.layers.UpSampling2D(interpolation="bilinear", name=f"dec{level + 1}_up")(x)
        x = keras.layers.Conv2D(filters, 1, name=f"dec{level + 1}_reduce")(x)
        skip = skips[level]
        if gates:
            skip = _attention_gate(skip, x, f"dec{level + 1}_gate")
        x = _conv_block(keras.layers.Concatenate(name=f"dec{level + 1}_concat")([x, skip]), filters, f"dec{level + 1}")
    if x.shape[1] != keras.utils.get_source_inputs(x)[0].shape[-3]:  # backbones: the finest skip is at 1/2
        x = keras.layers.UpSampling2D(interpolation="bilinear", name="dec_to_input")(x)
    return keras.layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)


def _plane_head(bottleneck, classes: int, dropout: float):
    x = keras.layers.GlobalAveragePooling2D(name="plane_pool")(bottleneck)
    x = keras.layers.Dropout(dropout, name="plane_dropout")(x)
    x = keras.layers.Dense(64, activation="relu", name="plane_dense")(x)
    return keras.layers.Dense(classes, activation="softmax", name="plane")(x)
