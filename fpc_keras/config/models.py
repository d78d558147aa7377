"""The model section of a run config: the flat `model:` mapping of the YAML (ModelConfig) and each architecture's
own section (`MODEL_SECTIONS`), which is what its builder reads and its card records."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from ..errors import BadInputError, one_of


@dataclass
class ModelConfig:
    name: str = "efficientnet_attention"
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    attention: str = "se"
    attention_heads: int = 4
    head_units: tuple[int, ...] = (256, 128)
    dropout: float = 0.3
    batch_norm: bool = True
    # frozen_features: `flatten` keeps the conv5 map unpooled (the paper), `avg` pools it, `multiscale` pools
    # three depths of the backbone (avg + max) into one vector; a Slow-only slowfast on VGG16 pools each frame so
    # with `multiscale` (else it averages the last feature map).
    pooling: str = "flatten"
    # frozen_features: L2 penalty on the head's Dense kernels (a linear head with it is a logistic regression on
    # the standardised features; small training sets need it).
    weight_decay: float = 0.0
    # fetalnet: backbone `unet` is the plain U-Net encoder (`base_filters` doubling over `depth` levels); attention
    # `gates` puts attention gates on the skips; temporal `convlstm` makes it a video model over clips.
    base_filters: int = 16
    depth: int = 4
    temporal: str = "none"
    # slowfast: `preset` light (CPU / edge) or paper (ResNet-50 sized); the fast pathway sees `alpha` times the
    # slow pathway's frames with `beta` times its channels. backbone `none`: both pathways 3-D ResNets from scratch;
    # an ImageNet backbone (efficientnet_lite0..2) is the slow pathway's frame encoder. `fast_pathway: false` is the
    # SlowFast paper's Slow-only ablation (with an ImageNet encoder, Lite or vgg16: frame features pooled over time,
    # standardised, one classifier with L2 `weight_decay`; frozen, its head trains on cached frame features).
    preset: str = "light"
    alpha: int = 4
    beta: float = 0.125
    fast_pathway: bool = True
    # slowfast Slow-only on VGG16 multiscale: a second frozen ImageNet frame encoder (efficientnet_lite0..2) whose
    # pooled features join VGG16's as one more standardised branch before the linear classifier ("": none).
    extra_encoder: str = ""
    num_classes: int = 0

    def section(self) -> Any:
        """This architecture's own settings (`MODEL_SECTIONS[name]`): what its builder reads."""
        cls = MODEL_SECTIONS[self.name]
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def validate(self) -> None:
        one_of("model.name", self.name, tuple(MODEL_SECTIONS))
        if not 0 <= self.dropout < 1:
            raise BadInputError(f"model.dropout is {self.dropout}", "use a rate in [0, 1)")
        if any(units < 1 for units in self.head_units):
            raise BadInputError(f"model.head_units {self.head_units} has a non-positive size", "use positive sizes")
        one_of("model.pooling", self.pooling, POOLING_MODES)
        if self.weight_decay < 0:
            raise BadInputError(f"model.weight_decay is {self.weight_decay}", "use 0 (none) or a positive L2 factor")
        if self.alpha < 1 or not 0 < self.beta <= 1:
            raise BadInputError(f"model.alpha={self.alpha}, model.beta={self.beta}", "use alpha >= 1 and 0 < beta <= 1")
        if self.base_filters < 1 or not 1 <= self.depth <= 6:
            raise BadInputError(f"model.base_filters={self.base_filters}, model.depth={self.depth}",
                                "use base_filters >= 1 and depth 1..6")


POOLING_MODES = ("flatten", "avg", "multiscale")


# Each architecture's own section of the model config: the keys its builder reads (`ModelConfig.section()`, a frozen
# dataclass typed as ModelConfig types them) and all that its card records of the model config. The YAML keeps one
# flat `model:` mapping; keys another architecture uses are ignored by this one.
SECTION_KEYS = {
    "efficientnet_attention": ("backbone", "weights", "attention", "attention_heads", "head_units", "dropout",
                               "batch_norm", "num_classes"),
    "frozen_features": ("backbone", "weights", "pooling", "head_units", "dropout", "weight_decay", "num_classes"),
    "fetalnet": ("backbone", "weights", "attention", "base_filters", "depth", "temporal", "dropout", "num_classes"),
    "slowfast": ("backbone", "weights", "preset", "alpha", "beta", "fast_pathway", "pooling", "extra_encoder",
                 "weight_decay", "dropout", "num_classes"),
}
_TYPES = typing.get_type_hints(ModelConfig)
MODEL_SECTIONS = {name: dataclasses.make_dataclass("".join(w.title() for w in name.split("_")) + "Section",
                                                   [(key, _TYPES[key]) for key in keys], frozen=True)
                  for name, keys in SECTION_KEYS.items()}


def section_of(model: dict) -> dict:
    """A plain model config (a card's, a YAML's) cut to its name and its architecture's section."""
    cls = MODEL_SECTIONS.get(model.get("name"))
    used = {f.name for f in dataclasses.fields(cls)} if cls else set(model)
    return {k: v for k, v in model.items() if k == "name" or k in used}
