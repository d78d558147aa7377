"""Typed run configuration: dataclasses, YAML files, `--set a.b=c` overrides and validation messages.

A config is plain data. `load_config` reads YAML, applies overrides, checks every key and type against the
dataclasses below and returns a `RunConfig`; `save_config` writes the resolved config beside the run's results.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import BadInputError
from .io import atomic_write_text

DATA_KINDS = ("fetal_planes", "folder", "prefix", "csv", "hc18", "videos")
RESIZE_MODES = ("pad", "crop", "stretch", "stretch_crop")
ON_BAD_INPUT = ("error", "skip")
DUPLICATE_MODES = ("auto", "phash", "off")
BALANCE_MODES = ("none", "class_weights", "sampling")
STRATEGIES = ("default", "mirrored", "multi_worker")


@dataclass
class DataConfig:
    kind: str = "folder"
    path: str = ""
    image_size: tuple[int, int] = (224, 224)
    channels: int = 3
    resize: str = "pad"
    # Splits carved from data without an official split; groups (patients, studies) never straddle splits.
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    folds: int = 0
    fold: int = 0
    # Near-duplicate images joined into one group (fpc_keras/data/duplicates.py): `auto` does it for data without
    # subject ids; `distance` is the most perceptual-hash bits (of 64) in which two near-twins differ.
    duplicates: str = "auto"
    duplicate_distance: int = 10
    aliases: dict[str, str] = field(default_factory=dict)
    # Train on these classes only (after aliases; empty: all). Recorded in the card's label rule, so the evaluator
    # leaves the other classes' items out of new data the same way.
    classes: tuple[str, ...] = ()
    on_bad_input: str = "error"
    clip_length: int = 16
    clips_per_video: int = 4

    def validate(self) -> None:
        _one_of("data.kind", self.kind, DATA_KINDS)
        _one_of("data.resize", self.resize, RESIZE_MODES)
        _one_of("data.on_bad_input", self.on_bad_input, ON_BAD_INPUT)
        _one_of("data.duplicates", self.duplicates, DUPLICATE_MODES)
        if not 0 <= self.duplicate_distance < 32:
            raise BadInputError(f"data.duplicate_distance is {self.duplicate_distance}",
                                "use 0 (exact copies) to 31 bits; 10 is the documented default")
        if self.channels not in (1, 3):
            raise BadInputError(f"data.channels is {self.channels}", "use 1 (grayscale) or 3 (RGB backbones)")
        if min(self.image_size) < 8:
            raise BadInputError(f"data.image_size {self.image_size} is too small", "use at least 8x8 pixels")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise BadInputError(f"data.{name} is {value}", "use a fraction in [0, 1)")
        if self.folds and not 0 <= self.fold < self.folds:
            raise BadInputError(f"data.fold {self.fold} is outside 0..{self.folds - 1}", "pick a fold index below data.folds")


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
    num_classes: int = 0

    def section(self) -> Any:
        """This architecture's own settings (`MODEL_SECTIONS[name]`): what its builder reads."""
        cls = MODEL_SECTIONS[self.name]
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def validate(self) -> None:
        _one_of("model.name", self.name, tuple(MODEL_SECTIONS))
        if not 0 <= self.dropout < 1:
            raise BadInputError(f"model.dropout is {self.dropout}", "use a rate in [0, 1)")
        if any(units < 1 for units in self.head_units):
            raise BadInputError(f"model.head_units {self.head_units} has a non-positive size", "use positive sizes")
        _one_of("model.pooling", self.pooling, POOLING_MODES)
        if self.weight_decay < 0:
            raise BadInputError(f"model.weight_decay is {self.weight_decay}", "use 0 (none) or a positive L2 factor")
        if self.alpha < 1 or not 0 < self.beta <= 1:
            raise BadInputError(f"model.alpha={self.alpha}, model.beta={self.beta}", "use alpha >= 1 and 0 < beta <= 1")
        if self.base_filters < 1 or not 1 <= self.depth <= 6:
            raise BadInputError(f"model.base_filters={self.base_filters}, model.depth={self.depth}",
                                "use base_filters >= 1 and depth 1..6")


POOLING_MODES = ("flatten", "avg", "multiscale")


# Each architecture's own section of the model config: what its builder reads (`ModelConfig.section()`) and all that
# its card records of the model config. The YAML keeps one flat `model:` mapping; keys another architecture uses
# are ignored by this one.
@dataclass(frozen=True)
class EfficientNetAttentionSection:
    backbone: str
    weights: str
    attention: str
    attention_heads: int
    head_units: tuple[int, ...]
    dropout: float
    batch_norm: bool
    num_classes: int


@dataclass(frozen=True)
class FrozenFeaturesSection:
    backbone: str
    weights: str
    pooling: str
    head_units: tuple[int, ...]
    dropout: float
    weight_decay: float
    num_classes: int


@dataclass(frozen=True)
class FetalNetSection:
    backbone: str
    weights: str
    attention: str
    base_filters: int
    depth: int
    temporal: str
    dropout: float
    num_classes: int


@dataclass(frozen=True)
class SlowFastSection:
    backbone: str
    weights: str
    preset: str
    alpha: int
    beta: float
    fast_pathway: bool
    pooling: str
    weight_decay: float
    dropout: float
    num_classes: int


MODEL_SECTIONS = {"efficientnet_attention": EfficientNetAttentionSection, "frozen_features": FrozenFeaturesSection,
                  "fetalnet": FetalNetSection, "slowfast": SlowFastSection}


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    freeze_backbone: bool = True
    cache_features: bool = True
    label_smoothing: float = 0.0
    # Polyak averaging: validate, keep and ship the exponential moving average of the weights (this momentum per
    # step, e.g. 0.995); 0 turns it off. The raw weights keep training and are what a resume continues from.
    ema_momentum: float = 0.0
    # Against class imbalance: loss weights inversely proportional to class counts, or class-balanced sampling.
    balance: str = "class_weights"
    augment: bool = True
    # Phase 1 on cached features: also cache this many augmented copies of each training image.
    feature_copies: int = 0
    early_stopping_patience: int = 5
    # Warm start: a run folder or .keras file whose layers (same name and shape) initialise the model, e.g. the
    # same network trained at a smaller input size (progressive resizing). Empty: start from `model.weights`.
    init_from: str = ""
    # Final fit: a finished run (its folder or model card) whose validation split chose the epochs and the
    # post-processing; this run trains on its train + validation items for those epochs, keeps the last epoch and
    # applies that post-processing. Same split rule, so the test split is the source run's. Segmentation frame models.
    refit_from: str = ""
    # Phase 2: fine-tune the top N backbone blocks (0: no phase 2) from images, with augmentation. Segmentation
    # (fetalnet, trained end to end): any N > 0 refines the whole network at finetune_learning_rate.
    finetune_blocks: int = 0
    finetune_epochs: int = 10
    finetune_learning_rate: float = 1e-4
    # Phase 2 of a classifier: `cosine` decays the learning rate to zero over its epochs; a weight decay > 0 makes
    # the optimiser AdamW (decoupled decay, e.g. 0.01).
    finetune_schedule: str = "constant"
    finetune_weight_decay: float = 0.0
    # Phase 2 of a classifier: `best` keeps its best validation epoch, and only where it beats phase 1; `last` keeps
    # its last epoch whatever validation says (fixed in the recipe: a validation split of ~75 images chooses on
    # noise, and a cosine schedule ends where the weights have settled).
    finetune_keep: str = "best"
    # Multi-task models (fetalnet): loss weights of the mask (Dice + cross-entropy) and of the plane classifier.
    mask_weight: float = 1.0
    plane_weight: float = 0.2
    # tf.distribute: `default` (one device), `mirrored` (every local GPU, or logical CPU devices), `multi_worker`
    # (MultiWorkerMirroredStrategy; the cluster comes from the TF_CONFIG environment variable on each node).
    strategy: str = "default"
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise BadInputError(f"train.epochs={self.epochs}, train.batch_size={self.batch_size}", "use values >= 1")
        if self.learning_rate <= 0:
            raise BadInputError(f"train.learning_rate is {self.learning_rate}", "use a positive learning rate")
        if not 0 <= self.label_smoothing < 1:
            raise BadInputError(f"train.label_smoothing is {self.label_smoothing}", "use a value in [0, 1)")
        if not 0 <= self.ema_momentum < 1:
            raise BadInputError(f"train.ema_momentum is {self.ema_momentum}", "use a value in [0, 1); 0 turns it off")
        _one_of("train.balance", self.balance, BALANCE_MODES)
        _one_of("train.strategy", self.strategy, STRATEGIES)
        _one_of("train.finetune_schedule", self.finetune_schedule, ("constant", "cosine"))
        _one_of("train.finetune_keep", self.finetune_keep, ("best", "last"))
        if self.finetune_weight_decay < 0:
            raise BadInputError(f"train.finetune_weight_decay is {self.finetune_weight_decay}", "use 0 (Adam) or more")
        if self.finetune_blocks < 0 or self.feature_copies < 0:
            raise BadInputError("train.finetune_blocks and train.feature_copies must be >= 0", "use 0 to turn off")


@dataclass
class ExportConfig:
    quant: tuple[str, ...] = ("fp32", "int8")
    representative_samples: int = 64
    latency_runs: int = 30
    qat_epochs: int = 2
    qat_learning_rate: float = 1e-5
    # int8: each convolution's bias absorbs the mean output shift of its weights' int8 rounding
    # (fpc_keras.bias_correction)
    bias_correction: bool = True
    # mixed: int8 but for this many ops, those whose int8 outputs stray most from float (export.worst_int8_ops);
    # 6 of 3 / 6 / 12 was the best on BUSI Lite2 + SE's validation split (top-1 and agreement with float)
    float_ops: int = 6

    def validate(self) -> None:
        for variant in self.quant:
            _one_of("export.quant", variant, QUANT_VARIANTS)
        if self.float_ops < 0:
            raise BadInputError(f"export.float_ops={self.float_ops}", "use 0 or more ops kept in float")
        if self.qat_epochs < 1 or self.qat_learning_rate <= 0:
            raise BadInputError(f"export.qat_epochs={self.qat_epochs}, export.qat_learning_rate="
                                f"{self.qat_learning_rate}", "use at least 1 epoch and a positive learning rate")


QUANT_VARIANTS = ("fp32", "fp16", "dynamic", "int8", "mixed", "qat")


@dataclass
class RunConfig:
    name: str = "run"
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise BadInputError(f"run name {self.name!r} is not a folder name", "use letters, digits, '-' and '_'")
        for section in (self.data, self.model, self.train, self.export):
            section.validate()


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInputError(f"{key} is {value!r}", f"use one of: {', '.join(allowed)}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (["train", "epochs"], 3); the value is read as YAML (numbers, lists, true/false)."""
    if "=" not in text:
        raise BadInputError(f"override {text!r} has no '='", "write --set section.key=value, e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise BadInputError(f"cannot set {'.'.join(keys)}: {key} is not a section", "check the key path")
    node[keys[-1]] = value


def from_dict(cls: type, values: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a dict, checking every key and coercing lists to tuples."""
    if not isinstance(values, dict):
        raise BadInputError(f"config section {where or 'root'} is {type(values).__name__}, not a mapping",
                            "write it as `key: value` lines")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise BadInputError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}",
                            f"valid keys{' in ' + where if where else ''}: {', '.join(sorted(known))}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}" if where else name) for name, value in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, key)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise BadInputError(f"{key} must be a mapping, got {value!r}", f"write {key}: {{a: b}}")
        return {str(k): str(v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise BadInputError(f"{key} must be true or false, got {value!r}", f"write {key}=true or {key}=false")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadInputError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}", f"fix the value of {key}")


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config as a tree. `extends: FILE` (relative to the file) makes it an overlay: the base file's tree,
    its sections updated key by key with this file's (an ablation variant states only what it changes)."""
    if not path.is_file():
        raise BadInputError(f"config file {path} does not exist", "give the path of a YAML config")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BadInputError(f"config file {path} is not valid YAML: {exc}", "fix the YAML syntax") from None
    if not isinstance(tree, dict):
        raise BadInputError(f"config file {path} holds a {type(tree).__name__}, not a mapping",
                            "write it as `section:` blocks of `key: value` lines")
    base = tree.pop("extends", None)
    if base is None:
        return tree
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise BadInputError(f"config file {path} extends {base}, which extends it back", "break the cycle")
    merged = read_recipe(base_path, (*seen, path.resolve()))
    for key, value in tree.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or the defaults), apply `a.b=c` overrides, validate, return a RunConfig."""
    tree = read_recipe(Path(path)) if path is not None else {}
    for text in overrides:
        apply_override(tree, *parse_override(text))
    config = from_dict(RunConfig, tree)
    config.validate()
    return config


def config_to_dict(config: RunConfig) -> dict:
    return {k: _plain(v) for k, v in dataclasses.asdict(config).items()}


def model_section_dict(model: ModelConfig) -> dict:
    """The model's name and its architecture's section, as plain data: what a card records and a resume compares."""
    return section_of(_plain(dataclasses.asdict(model)))


def section_of(model: dict) -> dict:
    """A plain model config (a card's, a YAML's) cut to its name and its architecture's section."""
    cls = MODEL_SECTIONS.get(model.get("name"))
    used = {f.name for f in dataclasses.fields(cls)} if cls else set(model)
    return {k: v for k, v in model.items() if k == "name" or k in used}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def save_config(config: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
