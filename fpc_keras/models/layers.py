"""Small custom layers, registered so that saved `.keras` models load with `fpc_keras.models` imported."""
from __future__ import annotations

import keras
from keras import ops

VGG_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="fpc_keras")
class CaffePreprocess(keras.layers.Layer):
    """RGB 0-255 -> BGR minus the ImageNet mean: what Keras' VGG16 weights expect."""

    def call(self, inputs):
        return caffe_preprocess(inputs)


@keras.saving.register_keras_serializable(package="fpc_keras")
class ChannelPool(keras.layers.Layer):
    """Mean and max over channels, stacked: the input of CBAM's spatial attention."""

    def call(self, inputs):
        return channel_pool(inputs)


# The arithmetic lives in functions so that the tf_keras twins of these layers (fpc_keras.qat) share it.
def caffe_preprocess(inputs):
    # Channels reversed by slices and a concatenation, not ops.flip: TFLite's full-int8 quantiser gives REVERSE_V2
    # an output scale of its own that the byte-copying kernel ignores, which put VGG16's int8 features ~50 % off.
    bgr = ops.concatenate([inputs[..., 2:3], inputs[..., 1:2], inputs[..., 0:1]], axis=-1)
    return bgr - ops.convert_to_tensor(VGG_BGR_MEAN, dtype=inputs.dtype)


def channel_pool(inputs):
    return ops.concatenate([ops.mean(inputs, axis=-1, keepdims=True),
                            ops.max(inputs, axis=-1, keepdims=True)], axis=-1)


@keras.saving.register_keras_serializable(package="fpc_keras")
class FoldFrames(keras.layers.Layer):
    """(B, T, ...) -> (B * T, ...): a clip's frames go through 2-D layers as one batch (shared weights)."""

    def call(self, inputs):
        return ops.reshape(inputs, (-1, *inputs.shape[2:]))


@keras.saving.register_keras_serializable(package="fpc_keras")
class UnfoldFrames(keras.layers.Layer):
    """(B * T, ...) -> (B, T, ...): the inverse of FoldFrames for clips of `frames` frames."""

    def __init__(self, frames: int, **kwargs):
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, inputs):
        return ops.reshape(inputs, (-1, self.frames, *inputs.shape[1:]))

    def get_config(self) -> dict:
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package="fpc_keras")
class TakeFrames(keras.layers.Layer):
    """(B, T, ...) -> (B, T / stride, ...): every `stride`-th frame (SlowFast's slow pathway)."""

    def __init__(self, stride: int, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride

    def call(self, inputs):
        return inputs[:, :: self.stride]

    def compute_output_shape(self, input_shape):
        frames = None if input_shape[1] is None else -(-input_shape[1] // self.stride)
        return (input_shape[0], frames, *input_shape[2:])

    def get_config(self) -> dict:
        return {**super().get_config(), "stride": self.stride}


@keras.saving.register_keras_serializable(package="fpc_keras")
class MirrorWidth(keras.layers.Layer):
    """(B, H, W, C) mirrored left to right, as a gather of the columns in reverse order: TFLite's int8 GATHER keeps
    its input's scale (its REVERSE_V2 does not, see `caffe_preprocess`)."""

    def call(self, inputs):
        return ops.take(inputs, ops.arange(inputs.shape[2] - 1, -1, -1), axis=2)


@keras.saving.register_keras_serializable(package="fpc_keras")
class MeanOfHalves(keras.layers.Layer):
    """(2B, ...) -> (B, ...): the mean of the first and the second half of the batch (a batch and its mirror)."""

    def call(self, inputs):
        return ops.mean(ops.reshape(inputs, (2, -1, *inputs.shape[1:])), axis=0)

    def compute_output_shape(self, input_shape):
        return (None if input_shape[0] is None else input_shape[0] // 2, *input_shape[1:])
