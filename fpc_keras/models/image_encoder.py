"""A frozen ImageNet image encoder: backbone -> global average pooling, one embedding per image. Not trained here;
`familiarity` uses it to tell whether an input looks like a model's training images."""
from __future__ import annotations

import keras

from .backbones import apply_backbone

EMBEDDING_LAYER = "image_embedding"


def build_image_encoder(size: tuple[int, int] = (224, 224), backbone: str = "efficientnet_lite0",
                        weights: str = "imagenet") -> keras.Model:
    """RGB 0-255 images of `size` -> the backbone's globally averaged features (Lite0: 1,280 per image)."""
    inputs = keras.Input((*size, 3), name="image")
    features = apply_backbone(inputs, backbone, weights)
    embedding = keras.layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(features)
    return keras.Model(inputs, embedding, name=f"{backbone}_image_encoder")
