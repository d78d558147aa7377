"""A model ready to run: its file, its card and a predict function (Keras or TFLite). TensorFlow is imported only
by `keras_predict_fn`, and pandas never, so that tflite/run.py on an edge board can build one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .data.images import ImageSpec

PredictFn = Callable[..., np.ndarray]  # (batch, output=0) -> output `output` (0: primary; None: all, ranked)


@dataclass
class Predictor:
    path: str
    card: dict
    predict: PredictFn

    @property
    def task(self) -> str:
        return self.card["task"]

    @property
    def labels(self) -> list[str]:
        return self.card["labels"]

    def image_spec(self) -> ImageSpec:
        return ImageSpec.from_card(self.card)


def keras_predict_fn(model) -> PredictFn:
    """Inference-mode calls through one traced function (much faster than `model.predict` per batch)."""
    import tensorflow as tf

    from .litert import ranked_outputs

    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    def predict(batch: np.ndarray, output: int | None = 0):
        ranked = ranked_outputs(infer(tf.convert_to_tensor(batch, tf.float32)))
        return ranked if output is None else ranked[output]
    return predict
