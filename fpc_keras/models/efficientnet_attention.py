"""Sivasubramanian et al. 2025: an ImageNet-pretrained lightweight EfficientNet, an attention module refining its
feature map, and a 3-layer perceptron head.

    image (RGB 0-255) -> backbone -> `backbone_features` -> head: attention -> pooling -> Dense x2 -> softmax

The head is a nested model named `head` taking the feature map, so a frozen backbone's features can be cached
once and the head trained on the cache; the full model shares the same head weights.
"""
from __future__ import annotations

import keras

from ..config import RunConfig
from .attention import apply_attention
from .backbones import apply_backbone


def build_head(feature_shape: tuple[int, int, int], num_classes: int, attention: str = "se", heads: int = 4,
               units: tuple[int, ...] = (256, 128), dropout: float = 0.3, batch_norm: bool = True) -> keras.Model:
    """Attention + pooling + MLP (hidden layers `units`, then the softmax layer)."""
    inputs = keras.Input(feature_shape, name="feature_map")
    x = apply_attention(inputs, attention, heads)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    for i, width in enumerate(units, start=1):
        x = keras.layers.Dropout(dropout, name=f"mlp{i}_dropout")(x)
        x = keras.layers.Dense(width, use_bias=not batch_norm, name=f"mlp{i}_dense")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"mlp{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"mlp{i}_relu")(x)
    x = keras.layers.Dropout(dropout, name="classifier_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="head")


def build_efficientnet_attention(config: RunConfig) -> keras.Model:
    m = config.model.section()
    if m.num_classes < 2:
        raise ValueError("model.num_classes must be set (>= 2) before building")
    height, width = config.data.image_size
    inputs = keras.Input((height, width, 3), name="image")
    features = apply_backbone(inputs, m.backbone, m.weights)
    head = build_head(tuple(features.shape[1:]), m.num_classes, m.attention, m.attention_heads, m.head_units,
                      m.dropout, m.batch_norm)
    return keras.Model(inputs, head(features), name=f"{m.backbone}_{m.attention}")
