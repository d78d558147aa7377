"""Attention blocks that refine a feature map (B, H, W, C): squeeze-excitation, CBAM, token self-attention."""
from __future__ import annotations

import keras

from ..errors import BadInputError
from .layers import ChannelPool

ATTENTIONS = ("none", "se", "cbam", "mhsa")


def squeeze_excitation(x, ratio: int = 16, name: str = "se"):
    channels = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = keras.layers.Dense(max(channels // ratio, 8), activation="relu", name=f"{name}_reduce")(s)
    s = keras.layers.Dense(channels, activation="sigmoid", name=f"{name}_expand")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def cbam(x, ratio: int = 16, kernel: int = 7, name: str = "cbam"):
    """Convolutional Block Attention Module (Woo et al. 2018): channel attention, then spatial attention."""
    channels = x.shape[-1]
    reduce = keras.layers.Dense(max(channels // ratio, 8), activation="relu", name=f"{name}_mlp_reduce")
    expand = keras.layers.Dense(channels, name=f"{name}_mlp_expand")
    avg = expand(reduce(keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_avg_pool")(x)))
    mx = expand(reduce(keras.layers.GlobalMaxPooling2D(keepdims=True, name=f"{name}_max_pool")(x)))
    channel = keras.layers.Activation("sigmoid", name=f"{name}_channel_gate")(
        keras.layers.Add(name=f"{name}_channel_sum")([avg, mx]))
    x = keras.layers.Multiply(name=f"{name}_channel_scale")([x, channel])
    pooled = ChannelPool(name=f"{name}_channel_pool")(x)
    spatial = keras.layers.Conv2D(1, kernel, padding="same", activation="sigmoid", name=f"{name}_spatial_gate")(pooled)
    return keras.layers.Multiply(name=f"{name}_spatial_scale")([x, spatial])


def token_self_attention(x, heads: int = 4, key_dim: int = 64, name: str = "mhsa"):
    """Multi-head self-attention over the H*W feature-map tokens, pre-norm with a residual connection."""
    h, w, c = x.shape[1:]
    tokens = keras.layers.Reshape((h * w, c), name=f"{name}_tokens")(x)
    normed = keras.layers.LayerNormalization(name=f"{name}_norm")(tokens)
    attended = keras.layers.MultiHeadAttention(heads, key_dim, name=f"{name}_attention")(normed, normed)
    tokens = keras.layers.Add(name=f"{name}_residual")([tokens, attended])
    return keras.layers.Reshape((h, w, c), name=f"{name}_feature_map")(tokens)


def apply_attention(x, kind: str, heads: int = 4):
    if kind == "none":
        return x
    if kind == "se":
        return squeeze_excitation(x)
    if kind == "cbam":
        return cbam(x)
    if kind == "mhsa":
        return token_self_attention(x, heads)
    raise BadInputError(f"unknown attention {kind!r}", f"use one of: {', '.join(ATTENTIONS)}")
