"""SlowFast (Feichtenhofer et al. 2019) for video-level view classification, as TTESlowFast (Cheng et al. 2025).

    clip (B, T, H, W, 3), 0-255
      slow pathway: every `alpha`-th frame (T / alpha frames), wide          \\
      fast pathway: all T frames, `beta` x the channels, temporal kernels    -> lateral connections fast -> slow
      both pooled (global average over time and space), concatenated, dropout, softmax `classifier`

Lateral connections are time-strided 3-D convolutions (kernel 5 x 1 x 1, stride alpha) from the fast pathway,
concatenated to the slow pathway at each scale.

Two slow pathways (`model.backbone`):
- `none`: both pathways are 3-D ResNets with bottleneck blocks, from scratch (presets `light`: width 16, one
  block per stage, for CPU and edge; `paper`: width 64, 3-4-6-3 blocks as the paper's ResNet-50). The slow pathway
  has temporal kernels only in its last two stages, the fast pathway in all, as in the SlowFast paper; the laterals
  enter the slow pathway after the stem and after each of the first three stages.
- `efficientnet_lite0..2` (with `model.weights: imagenet`): the slow pathway is an ImageNet frame encoder applied to
  each slow frame (about 100 labelled videos cannot train a 3-D network from scratch); the fast pathway stays a
  light 3-D ResNet; the laterals join the encoder's features at 1/8, 1/16 and 1/32 of the input, each fused by a
  1 x 1 x 1 convolution and pooled. The encoder is pretrained, so the laterals enter after it rather than between
  its blocks.

`model.fast_pathway: false` builds the paper's Slow-only ablation on an ImageNet encoder: the encoder on each slow
frame, its features pooled over space and time, then standardised, dropout and the classifier (with a frozen
encoder, a linear model of frame features averaged over the clip: what about 50 training videos can fit without
learning the videos). Its encoder may also be VGG16 (`model.pooling: multiscale` pools three of its depths: their
texture carries lung ultrasound's A- and B-lines better than ImageNet's last layer); `model.extra_encoder` adds a
second frozen encoder (an EfficientNet-Lite) whose pooled features join VGG16's depths as one more branch, each
branch standardised apart. It has no CONV_3D, so it also exports to full int8.

Everything converts to TFLite builtins (CONV_3D, no 3-D pooling: strided convolutions downsample). TFLite has no
int8 CONV_3D, so SlowFast exports as float (fp32 / fp16).
"""
from __future__ import annotations

import keras

from ..config import RunConfig
from ..errors import BadInputError
from .backbones import EXTRA_FEATURES_LAYER, LITE, apply_backbone, taps_per_scale
from .frozen_features import MULTISCALE_TAPS, build_fc_head, multiscale
from .layers import FoldFrames, TakeFrames, UnfoldFrames

PRESETS = {  # slow width (channels of the first stage's bottleneck) and blocks per stage res2..res5
    "light": {"width": 16, "blocks": (1, 1, 1, 1)},
    "paper": {"width": 64, "blocks": (3, 4, 6, 3)},
}
SCRATCH = "none"
SLOW_ONLY_ENCODERS = (*LITE, "vgg16")  # Slow-only has no laterals: any frame encoder with ImageNet weights offline
LATERAL_STRIDES = (8, 16, 32)  # where the laterals join a pretrained slow encoder


def build_slowfast(config: RunConfig) -> keras.Model:
    m, d = config.model.section(), config.data
    if m.num_classes < 2:
        raise ValueError("model.num_classes must be set (>= 2 classes) before building")
    if m.preset not in PRESETS:
        raise BadInputError(f"model.preset is {m.preset!r}", f"use one of: {', '.join(PRESETS)}")
    encoders = SLOW_ONLY_ENCODERS if not m.fast_pathway else tuple(LITE)
    if m.backbone != SCRATCH and m.backbone not in encoders:
        raise BadInputError(f"model.backbone {m.backbone!r} cannot be this model's slow pathway",
                            f"use none (3-D ResNet from scratch) or one of: {', '.join(encoders)}")
    frames, (height, width) = d.clip_length, d.image_size
    if frames % m.alpha:
        raise BadInputError(f"data.clip_length {frames} is not a multiple of model.alpha {m.alpha}",
                            "make the clip length a multiple of alpha (e.g. 16 frames, alpha 4)")
    if height % 32 or width % 32:
        raise BadInputError(f"data.image_size {d.image_size} is not a multiple of 32",
                            "use sizes divisible by 32 (both pathways halve the grid five times)")
    preset = PRESETS[m.preset]
    clip = keras.Input((frames, height, width, 3), name="clip")
    if m.extra_encoder:
        _check_extra_encoder(m, config.train.finetune_blocks)
    if not m.fast_pathway:
        return _slow_only(clip, m, frames // m.alpha)
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(clip)
    fast_width = max(int(preset["width"] * m.beta), 4)
    fast_stages = _fast_pathway(scaled, fast_width, preset["blocks"] if m.backbone == SCRATCH else (1, 1, 1, 1))
    if m.backbone == SCRATCH:
        slow = _scratch_slow_pathway(TakeFrames(m.alpha, name="slow_frames")(scaled), fast_stages, preset,
                                     m.alpha, fast_width)
    else:
        slow = _encoder_slow_pathway(TakeFrames(m.alpha, name="slow_frames")(clip), fast_stages, m, frames // m.alpha)
    fast = keras.layers.GlobalAveragePooling3D(name="fast_pool")(fast_stages[-1])
    x = keras.layers.Concatenate(name="pathways")([slow, fast])
    return keras.Model(clip, _classifier(x, m), name=f"slowfast_{m.backbone}_{m.preset}")


def _classifier(features, m):
    x = keras.layers.Dropout(m.dropout, name="dropout")(features)
    return keras.layers.Dense(m.num_classes, activation="softmax", name="classifier")(x)


def _slow_only(clip, m, slow_frames: int) -> keras.Model:
    """Slow-only: the ImageNet frame encoder on every `alpha`-th frame, pooled over space (`frame_pool`; with
    `model.pooling: multiscale`, VGG16's three depths as in frozen_features), then over time (`slow_pool`), into a
    nested `head`: per-feature standardisation, dropout and the classifier (L2 `model.weight_decay`). Averaging
    before an affine head is averaging the frames' logits, so the head can be trained on single frames' features
    (`train.cache_features`) and serve whole clips."""
    if m.backbone == SCRATCH:
        raise BadInputError("model.fast_pathway=false needs an ImageNet frame encoder as the slow pathway",
                            f"set model.backbone to one of {', '.join(SLOW_ONLY_ENCODERS)} (model.weights=imagenet)")
    frames = FoldFrames(name="fold_slow")(TakeFrames(m.alpha, name="slow_frames")(clip))
    encoded = apply_backbone(frames, m.backbone, m.weights)
    if m.pooling == "multiscale" and m.backbone in MULTISCALE_TAPS:
        extra = [keras.layers.GlobalAveragePooling2D(name="extra_frame_pool")(
            apply_backbone(frames, m.extra_encoder, m.weights, EXTRA_FEATURES_LAYER))] if m.extra_encoder else []
        pooled = multiscale(keras.Model(clip, encoded), MULTISCALE_TAPS[m.backbone], extra)
    else:
        pooled = keras.layers.GlobalAveragePooling2D(name="frame_pool")(encoded)
    per_frame = UnfoldFrames(slow_frames, name="unfold_slow")(pooled)
    features = keras.layers.GlobalAveragePooling1D(name="slow_pool")(per_frame)
    head = build_fc_head(tuple(features.shape[1:]), m.num_classes, (), m.dropout, weight_decay=m.weight_decay)
    name = "_".join(["slow_only", m.backbone] + ([m.extra_encoder] if m.extra_encoder else []))
    return keras.Model(clip, head(features), name=name)


def _check_extra_encoder(m, finetune_blocks: int) -> None:
    """A second frame encoder joins VGG16's pooled depths in a frozen Slow-only (their layer names are disjoint:
    VGG16's block<n>_, Lite's block<n><letter>_)."""
    if m.fast_pathway or m.backbone != "vgg16" or m.pooling != "multiscale" or m.extra_encoder not in LITE:
        raise BadInputError(f"model.extra_encoder {m.extra_encoder!r} needs a Slow-only model on VGG16 at three "
                            f"depths (got backbone {m.backbone!r}, pooling {m.pooling!r}, fast_pathway "
                            f"{m.fast_pathway})", "set model.fast_pathway=false, model.backbone=vgg16, "
                            f"model.pooling=multiscale and model.extra_encoder to one of {', '.join(LITE)}")
    if finetune_blocks:
        raise BadInputError("model.extra_encoder is a frozen second encoder (its head trains on cached features)",
                            "set train.finetune_blocks=0, or drop model.extra_encoder to fine-tune one encoder")


def _conv_bn(x, filters: int, kernel: tuple[int, int, int], strides: tuple[int, int, int], name: str,
             relu: bool = True):
    x = keras.layers.Conv3D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def _bottleneck(x, inner: int, temporal: int, stride: int, name: str):
    """1x1x1 -> (temporal)x3x3 -> 1x1x1 (4x inner) with a projected shortcut where the shape changes."""
    out = 4 * inner
    shortcut = x
    if stride != 1 or x.shape[-1] != out:
        shortcut = _conv_bn(x, out, (1, 1, 1), (1, stride, stride), f"{name}_shortcut", relu=False)
    y = _conv_bn(x, inner, (temporal, 1, 1), (1, 1, 1), f"{name}_a")
    y = _conv_bn(y, inner, (1, 3, 3), (1, stride, stride), f"{name}_b")
    y = _conv_bn(y, out, (1, 1, 1), (1, 1, 1), f"{name}_c", relu=False)
    return keras.layers.Activation("relu", name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([shortcut, y]))


def _stage(x, inner: int, blocks: int, temporal: int, stride: int, name: str):
    for block in range(blocks):
        x = _bottleneck(x, inner, temporal, stride if block == 0 else 1, f"{name}_block{block + 1}")
    return x


def _stem(x, width: int, temporal: int, name: str):
    """Down to 1/4 of the input: a 7x7 stride-2 convolution, then a 3x3 stride-2 one (no 3-D pooling in TFLite)."""
    x = _conv_bn(x, width, (temporal, 7, 7), (1, 2, 2), f"{name}_stem1")
    return _conv_bn(x, width, (1, 3, 3), (1, 2, 2), f"{name}_stem2")


def _fast_pathway(x, width: int, blocks: tuple[int, ...]) -> list:
    """The fast pathway's features after its stem and after each stage (1/4, 1/4, 1/8, 1/16, 1/32 of the input)."""
    features = [_stem(x, width, 5, "fast")]
    for stage, (count, stride) in enumerate(zip(blocks, (1, 2, 2, 2))):
        features.append(_stage(features[-1], width * 2 ** stage, count, 3, stride, f"fast_res{stage + 2}"))
    return features


def _lateral(fast, alpha: int, filters: int, name: str):
    """Fast -> slow: a 5x1x1 convolution with temporal stride alpha, so T fast frames line up with T/alpha slow."""
    return keras.layers.Conv3D(filters, (5, 1, 1), strides=(alpha, 1, 1), padding="same", name=name)(fast)


def _scratch_slow_pathway(x, fast: list, preset: dict, alpha: int, fast_width: int):
    width = preset["width"]
    x = _stem(x, width, 1, "slow")
    for stage, (count, stride, temporal) in enumerate(zip(preset["blocks"], (1, 2, 2, 2), (1, 1, 3, 3))):
        lateral = _lateral(fast[stage], alpha, 2 * fast[stage].shape[-1], f"lateral{stage + 1}")
        x = keras.layers.Concatenate(name=f"slow_fuse{stage + 1}")([x, lateral])
        x = _stage(x, width * 2 ** stage, count, temporal, stride, f"slow_res{stage + 2}")
    return keras.layers.GlobalAveragePooling3D(name="slow_pool")(x)


def _encoder_slow_pathway(slow_clip, fast: list, m, slow_frames: int):
    """An ImageNet frame encoder on each slow frame; the laterals join its features at 1/8, 1/16, 1/32."""
    frames = FoldFrames(name="fold_slow")(slow_clip)
    features = apply_backbone(frames, m.backbone, m.weights)
    encoder = keras.Model(keras.utils.get_source_inputs(frames)[0], features)
    taps = taps_per_scale(encoder, frames.shape[1], LATERAL_STRIDES[:-1]) + [features]
    pooled = []
    for level, (tap, fast_features) in enumerate(zip(taps, fast[2:]), start=1):
        slow = UnfoldFrames(slow_frames, name=f"unfold_slow{level}")(tap)
        lateral = _lateral(fast_features, m.alpha, 2 * fast_features.shape[-1], f"lateral{level}")
        fused = keras.layers.Concatenate(name=f"slow_fuse{level}")([slow, lateral])
        fused = _conv_bn(fused, min(slow.shape[-1], 256), (1, 1, 1), (1, 1, 1), f"slow_fuse{level}_proj")
        pooled.append(keras.layers.GlobalAveragePooling3D(name=f"slow_pool{level}")(fused))
    return keras.layers.Concatenate(name="slow_scales")(pooled)
