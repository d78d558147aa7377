"""Reference architectures built with random weights only to count their parameters: the paper's
"40x fewer trainable parameters" claim compares against such ensemble / transformer pipelines."""
from __future__ import annotations

import keras

from . import parameter_counts


def build_vit(image_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
              mlp: int = 3072, classes: int = 1000, name: str = "vit_b16") -> keras.Model:
    """A ViT (Dosovitskiy et al. 2021) in plain Keras layers; defaults are ViT-B/16."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(dim, patch, patch, name="patch_embed")(inputs)
    tokens = (image_size // patch) ** 2
    x = keras.layers.Reshape((tokens, dim))(x)
    x = _ClassTokenAndPosition(tokens, dim, name="cls_pos")(x)
    for i in range(depth):
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        y = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attention")(y, y)
        x = keras.layers.Add()([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        y = keras.layers.Dense(mlp, activation="gelu", name=f"block{i}_mlp1")(y)
        y = keras.layers.Dense(dim, name=f"block{i}_mlp2")(y)
        x = keras.layers.Add()([x, y])
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = keras.layers.Lambda(lambda t: t[:, 0], name="cls")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="head")(x), name=name)


class _ClassTokenAndPosition(keras.layers.Layer):
    def __init__(self, tokens: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.cls = self.add_weight(shape=(1, 1, dim), initializer="zeros", name="cls")
        self.position = self.add_weight(shape=(1, tokens + 1, dim), initializer="zeros", name="position")

    def call(self, x):
        cls = keras.ops.tile(self.cls, (keras.ops.shape(x)[0], 1, 1))
        return keras.ops.concatenate([cls, x], axis=1) + self.position


def reference_counts(classes: int) -> dict[str, dict[str, int]]:
    """Trainable / total parameters of DenseNet-169 and ViT-B/16 fine-tuned end to end for `classes` classes."""
    densenet = keras.applications.DenseNet169(weights=None, classes=classes)
    vit = build_vit(classes=classes)
    return {"DenseNet-169 (fine-tuned end to end)": parameter_counts(densenet),
            "ViT-B/16 (fine-tuned end to end)": parameter_counts(vit)}
