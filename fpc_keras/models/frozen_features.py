"""Cheng & Malhi 2017: the convolutional layers of an ImageNet network as a fixed feature extractor, and the
fully connected layers retrained (FC 4096-4096-N with dropout, on the unpooled conv5 features).

    image (RGB 0-255) -> VGG16 / CaffeNet conv layers (frozen) -> backbone_features -> head: flatten (or
    average-pool) -> [dropout -> Dense + ReLU] x len(head_units) -> dropout -> softmax

`model.head_units: [4096, 4096]` is the paper's head; lighter heads (e.g. `[512]`, `model.pooling: avg`) are
options. `model.pooling: multiscale` feeds the head average- and max-pooled features of three depths (VGG16:
block3_pool, block4_pool, block5_pool; CaffeNet: conv3, conv4, pool5) instead of conv5 alone: the middle
layers carry texture that ImageNet's last layers have specialised away. Their scales differ by orders of
magnitude, so the head standardises them first, and a full-int8 export loses them (README: Edge). The head
is a nested model named `head`, so training runs on cached features (whatever feeds the head is cached).
"""
from __future__ import annotations

from typing import Sequence

import keras

from ..config import RunConfig
from ..errors import BadInputError
from .backbones import FEATURES_LAYER, apply_backbone

BACKBONES = ("vgg16", "caffenet")
# The last tap is `backbone_features` (conv5 pooled), which keeps Grad-CAM and fine-tuning on the usual layer.
MULTISCALE_TAPS = {"vgg16": ("block3_pool", "block4_pool", FEATURES_LAYER),
                   "caffenet": ("conv3", "conv4", FEATURES_LAYER)}


def build_fc_head(feature_shape: tuple[int, ...], num_classes: int, units: tuple[int, ...] = (4096, 4096),
                  dropout: float = 0.5, pooling: str = "flatten", weight_decay: float = 0.0) -> keras.Model:
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input(feature_shape, name="feature_map")
    if len(feature_shape) == 1:  # already pooled (multiscale): max-pooled activations reach the thousands, so
        x = keras.layers.BatchNormalization(name="feature_norm")(inputs)  # standardise them per feature
    elif pooling == "flatten":
        x = keras.layers.Flatten(name="flatten")(inputs)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
    else:
        raise BadInputError(f"model.pooling is {pooling!r}", "use flatten (the paper), avg or multiscale")
    for i, width in enumerate(units, start=6):  # fc6, fc7 as in the paper's networks
        x = keras.layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
        x = keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer, name=f"fc{i}")(x)
    x = keras.layers.Dropout(dropout, name="classifier_dropout")(x)
    classifier = keras.layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer,
                                    name="classifier")
    return keras.Model(inputs, classifier(x), name="head")


def build_frozen_feature_classifier(config: RunConfig) -> keras.Model:
    m = config.model.section()
    if m.backbone not in BACKBONES:
        raise BadInputError(f"frozen_features uses {BACKBONES}, not {m.backbone!r}", "set model.backbone")
    if m.num_classes < 2:
        raise ValueError("model.num_classes must be set (>= 2) before building")
    height, width = config.data.image_size
    inputs = keras.Input((height, width, 3), name="image")
    features = apply_backbone(inputs, m.backbone, m.weights)
    if m.pooling == "multiscale":
        features = multiscale(keras.Model(inputs, features), MULTISCALE_TAPS[m.backbone])
    head = build_fc_head(tuple(features.shape[1:]), m.num_classes, m.head_units, m.dropout, m.pooling,
                         m.weight_decay)
    return keras.Model(inputs, head(features), name=f"{m.backbone}_frozen_features")


def multiscale(backbone: keras.Model, taps: tuple[str, ...], extra: Sequence = ()):
    """Global average and max pooling of each tapped layer, and any `extra` pooled branches, concatenated: one
    vector per image, whose branches `split_feature_norm` standardises apart for int8."""
    pooled = []
    for name in taps:
        tensor = backbone.get_layer(name).output
        pooled += [keras.layers.GlobalAveragePooling2D(name=f"{name}_avg")(tensor),
                   keras.layers.GlobalMaxPooling2D(name=f"{name}_max")(tensor)]
    return keras.layers.Concatenate(name="multiscale_features")(pooled + list(extra))


def split_feature_norm(model: keras.Model) -> keras.Model:
    """For export: the same multiscale classifier with the head's per-feature standardisation (`feature_norm`)
    applied to each pooled branch before the concatenation instead of after it (the same arithmetic, since it is
    per feature). Full int8 gives a concatenation one scale: raw, VGG16's max-pooled block3 activations (thousands)
    set it and block5's (tens) round to a few levels, which took top-1 from 0.85 to 0.41 on BUSI. Other models are
    returned as they are."""
    names = {layer.name for layer in model.layers}
    if "multiscale_features" not in names or "head" not in names:
        return model
    head = model.get_layer("head")
    norm = head.get_layer("feature_norm")
    gamma, beta, mean, variance = norm.get_weights()
    branches, start, normed = model.get_layer("multiscale_features").input, 0, []
    for i, branch in enumerate(branches):
        end = start + branch.shape[-1]
        layer = keras.layers.BatchNormalization(epsilon=norm.epsilon, name=f"feature_norm_{i}")
        x = layer(branch)
        layer.set_weights([gamma[start:end], beta[start:end], mean[start:end], variance[start:end]])
        normed.append(x)
        start = end
    x = keras.layers.Concatenate(name="multiscale_features_normed")(normed)
    for layer in _between(model, "multiscale_features", "head") + head.layers[head.layers.index(norm) + 1:]:
        x = layer(x)
    return keras.Model(model.input, x, name=model.name)


def _between(model: keras.Model, first: str, last: str) -> list[keras.layers.Layer]:
    """The layers strictly between two layers of a chain (Slow-only: unfolding and pooling over time, which
    commute with a per-feature affine standardisation)."""
    names = [layer.name for layer in model.layers]
    return model.layers[names.index(first) + 1:names.index(last)]
