"""The data, training and export sections of a run config, and the run config itself: typed dataclasses whose
`validate` names the key and the fix of every value out of range."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError, one_of
from .models import ModelConfig

DATA_KINDS = ("fetal_planes", "folder", "prefix", "csv", "hc18", "videos")
RESIZE_MODES = ("pad", "crop", "stretch", "stretch_crop")
ON_BAD_INPUT = ("error", "skip")
DUPLICATE_MODES = ("auto", "phash", "off")
SPLIT_QUOTAS = ("groups", "items")  # data.split_quota (data/records.py)
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
    # A split's share of each class counted in groups (every stored split) or in items: by items, a group larger
    # than what is left of the share is passed over, so one sweep of 42 frames cannot be a class's whole
    # validation split and leave its training split a handful of images (data/records.py).
    split_quota: str = "groups"
    # Seed of the split (folds, validation and test draws); empty: train.seed. Set it to keep one split while
    # train.seed varies (repeats that measure run-to-run spread, or members of one ensemble).
    split_seed: int | None = None
    # Learning curves: train on this fraction of each class's training groups (drawn with the split seed);
    # validation and test stay as they are, so runs at several fractions are measured on the same items.
    train_fraction: float = 1.0
    aliases: dict[str, str] = field(default_factory=dict)
    # Train on these classes only (after aliases; empty: all). Recorded in the card's label rule, so the evaluator
    # leaves the other classes' items out of new data the same way.
    classes: tuple[str, ...] = ()
    on_bad_input: str = "error"
    clip_length: int = 16
    clips_per_video: int = 4

    def validate(self) -> None:
        one_of("data.kind", self.kind, DATA_KINDS)
        one_of("data.resize", self.resize, RESIZE_MODES)
        one_of("data.on_bad_input", self.on_bad_input, ON_BAD_INPUT)
        one_of("data.duplicates", self.duplicates, DUPLICATE_MODES)
        one_of("data.split_quota", self.split_quota, SPLIT_QUOTAS)
        if not 0 <= self.duplicate_distance < 32:
            raise BadInputError(f"data.duplicate_distance is {self.duplicate_distance}",
                                "use 0 (exact copies) to 31 bits; 10 is the documented default")
        if self.channels not in (1, 3):
            raise BadInputError(f"data.channels is {self.channels}", "use 1 (grayscale) or 3 (RGB backbones)")
        if min(self.image_size) < 8:
            raise BadInputError(f"data.image_size {self.image_size} is too small", "use at least 8x8 pixels")
        if not 0 < self.train_fraction <= 1:
            raise BadInputError(f"data.train_fraction is {self.train_fraction}", "use a fraction in (0, 1]")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise BadInputError(f"data.{name} is {value}", "use a fraction in [0, 1)")
        if self.folds and not 0 <= self.fold < self.folds:
            raise BadInputError(f"data.fold {self.fold} is outside 0..{self.folds - 1}", "pick a fold index below data.folds")


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
    # Image classifiers: also mirror training images left-right at random (where the anatomy has no fixed side on
    # the screen, e.g. breast lesions); off by default.
    horizontal_flip: bool = False
    # Mixup while a classifier trains on images (phase 2, or a phase 1 that does not cache features): pairs of a
    # batch's images and one-hot labels blended with weights drawn from Beta(mixup, mixup), e.g. 0.2; 0 off.
    mixup: float = 0.0
    # Phase 1 on cached features: also cache this many augmented copies of each training image.
    feature_copies: int = 0
    early_stopping_patience: int = 5
    # Warm start: a run folder or .keras file whose layers (same name and shape) initialise the model, e.g. the
    # same network trained at a smaller input size (progressive resizing). Empty: start from `model.weights`.
    # `{cv}` becomes `_cv<K>_fold<i>` in fold i of a K-fold CV (each fold from its own fold's run), else nothing.
    init_from: str = ""
    # Final fit: a finished run (its folder or model card) whose validation split chose the epochs and the
    # post-processing; this run trains on its train + validation items for those epochs, keeps the last epoch and
    # applies that post-processing. Same split rule, so the test split is the source run's. Segmentation frame models.
    refit_from: str = ""
    # Phase 2: fine-tune the top N backbone blocks (0: no phase 2) from images (video models: from clips), with
    # augmentation. Segmentation (fetalnet, trained end to end): any N > 0 refines the whole network at
    # finetune_learning_rate.
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
    # Phase 2's batch size (0: train.batch_size): a head on cached features takes batches of 64 rows, a network
    # fine-tuned on 4-frame clips far fewer.
    finetune_batch_size: int = 0
    # Phase 2 of a classifier: also train the unfrozen blocks' BatchNormalization (scale, offset and running
    # statistics re-estimated on ultrasound batches) instead of keeping ImageNet's.
    finetune_batchnorm: bool = False
    # Multi-task models (fetalnet): loss weights of the mask (Dice + cross-entropy) and of the plane classifier.
    mask_weight: float = 1.0
    plane_weight: float = 0.2
    # tf.distribute: `default` (one device), `mirrored` (every local GPU, or logical CPU devices), `multi_worker`
    # (MultiWorkerMirroredStrategy; the cluster comes from the TF_CONFIG environment variable on each node).
    strategy: str = "default"
    seed: int = 0

    @property
    def phase2_batch_size(self) -> int:
        return self.finetune_batch_size or self.batch_size

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise BadInputError(f"train.epochs={self.epochs}, train.batch_size={self.batch_size}", "use values >= 1")
        if self.learning_rate <= 0:
            raise BadInputError(f"train.learning_rate is {self.learning_rate}", "use a positive learning rate")
        if not 0 <= self.label_smoothing < 1:
            raise BadInputError(f"train.label_smoothing is {self.label_smoothing}", "use a value in [0, 1)")
        if self.mixup < 0:
            raise BadInputError(f"train.mixup is {self.mixup}", "use a Beta parameter > 0 (e.g. 0.2), or 0 for off")
        if not 0 <= self.ema_momentum < 1:
            raise BadInputError(f"train.ema_momentum is {self.ema_momentum}", "use a value in [0, 1); 0 turns it off")
        one_of("train.balance", self.balance, BALANCE_MODES)
        one_of("train.strategy", self.strategy, STRATEGIES)
        one_of("train.finetune_schedule", self.finetune_schedule, ("constant", "cosine"))
        one_of("train.finetune_keep", self.finetune_keep, ("best", "last"))
        if self.finetune_weight_decay < 0:
            raise BadInputError(f"train.finetune_weight_decay is {self.finetune_weight_decay}", "use 0 (Adam) or more")
        if self.finetune_blocks < 0 or self.feature_copies < 0 or self.finetune_batch_size < 0:
            raise BadInputError("train.finetune_blocks, finetune_batch_size and feature_copies must be >= 0",
                                "use 0 to turn off")


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
    # mixed: int8 but for this many ops, those whose int8 outputs stray most from float (conversion.worst_int8_ops);
    # 6 of 3 / 6 / 12 was the best on BUSI Lite2 + SE's validation split (top-1 and agreement with float)
    float_ops: int = 6

    def validate(self) -> None:
        for variant in self.quant:
            one_of("export.quant", variant, QUANT_VARIANTS)
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

    @property
    def split_seed(self) -> int:
        return self.train.seed if self.data.split_seed is None else self.data.split_seed

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise BadInputError(f"run name {self.name!r} is not a folder name", "use letters, digits, '-' and '_'")
        for section in (self.data, self.model, self.train, self.export):
            section.validate()
