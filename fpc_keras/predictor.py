"""A model ready to run: its file, its card and a predict function (Keras or TFLite). No TensorFlow or pandas
here, so that tflite/run.py on an edge board can build one."""
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
