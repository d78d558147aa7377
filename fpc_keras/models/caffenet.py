"""The BVLC reference CaffeNet (AlexNet variant: pooling before LRN, grouped conv2/4/5) in Keras, 227x227 BGR
input with the ImageNet mean subtracted (done inside the model: it takes RGB 0-255 like every model here).

No genuine CaffeNet weights can be installed here. Users convert `bvlc_reference_caffenet.caffemodel` once with
caffe-tensorflow (`convert.py deploy.prototxt --caffemodel bvlc_reference_caffenet.caffemodel
--data-output-path caffenet.npy`) and pass `model.weights: /path/caffenet.npy`; `load_caffenet_weights` reads that
layout ({"conv1": {"weights": HWIO, "biases": ...}, ...}) or an `.npz` with `conv1/weights`, `conv1/biases` keys.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..errors import BadInputError
from .layers import CaffePreprocess

INPUT_SIZE = 227
CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


@keras.saving.register_keras_serializable(package="fpc_keras")
class LocalResponseNorm(keras.layers.Layer):
    """Caffe's across-channel LRN: x / (k + alpha / n * sum_window(x^2)) ^ beta."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def call(self, inputs):
        return tf.nn.local_response_normalization(inputs, depth_radius=(self.size - 1) // 2, bias=self.k,
                                                  alpha=self.alpha / self.size, beta=self.beta)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}


def caffenet_features(inputs):
    """conv1..pool5 (6x6x256) of CaffeNet on RGB 0-255 `inputs` of 227x227."""
    x = CaffePreprocess(name="caffe_preprocess")(inputs)
    x = keras.layers.Conv2D(96, 11, 4, activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="pool1")(x)
    x = LocalResponseNorm(name="norm1")(x)
    x = keras.layers.ZeroPadding2D(2, name="conv2_pad")(x)
    x = keras.layers.Conv2D(256, 5, groups=2, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="pool2")(x)
    x = LocalResponseNorm(name="norm2")(x)
    for name, filters, groups in (("conv3", 384, 1), ("conv4", 384, 2), ("conv5", 256, 2)):
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        x = keras.layers.Conv2D(filters, 3, groups=groups, activation="relu", name=name)(x)
    return keras.layers.MaxPooling2D(3, 2, name="pool5")(x)


def read_caffenet_weights(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer -> (HWIO kernel, bias) from a caffe-tensorflow `.npy` dict or an `.npz` with `layer/weights` keys."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            archive = np.load(path)
            return {n: (archive[f"{n}/weights"], archive[f"{n}/biases"]) for n in CONV_LAYERS}
        table = np.load(path, allow_pickle=True, encoding="latin1").item()
        return {n: (np.asarray(table[n]["weights"]), np.asarray(table[n]["biases"])) for n in CONV_LAYERS}
    except (OSError, KeyError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{path} is not a converted CaffeNet weight file ({type(exc).__name__}: {exc})",
                            "convert bvlc_reference_caffenet.caffemodel with caffe-tensorflow (README)") from None


def load_caffenet_weights(model: keras.Model, path: str | Path) -> None:
    for name, (kernel, bias) in read_caffenet_weights(path).items():
        layer = model.get_layer(name)
        expected = layer.kernel.shape
        if tuple(kernel.shape) != tuple(expected):
            raise BadInputError(f"{path}: {name} kernel is {kernel.shape}, CaffeNet's is {tuple(expected)}",
                                "convert the BVLC reference CaffeNet, not another network")
        layer.set_weights([kernel, bias])
