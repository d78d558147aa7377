"""Model builders, one file per architecture: `build_<name>(config) -> keras.Model`."""
from __future__ import annotations

from typing import Callable

import keras

from ..config import RunConfig
from ..errors import BadInputError
from . import layers, losses  # noqa: F401  (register the custom layers and losses for loading saved models)
from .efficientnet_attention import build_efficientnet_attention
from .fetalnet import build_fetalnet
from .frozen_features import build_frozen_feature_classifier
from .slowfast import build_slowfast

BUILDERS: dict[str, Callable[[RunConfig], keras.Model]] = {
    "efficientnet_attention": build_efficientnet_attention,
    "frozen_features": build_frozen_feature_classifier,
    "fetalnet": build_fetalnet,
    "slowfast": build_slowfast,
}


def build_model(config: RunConfig) -> keras.Model:
    builder = BUILDERS.get(config.model.name)
    if builder is None:
        raise BadInputError(f"unknown model {config.model.name!r}", f"use one of: {', '.join(BUILDERS)}")
    return builder(config)


def parameter_counts(model: keras.Model) -> dict[str, int]:
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    total = sum(int(w.numpy().size) for w in model.weights)
    return {"trainable": trainable, "total": total}
