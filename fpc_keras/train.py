"""Training, shared by every classifier of the suite.

Run folder (`runs/<name>/`): config.yaml (resolved), splits.csv, model_card.json, checkpoints/ (last.keras,
best.keras, state.json), history.csv, model.keras (the selected model), results.json (its test metrics).

- Model selection on the validation split (carved from the training groups): early stopping and the kept
  model follow validation macro-F1; the test split is touched once, at the end.
- Resume: every epoch writes last.keras (with optimizer state) and state.json atomically; rerunning the same
  command continues from the last finished epoch.
- Phase 1 trains with the backbone frozen. With `train.cache_features`, backbone features are computed once per
  image (and per augmented copy, `train.feature_copies`) and stored under a checksum of the backbone weights,
  preprocessing and files, so each head epoch costs a fraction of a second. A Slow-only video model's head is
  fitted on its slow frames' features, computed once per run in memory.
- Phase 2 (`train.finetune_blocks` > 0) fine-tunes the top N backbone blocks from images with augmentation, at
  `train.finetune_learning_rate`; its checkpoints only replace phase 1's model when validation improves.
- Weight averaging (`train.ema_momentum` > 0): each epoch is validated, and best.keras kept, with the moving
  average of the weights; training (and last.keras) continues on the raw weights.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from .card import make_card, write_card
from .config import RunConfig, TrainConfig, config_to_dict, load_config, save_config
from .data.datasets import TASK_OF_KIND, read_records, split_records
from .data.duplicates import RULE_BEFORE_DUPLICATES, resolve_mode
from .data.augment import build_augmenter
from .data.images import ImageSpec
from .data.pipeline import (SkipLog, balanced_order, clip_dataset, epoch_batches, image_dataset, label_ids,
                            segmentation_arrays, segmentation_dataset, shuffled_order, sweep_arrays)
from .data.sweeps import PLANE_LABELS
from .data.records import Record, in_split, labels_of, split_counts
from .data.video import model_clips, read_video, sample_clip
from .errors import BadInputError
from .evaluate import Predictor, choose_postprocessing, evaluate, keras_predict_fn, summary_line
from .litert import primary_output
from .io import atomic_path, atomic_write_json, atomic_write_text, read_json
from .metrics import dice_iou, macro_f1
from .models import build_model, parameter_counts
from .models.backbones import set_backbone_trainable

Progress = Callable[[str], None]
Validate = Callable[[], tuple[float, float, str]]  # -> (score to maximise, loss to break ties, score name)


def train(config: RunConfig, progress: Progress = print) -> Path:
    """Train (or resume, or skip when finished), select on validation, evaluate on test, write the run."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.train.seed)
    progress(f"[1/4] reading {config.data.kind}:{config.data.path}")
    records = read_records(config.data.kind, config.data.path, config.data.aliases, config.data.classes)
    config.data.duplicates = resolve_mode(config.data.duplicates, config.data.kind, records)
    source = read_refit_source(config) if config.train.refit_from else None
    final_epochs = final_fit_epochs(source) if source is not None else None
    records = split_records(records, config.data.val_fraction, config.data.test_fraction, config.train.seed,
                            config.data.folds, config.data.fold, config.data.duplicates,
                            config.data.duplicate_distance)
    task = TASK_OF_KIND[config.data.kind]
    if source is not None:
        records = _final_fit_records(config, records, task)
    labels = list(PLANE_LABELS) if task == "segmentation" else labels_of(records)
    if len(labels) < 2:
        raise BadInputError(f"{config.data.path} holds {len(labels)} class(es): {labels}", "give at least two classes")
    config.model.num_classes = len(labels)
    counts = split_counts(records)
    progress(f"      {len(records)} items, classes {labels}, splits {counts}")
    check_resumable(config)
    _write_run_files(config, records)
    if source is not None:
        session = _SegmentationSession(config, records, labels, progress, final_epochs)
    else:
        session = {"segmentation": _SegmentationSession, "video": _VideoSession}.get(task, _Session)(
            config, records, labels, progress)
    strategy = distribution_strategy(config.train.strategy)
    if strategy.num_replicas_in_sync > 1:
        progress(f"      {config.train.strategy} strategy over {strategy.num_replicas_in_sync} replicas; a batch of "
                 f"{config.train.batch_size} is split between them")
    with strategy.scope():  # variables (model, optimizer) are created, restored and trained under it
        model = session.run()
    with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    card = make_card(config.name, task, labels, config.data.image_size,
                     config.data.channels, config.data.resize,
                     {"kind": config.data.kind, "aliases": dict(config.data.aliases),
                      **({"classes": list(config.data.classes)} if config.data.classes else {})},
                     config_to_dict(config)["model"], parameter_counts(model),
                     {"data": f"{config.data.kind}:{config.data.path}", "splits": counts,
                      "split_rule": split_rule(config), "seed": config.train.seed, "phases": session.summary(),
                      **({"init_from": config.train.init_from} if config.train.init_from else {}),
                      **({"refit_from": {"source": config.train.refit_from, "name": source["name"],
                                         "epochs": final_epochs}} if source is not None else {})})
    if len(model.inputs[0].shape) == 5:  # a clip model (fetalnet video, slowfast): T frames per input
        card["preprocessing"]["clip_length"] = config.data.clip_length
        card["preprocessing"]["clips_per_video"] = config.data.clips_per_video
        card["input"]["shape"].insert(1, config.data.clip_length)
    predictor = Predictor(str(run_dir / "model.keras"), card, keras_predict_fn(model))
    if source is not None:
        card["postprocessing"] = {**source["postprocessing"], "source": config.train.refit_from}
    elif task == "segmentation" and "clip_length" not in card["preprocessing"]:
        card["postprocessing"] = choose_postprocessing(predictor, in_split(records, "val"), config.train.batch_size,
                                                       progress)
    write_card(run_dir, card)
    progress("[4/4] evaluating the selected model on the test split")
    test = in_split(records, "test")
    results = evaluate(predictor, test, f"{config.data.kind}:{config.data.path}", "test",
                       config.data.on_bad_input, config.train.batch_size, progress)
    results["timings"]["train_seconds"] = sum(p["seconds"] for p in session.summary().values())
    results["phases"] = session.summary()
    atomic_write_json(run_dir / "results.json", results)
    card["metrics"] = {"test": results["metrics"], "n_test": results["n"]}
    write_card(run_dir, card)
    progress("      " + summary_line(results))
    return run_dir


def fresh_model(config: RunConfig, progress: Progress) -> keras.Model:
    """The configured model, warm-started from `train.init_from` when one is given."""
    model = build_model(config)
    if config.train.init_from:
        warm_start(model, config.train.init_from, progress)
    return model


def warm_start(model: keras.Model, source: str | Path, progress: Progress) -> None:
    """Copy into `model` the weights of every layer of `source` (a run folder or a `.keras` file) with the same name
    and weight shapes: progressive resizing (a fully convolutional model trained at a smaller input size, refined
    at a larger one) or a new head on a trained network. Says what was copied and what was left as built."""
    path = Path(source)
    path = path / "model.keras" if path.is_dir() else path
    if not path.is_file():
        raise BadInputError(f"train.init_from: {path} does not exist",
                            "give a run folder that finished training or a .keras file")
    donor = {layer.name: layer for layer in keras.saving.load_model(path, compile=False).layers}
    copied, kept = [], []
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        source_weights = donor[layer.name].get_weights() if layer.name in donor else []
        if [w.shape for w in source_weights] == [w.shape for w in weights]:
            layer.set_weights(source_weights)
            copied.append(layer.name)
        else:
            kept.append(layer.name)
    if not copied:
        raise BadInputError(f"train.init_from: no layer of {path} matches the configured model by name and shape",
                            "warm-start from a run of the same architecture")
    progress(f"      warm start from {path}: {len(copied)} layer(s) copied"
             + (f", {len(kept)} left as built: {', '.join(kept)}" if kept else ""))


def check_resumable(config: RunConfig) -> None:
    """A run folder with checkpoints resumes (or, finished, is evaluated again) only under the data, model and seed
    it was trained with. Anything else would load its weights into another network, or measure them on a split
    that holds their training items (a new seed deals the items anew) and overwrite the run's results with that."""
    stored = config.run_dir / "config.yaml"
    if not (stored.is_file() and (config.run_dir / "checkpoints").is_dir()):
        return
    changed = _differences(_recipe(load_config(stored)), _recipe(config))
    if changed:
        raise BadInputError(f"{config.run_dir} was trained with another configuration ({'; '.join(changed)})",
                            "give the new run its own name (--set name=NAME), or delete the folder to train it again")


def _recipe(config: RunConfig) -> dict:
    """What a run's checkpoints and splits depend on: the data section (but not the bad-input policy), the model
    (classes as counted when it was trained) and the seed."""
    tree = config_to_dict(config)
    data = {k: v for k, v in tree["data"].items() if k != "on_bad_input"}
    return {"data": data, "model": tree["model"], "train": {"seed": tree["train"]["seed"]}}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return out


def split_rule(config: RunConfig) -> dict:
    """What decides which item lands in which split (the card's `training.split_rule`)."""
    return {"val_fraction": config.data.val_fraction, "folds": config.data.folds,
            "test_fraction": config.data.test_fraction, "fold": config.data.fold, "seed": config.train.seed,
            "duplicates": config.data.duplicates, "duplicate_distance": config.data.duplicate_distance}


def read_refit_source(config: RunConfig) -> dict:
    """The model card of `train.refit_from`, checked to hold what a final fit takes from it (epochs per phase,
    post-processing) and to have been split by the same rule, so that its test split stays out of this run."""
    path = Path(config.train.refit_from)
    path = path / "model_card.json" if path.is_dir() else path
    if not path.is_file():
        raise BadInputError(f"train.refit_from: {path} does not exist",
                            "give a run folder that finished training, or its model_card.json")
    card = read_json(path)
    training = card.get("training", {})
    if "phase1" not in training.get("phases", {}) or "postprocessing" not in card:
        raise BadInputError(f"train.refit_from: {path} records no training phases or post-processing",
                            "give the card of a segmentation run that finished training and its validation choice")
    if {**RULE_BEFORE_DUPLICATES, **training.get("split_rule", {})} != split_rule(config):
        raise BadInputError(f"train.refit_from: {path} was split by {training.get('split_rule')}, this run by "
                            f"{split_rule(config)}",
                            "use the source run's data.val_fraction, data.test_fraction, data.folds, data.fold and "
                            "train.seed, so that its test split stays apart")
    return card


def final_fit_epochs(card: dict) -> dict[str, int]:
    """Epochs per phase that the source run kept: up to its best epoch; a phase whose checkpoints never beat the
    previous phase's best (best epoch -1) is left out."""
    return {name: phase["best_epoch"] + 1 for name, phase in card["training"]["phases"].items()
            if phase["best_epoch"] >= 0}


def _final_fit_records(config: RunConfig, records: list[Record], task: str) -> list[Record]:
    """The validation items joined to training (a final fit has no selection left to make)."""
    if task != "segmentation" or config.model.temporal != "none":
        raise BadInputError(f"train.refit_from is set for a {task} run (temporal {config.model.temporal})",
                            "a final fit is implemented for segmentation frame models (fetalnet, temporal none)")
    return [replace(r, split="train") if r.split == "val" else r for r in records]


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """`default`: the current (single-device) strategy; `mirrored`: synchronous data parallelism over the local
    GPUs (or logical CPU devices where there are none); `multi_worker`: the same across the nodes in TF_CONFIG."""
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _write_run_files(config: RunConfig, records: Sequence[Record]) -> None:
    save_config(config, config.run_dir / "config.yaml")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "label", "group", "split", "extras"])
    writer.writerows([r.source, r.label, r.group, r.split, json.dumps(r.extras) if r.extras else ""]
                     for r in records)
    atomic_write_text(config.run_dir / "splits.csv", buffer.getvalue())


def make_optimizer(learning_rate, ema_momentum: float = 0.0, weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """Adam (AdamW with `weight_decay` > 0) at a rate or a schedule; with `ema_momentum` > 0 it also keeps an
    exponential moving average of the weights, which `averaged_weights` swaps in for validation and checkpoints of
    the best epoch."""
    averaging = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    if weight_decay:
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **averaging)
    return keras.optimizers.Adam(learning_rate, **averaging)


def finetune_rate(t: TrainConfig, train_items: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Phase 2's learning rate: constant, or cosine decay to zero over its steps."""
    if t.finetune_schedule == "constant":
        return t.finetune_learning_rate
    steps = t.finetune_epochs * -(-train_items // t.batch_size)
    return keras.optimizers.schedules.CosineDecay(t.finetune_learning_rate, decay_steps=max(steps, 1))


def _averaging(model: keras.Model) -> keras.optimizers.Optimizer | None:
    optimizer = getattr(model, "optimizer", None)
    return optimizer if getattr(optimizer, "use_ema", False) and optimizer.built else None


def _averaged_pairs(optimizer: keras.optimizers.Optimizer) -> list[tuple]:
    # Keras keeps the averages in a private list aligned with the trained variables (its own SwapEMAWeights
    # callback reads the same two lists); tests/test_train.py pins what this relies on.
    return [(var, average) for var, average in zip(optimizer._trainable_variables,
                                                   optimizer._model_variables_moving_average) if average is not None]


@contextlib.contextmanager
def averaged_weights(model: keras.Model):
    """Inside: the model holds its optimizer's moving average of the weights (where it keeps one); after: the
    raw weights again, the average unchanged."""
    optimizer = _averaging(model)
    if optimizer is not None:
        _swap_average(optimizer)
    try:
        yield
    finally:
        if optimizer is not None:
            _swap_average(optimizer)


def _swap_average(optimizer: keras.optimizers.Optimizer) -> None:
    for var, average in _averaged_pairs(optimizer):
        raw = var.numpy()
        var.assign(average)
        average.assign(raw)


def restart_average(model: keras.Model) -> None:
    """The moving average starts again from the current weights (a phase continuing from another phase's best
    model, whose checkpoint holds the average as its weights)."""
    optimizer = _averaging(model)
    for var, average in _averaged_pairs(optimizer) if optimizer is not None else []:
        average.assign(var)


def compile_classifier(model: keras.Model, learning_rate, label_smoothing: float, ema_momentum: float = 0.0,
                       weight_decay: float = 0.0) -> keras.Model:
    model.compile(optimizer=make_optimizer(learning_rate, ema_momentum, weight_decay),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"])
    return model


class _Session:
    """Both phases of one run: the data they share and the order they run in."""

    def __init__(self, config: RunConfig, records: Sequence[Record], labels: list[str], progress: Progress):
        self.config, self.labels, self.progress = config, labels, progress
        self.train_records = in_split(records, "train")
        self.val_records = in_split(records, "val")
        self.y_train = label_ids(self.train_records, labels)
        self.y_val = label_ids(self.val_records, labels)
        self.spec = ImageSpec(tuple(config.data.image_size), config.data.channels, config.data.resize)
        self.skip_log = SkipLog() if config.data.on_bad_input == "skip" else None
        ckpt = config.run_dir / "checkpoints"
        patience = config.train.early_stopping_patience
        history = config.run_dir / "history.csv"
        self.phase1 = _Phase("phase1", ckpt / "phase1", patience, history, progress)
        self.phase2 = _Phase("phase2", ckpt / "phase2", patience, history, progress)

    def run(self) -> keras.Model:
        t, m = self.config.train, self.config.model
        self.progress(f"[2/4] building {m.name} ({m.backbone}, attention {m.attention}, weights {m.weights})")
        model = fresh_model(self.config, self.progress)
        set_backbone_trainable(model, 0 if t.freeze_backbone else None)
        if t.freeze_backbone and t.cache_features:
            head = model.get_layer("head")
            fitted = self.phase1.resume() or compile_classifier(head, t.learning_rate, t.label_smoothing,
                                                                t.ema_momentum)
            if not self.phase1.state["done"]:
                self._fit_on_cache(model, fitted)
            head.set_weights(self.phase1.best().get_weights())
        else:
            fitted = self.phase1.resume() or compile_classifier(model, t.learning_rate, t.label_smoothing,
                                                                t.ema_momentum)
            if not self.phase1.state["done"]:
                self._fit_on_images(fitted, t.epochs, self.phase1)
            model = self.phase1.best()
        if t.finetune_blocks:
            model = self._finetune(model)
        if self.skip_log is not None and self.skip_log.skipped:
            self.progress("      " + self.skip_log.summary())
        return model

    def summary(self) -> dict:
        return _phase_summary(self.phase1, self.phase2)

    def _fit_on_cache(self, model: keras.Model, head: keras.Model) -> None:
        t = self.config.train
        if self.skip_log is not None:
            raise BadInputError("train.cache_features needs every image readable (data.on_bad_input=skip given)",
                                "set train.cache_features=false to skip unreadable files while training")
        extractor = keras.Model(model.input, model.get_layer(_head_input(model)).output)
        cache = FeatureCache(Path(self.config.runs_dir) / "_feature_cache", extractor, self.spec, self.progress)
        with self.phase1.timed():
            x_train = [cache.features(self.train_records)]
            for copy in range(1, t.feature_copies + 1):
                augment = build_augmenter(seed=t.seed + 100 * copy)
                x_train.append(cache.features(self.train_records, augment, f"augment{copy}-{augment.fingerprint}"))
            x_train = StackedRows(x_train)  # memory-mapped, never copied into one array
            x_val = cache.features(self.val_records)
        y_train = np.tile(self.y_train, t.feature_copies + 1)
        self.progress(f"[3/4] phase 1: the head on cached features ({len(x_train)} train incl. "
                      f"{t.feature_copies} augmented cop{'y' if t.feature_copies == 1 else 'ies'}, "
                      f"{len(x_val)} val)")
        predict_val = lambda: head.predict(x_val, verbose=0, batch_size=256)  # noqa: E731
        fit_head_on_features(head, self.phase1, x_train, y_train, _classification_score(predict_val, self.y_val),
                             t, len(self.labels))

    def _fit_on_images(self, model: keras.Model, epochs: int, phase: "_Phase") -> None:
        t = self.config.train
        augment = build_augmenter(seed=t.seed) if t.augment else None
        data = image_dataset(self.train_records, self.spec, self.labels, t.batch_size, shuffle=True, seed=t.seed,
                             augment=augment, skip_log=self.skip_log, balanced=t.balance == "sampling")
        val = image_dataset(self.val_records, self.spec, None, t.batch_size, skip_log=self.skip_log)
        predict = keras_predict_fn(model)
        predict_val = lambda: np.concatenate([predict(x.numpy()) for x, _ in val])  # noqa: E731
        self.progress(f"[3/4] {phase.name}: the model on images ({len(self.train_records)} train, "
                      f"{len(self.val_records)} val, {parameter_counts(model)['trainable']:,} trainable parameters)")
        phase.fit(model, data, epochs, _classification_score(predict_val, self.y_val),
                  class_weights(self.y_train, len(self.labels), t.balance))

    def _finetune(self, model: keras.Model) -> keras.Model:
        """Phase 2: unfreeze the top blocks; keep phase 1's model unless validation macro-F1 improves."""
        t = self.config.train
        self.phase2.floor = (self.phase1.state["best_score"], -self.phase1.state["best_loss"])
        fitted = self.phase2.resume()
        if fitted is None:
            # A copy trains, so that `model` keeps phase 1's best weights should phase 2 never beat them.
            fitted = keras.models.clone_model(model)
            fitted.set_weights(model.get_weights())
            unfrozen = set_backbone_trainable(fitted, t.finetune_blocks)
            self.progress(f"      phase 2: fine-tuning the top {t.finetune_blocks} blocks ({unfrozen} layers)")
            fitted = compile_classifier(fitted, finetune_rate(t, len(self.train_records)), t.label_smoothing,
                                        t.ema_momentum, t.finetune_weight_decay)
        if not self.phase2.state["done"]:
            self._fit_on_images(fitted, t.finetune_epochs, self.phase2)
        return self.phase2.best() or model


def class_weights(y: np.ndarray, classes: int, balance: str) -> dict[int, float] | None:
    """Loss weights inversely proportional to the class counts (`train.balance: class_weights`), else None."""
    if balance != "class_weights":
        return None
    counts = np.bincount(y, minlength=classes)
    return {c: float(len(y) / (classes * n)) if n else 0.0 for c, n in enumerate(counts)}


def fit_head_on_features(head: keras.Model, phase: "_Phase", x_train, y_train: np.ndarray, validate: Validate,
                         t: TrainConfig, classes: int) -> None:
    """Phase `phase` of a head on precomputed features (rows of `x_train`), in an order that a resume repeats."""
    if phase.state["epoch"] < 0:
        start_feature_norm(head, x_train)
    order = balanced_order(y_train, t.seed) if t.balance == "sampling" else shuffled_order(len(y_train), t.seed)
    batches = epoch_batches(order, phase.state["epoch"] + 1, t.epochs, t.batch_size)
    data = _array_batches(batches, x_train, y_train, classes)
    phase.fit(head, data, t.epochs, validate, class_weights(y_train, classes, t.balance),
              steps_per_epoch=-(-len(y_train) // t.batch_size))


@keras.saving.register_keras_serializable(package="fpc_keras")
def dice_cross_entropy(y_true, y_pred):
    """Soft Dice loss per item (over all its pixels and frames) plus pixel-wise binary cross-entropy."""
    axes = tuple(range(1, len(y_pred.shape)))
    overlap = keras.ops.sum(y_true * y_pred, axis=axes)
    total = keras.ops.sum(y_true, axis=axes) + keras.ops.sum(y_pred, axis=axes)
    dice = (2.0 * overlap + 1.0) / (total + 1.0)
    pixels = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=axes[:-1])
    return 1.0 - dice + pixels


class _SegmentationSession:
    """Multi-task training (fetalnet): mask (Dice + cross-entropy) and plane class, weighted by
    `train.mask_weight` / `train.plane_weight`; selection on validation Dice. Frame models see each training item
    through a random probe pose, a quarter of them as off-plane frames; video models see a new random sweep of
    each item every epoch (fpc_keras.data.sweeps). An ImageNet encoder is fine-tuned end to end (its
    BatchNormalization statistics stay frozen). A final fit (`final_fit`: epochs per phase, from
    `train.refit_from`) has no validation split: each phase runs its epochs and keeps the last."""

    OFF_PLANE_FRACTION = 0.25

    def __init__(self, config: RunConfig, records: Sequence[Record], labels: list[str], progress: Progress,
                 final_fit: dict[str, int] | None = None):
        self.config, self.labels, self.progress, self.final_fit = config, labels, progress, final_fit
        self.train_records = in_split(records, "train")
        self.val_records = [] if final_fit else in_split(records, "val")
        self.spec = ImageSpec(tuple(config.data.image_size), config.data.channels, config.data.resize)
        ckpt, history = config.run_dir / "checkpoints", config.run_dir / "history.csv"
        self.phase = _Phase("phase1", ckpt / "phase1", config.train.early_stopping_patience, history, progress)
        self.phase2 = _Phase("phase2", ckpt / "phase2", config.train.early_stopping_patience, history, progress)

    def run(self) -> keras.Model:
        t, m = self.config.train, self.config.model
        self.progress(f"[2/4] building {m.name} (encoder {m.backbone}, attention {m.attention}, "
                      f"temporal {m.temporal}, weights {m.weights})")
        fitted = self.phase.resume()
        if fitted is None:
            fitted = fresh_model(self.config, self.progress)
            if m.backbone != "unet":
                set_backbone_trainable(fitted, None)
            fitted.compile(optimizer=make_optimizer(t.learning_rate, t.ema_momentum),
                           loss=[dice_cross_entropy, keras.losses.CategoricalCrossentropy()],
                           loss_weights=[t.mask_weight, t.plane_weight])
        epochs = self.final_fit or {"phase1": t.epochs, "phase2": t.finetune_epochs if t.finetune_blocks else 0}
        if not self.phase.state["done"]:
            self._fit(fitted, self.phase, epochs["phase1"])
        if not epochs.get("phase2"):
            return self.phase.best()
        # Phase 2: phase 1's best, refined at the lower learning rate; kept only where validation Dice improves.
        if self.final_fit is None:
            self.phase2.floor = (self.phase.state["best_score"], -self.phase.state["best_loss"])
        refined = self.phase2.resume()
        if refined is None:
            refined = self.phase.best()
            refined.optimizer.learning_rate.assign(t.finetune_learning_rate)
            restart_average(refined)
            self.progress(f"      phase 2: refining at learning rate {t.finetune_learning_rate}")
        if not self.phase2.state["done"]:
            self._fit(refined, self.phase2, epochs["phase2"])
        return self.phase2.best() or self.phase.best()

    def _fit(self, fitted: keras.Model, phase: "_Phase", epochs: int) -> None:
        t, m = self.config.train, self.config.model
        frames = self.config.data.clip_length if m.temporal != "none" else 0
        images, masks = self._arrays("train")
        validate = None
        if self.final_fit is None:
            val_images, val_masks = self._arrays("val")
            if frames:  # video models: validated on fixed sweeps of the validation images
                val_images, val_masks = sweep_arrays(val_images, val_masks, frames, t.seed)[:2]
            validate = _dice_score(fitted, val_images, val_masks, t.batch_size)
        data = segmentation_dataset(images, masks, t.batch_size, shuffle=True, seed=t.seed,
                                    off_plane_fraction=self.OFF_PLANE_FRACTION, frames=frames)
        self.progress(f"[3/4] {phase.name}: the model on {'sweeps of ' if frames else ''}images ({len(images)} "
                      f"train, {len(val_images) if validate else 'no'} val, "
                      f"{parameter_counts(fitted)['trainable']:,} trainable parameters)")
        phase.fit(fitted, data, epochs, validate)

    @functools.cache
    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A split's images and masks, read once for both phases."""
        records = self.train_records if split == "train" else self.val_records
        return segmentation_arrays(records, self.spec, self.progress)

    def summary(self) -> dict:
        return _phase_summary(self.phase, self.phase2)


class _VideoSession:
    """Video classifiers (slowfast): clips drawn anew every epoch, class-balanced, `data.clips_per_video` draws
    per training video, each a random stretch at a random speed, augmented as whole clips
    (`pipeline.clip_dataset`); selection on the validation videos' macro-F1, each video scored by the mean of
    `data.clips_per_video` evenly spaced clips, as the evaluator does. An ImageNet slow pathway is frozen
    (`train.freeze_backbone`); the fast pathway, laterals and classifier train."""

    def __init__(self, config: RunConfig, records: Sequence[Record], labels: list[str], progress: Progress):
        if config.train.finetune_blocks:
            raise BadInputError("train.finetune_blocks is not supported for video models yet",
                                "set train.finetune_blocks=0")
        self.config, self.labels, self.progress = config, labels, progress
        self.train_records, self.val_records = in_split(records, "train"), in_split(records, "val")
        self.y_train, self.y_val = label_ids(self.train_records, labels), label_ids(self.val_records, labels)
        self.phase = _Phase("phase1", config.run_dir / "checkpoints" / "phase1",
                            config.train.early_stopping_patience, config.run_dir / "history.csv", progress)

    def run(self) -> keras.Model:
        t, m, d = self.config.train, self.config.model, self.config.data
        self.progress(f"[2/4] building {m.name} (slow pathway {m.backbone}, preset {m.preset}, weights {m.weights})")
        if not m.fast_pathway and t.freeze_backbone and t.cache_features:
            return self._fit_head_on_frames()
        fitted = self.phase.resume()
        if fitted is None:
            fitted = fresh_model(self.config, self.progress)
            if m.backbone != "none":
                set_backbone_trainable(fitted, 0 if t.freeze_backbone else None)
            fitted = compile_classifier(fitted, t.learning_rate, t.label_smoothing, t.ema_momentum)
        if not self.phase.state["done"]:
            videos, val_videos = self._decoded(self.train_records), self._decoded(self.val_records)
            data = clip_dataset(videos, self.y_train, len(self.labels), d.clip_length, t.batch_size,
                                d.clips_per_video, self.phase.state["epoch"] + 1, t.epochs, t.seed,
                                build_augmenter(seed=t.seed, horizontal_flip=False) if t.augment else None)
            predict = keras_predict_fn(fitted)
            predict_val = lambda: np.stack([  # noqa: E731
                predict(model_clips(v, d.clip_length, d.clips_per_video)).mean(axis=0) for v in val_videos])
            self.progress(f"[3/4] phase1: {len(videos)} train videos x {d.clips_per_video} balanced clips per "
                          f"epoch, {len(val_videos)} val videos, {parameter_counts(fitted)['trainable']:,} "
                          "trainable parameters")
            self.phase.fit(fitted, data, t.epochs, _classification_score(predict_val, self.y_val),
                           steps_per_epoch=-(-len(videos) * d.clips_per_video // t.batch_size))
        return self.phase.best()

    def _fit_head_on_frames(self) -> keras.Model:
        """Slow-only on a frozen encoder: each slow frame's features are computed once (the evaluator's evenly
        spaced clips of every training video, and `train.feature_copies` sets of as many random, augmented clips),
        the head is fitted on single frames (class-weighted or class-balanced), and validation scores whole videos
        as the evaluator does (the head on each clip's mean features, clips' probabilities averaged)."""
        t, d = self.config.train, self.config.data
        model = fresh_model(self.config, self.progress)
        set_backbone_trainable(model, 0)
        head = model.get_layer("head")
        fitted = self.phase.resume() or compile_classifier(head, t.learning_rate, t.label_smoothing, t.ema_momentum)
        if not self.phase.state["done"]:
            frames = keras.Model(model.input, model.get_layer("unfold_slow").output)
            with self.phase.timed():
                x_train, y_train = self._frame_features(frames, self._decoded(self.train_records))
                val = [frames.predict(model_clips(v, d.clip_length, d.clips_per_video).astype(np.float32),
                                      verbose=0) for v in self._decoded(self.val_records)]
            clip_means, ends = np.concatenate([x.mean(axis=1) for x in val]), np.cumsum([len(x) for x in val])
            predict_val = lambda: np.stack([p.mean(axis=0) for p in np.split(  # noqa: E731
                fitted.predict(clip_means, verbose=0, batch_size=256), ends[:-1])])
            self.progress(f"[3/4] phase1: the head on frame features ({len(x_train)} training frames of "
                          f"{len(self.train_records)} videos, {len(val)} val videos)")
            fit_head_on_features(fitted, self.phase, x_train, y_train,
                                 _classification_score(predict_val, self.y_val), t, len(self.labels))
        head.set_weights(self.phase.best().get_weights())
        return model

    def _frame_features(self, frames: keras.Model, videos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of slow-frame features of the training videos, and their class ids."""
        t, d = self.config.train, self.config.data
        augment = build_augmenter(seed=t.seed, horizontal_flip=False)
        features, labels = [], []
        self.progress(f"      encoding the slow frames of {len(videos)} videos x {1 + t.feature_copies} clip sets")
        for index, (video, label) in enumerate(zip(videos, self.y_train)):
            clip_sets = [model_clips(video, d.clip_length, d.clips_per_video)]
            for copy in range(1, t.feature_copies + 1):
                rng = np.random.default_rng((t.seed, index, copy))
                clips = np.stack([video[sample_clip(len(video), d.clip_length, rng)]
                                  for _ in range(d.clips_per_video)]).astype(np.float32)
                clip_sets.append(augment.clips(tf.constant(clips), tf.constant(index * 1000 + copy, tf.int64)))
            for clips in clip_sets:
                encoded = frames.predict(np.asarray(clips, np.float32), verbose=0)
                features.append(encoded.reshape(-1, encoded.shape[-1]))
                labels.append(np.full(len(features[-1]), label))
        return np.concatenate(features), np.concatenate(labels)

    def _decoded(self, records: Sequence[Record]) -> list[np.ndarray]:
        """Every video decoded once at the model's size (uint8), kept in memory for all epochs."""
        d = self.config.data
        self.progress(f"      decoding {len(records)} videos")
        return [read_video(r.source, tuple(d.image_size), d.channels, d.resize) for r in records]

    def summary(self) -> dict:
        return _phase_summary(self.phase)


def _dice_score(model: keras.Model, images: np.ndarray, masks: np.ndarray, batch_size: int) -> Validate:
    """Mean validation Dice of the thresholded mask on the model's grid, and 1 - Dice as the tie-breaker."""
    def validate() -> tuple[float, float, str]:
        predicted = np.concatenate([primary_output(model(images[i:i + batch_size].astype(np.float32),
                                                         training=False))
                                    for i in range(0, len(images), batch_size)])
        dice = float(np.mean([dice_iou(p[..., 0] > 0.5, m[..., 0] > 127)[0] for p, m in zip(predicted, masks)]))
        return dice, 1.0 - dice, "dice"
    return validate

def _head_input(model: keras.Model) -> str:
    """The layer whose output feeds the nested `head` model: what the feature cache stores."""
    entry = next(e for e in model.get_config()["layers"] if e["config"]["name"] == "head")
    return entry["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0]


def _array_batches(indices: tf.data.Dataset, x: np.ndarray, y: np.ndarray, classes: int) -> tf.data.Dataset:
    """(features, one-hot) batches gathered in numpy by index: the arrays never become graph constants, which
    TensorFlow caps at 2 GB (a FETAL_PLANES_DB-sized feature cache is several GB)."""
    eye = np.eye(classes, dtype=np.float32)

    def gather(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(x[batch], dtype=np.float32), eye[y[batch]]

    def load(batch):
        features, labels = tf.numpy_function(gather, [batch], (tf.float32, tf.float32))
        return tf.ensure_shape(features, (None, *x.shape[1:])), tf.ensure_shape(labels, (None, classes))

    return indices.map(load).prefetch(tf.data.AUTOTUNE)


class _Phase:
    """One training phase: checkpoints in its own folder, resume, validation macro-F1, early stopping.

    An epoch is better when its validation macro-F1 is higher, or equal with a lower validation log-loss (small
    validation sets often tie at the same F1). `floor`: (F1, -loss) to beat before anything counts as best
    (phase 2 must beat phase 1's best).
    """

    def __init__(self, name: str, folder: Path, patience: int, history: Path, progress: Progress):
        self.name, self.folder, self.patience, self.history, self.progress = name, folder, patience, history, progress
        self.floor = (-1.0, -float("inf"))
        self.state = {"epoch": -1, "best_score": -1.0, "best_loss": float("inf"), "best_epoch": -1, "wait": 0,
                      "seconds": 0.0, "done": False}
        self._since: float | None = None  # while a timed block runs: when its time was last added to `seconds`

    def best_key(self) -> tuple[float, float]:
        return max((self.state["best_score"], -self.state["best_loss"]), self.floor)

    def resume(self) -> keras.Model | None:
        """The last checkpoint (with its optimizer state) where a previous run of this config stopped."""
        state_file = self.folder / "state.json"
        if not (state_file.is_file() and (self.folder / "last.keras").is_file()):
            return None
        self.state.update(read_json(state_file))
        done = "finished" if self.state["done"] else f"{self.state['epoch'] + 1} epoch(s) done"
        self.progress(f"      {self.name}: resuming from {self.folder / 'last.keras'} ({done})")
        return keras.saving.load_model(self.folder / "last.keras")

    def best(self) -> keras.Model | None:
        path = self.folder / "best.keras"
        return keras.saving.load_model(path) if path.is_file() else None

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Adds the block's wall time to the phase's `seconds`: fitting, and the work the phase needs first
        (encoding the features a head trains on), without which a cached-feature run looks nearly free."""
        self._since = time.perf_counter()
        try:
            yield
        finally:
            self._tick()
            self._since = None

    def _tick(self) -> None:
        """Add the time since the last tick to `seconds`: every state written mid-phase carries the time spent so
        far, so a run killed and resumed reports the whole cost of its training, not only the resumed part."""
        if self._since is not None:
            now = time.perf_counter()
            self.state["seconds"] += now - self._since
            self._since = now

    def fit(self, model: keras.Model, data: tf.data.Dataset, epochs: int, validate: Validate | None,
            class_weight: dict | None = None, steps_per_epoch: int | None = None) -> None:
        self.progress(f"      {self.name}: epochs {self.state['epoch'] + 2}..{epochs}")
        callback = _EpochCallback(self, model, validate)
        with self.timed():
            model.fit(data, epochs=epochs, initial_epoch=self.state["epoch"] + 1, verbose=2, shuffle=False,
                      class_weight=class_weight, callbacks=[callback], steps_per_epoch=steps_per_epoch)
        self.state["done"] = True
        self._write_state()

    def save_best(self, model: keras.Model, epoch: int, score: float, loss: float) -> bool:
        """Keep the epoch as best.keras where it beats the best so far; True if it did (the state is written by
        `save_last`)."""
        if (score, -loss) <= self.best_key():
            return False
        with atomic_path(self.folder / "best.keras", suffix=".keras") as tmp:
            model.save(tmp)
        self.state.update(best_score=score, best_loss=loss, best_epoch=epoch)
        return True

    def save_last(self, model: keras.Model, epoch: int, improved: bool, score: float, loss: float, logs: dict,
                  score_name: str | None = "macro_f1") -> bool:
        """Record an epoch (after `save_best`); returns True when early stopping should end the phase.
        `score_name` None: no validation (a final fit), so the history gets no validation columns."""
        self.state["wait"] = 0 if improved else self.state["wait"] + 1
        with atomic_path(self.folder / "last.keras", suffix=".keras") as tmp:
            model.save(tmp)
        self.state["epoch"] = epoch
        self._append_history(epoch, {**logs, "val_loss": loss, f"val_{score_name}": score} if score_name else logs)
        self._write_state()
        return self.state["wait"] >= self.patience

    def _write_state(self) -> None:
        self._tick()
        atomic_write_json(self.folder / "state.json", self.state)

    def _append_history(self, epoch: int, logs: dict) -> None:
        rows = list(csv.DictReader(self.history.open())) if self.history.is_file() else []
        rows = [r for r in rows if r.get("phase", "phase1") != self.name or int(r["epoch"]) < epoch + 1]
        rows.append({"phase": self.name, "epoch": epoch + 1, **{k: f"{float(v):.6f}" for k, v in logs.items()}})
        fields = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.history, buffer.getvalue())


def _phase_summary(*phases: _Phase) -> dict:
    """Epochs, best epoch, best score and loss and seconds of each phase that ran (the card's `phases`)."""
    return {p.name: {k: p.state[k] for k in ("epoch", "best_epoch", "best_score", "best_loss", "seconds")}
            for p in phases if p.state["epoch"] >= 0}


class _EpochCallback(keras.callbacks.Callback):
    """Validates and checkpoints each epoch; with no validation (`validate` None: a final fit) every epoch is
    recorded as the best so far, so the phase keeps its last epoch."""

    def __init__(self, phase: _Phase, fit_model: keras.Model, validate: Validate | None):
        super().__init__()
        self.phase, self.fit_model, self.validate = phase, fit_model, validate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with averaged_weights(self.fit_model):  # validated and kept as best with averaged weights, if averaging
            score, loss, name = self.validate() if self.validate else (float(epoch), 0.0, None)
            improved = self.phase.save_best(self.fit_model, epoch, score, loss)
        stop = self.phase.save_last(self.fit_model, epoch, improved, score, loss, logs or {}, name)
        if name is None:
            self.phase.progress(f"      {self.phase.name} epoch {epoch + 1}: no validation split (final fit)")
            return
        self.phase.progress(f"      {self.phase.name} epoch {epoch + 1}: val {name} {score:.4f}, loss "
                            f"{loss:.4f} (best {self.phase.best_key()[0]:.4f})")
        if stop:
            self.phase.progress(f"      early stop: no val {name} gain for {self.phase.patience} epochs")
            self.model.stop_training = True


def _classification_score(predict_val: Callable[[], np.ndarray], y_val: np.ndarray) -> Validate:
    """Validation macro-F1 and log-loss of the predicted probabilities."""
    def validate() -> tuple[float, float, str]:
        probs = predict_val()
        y = y_val[: len(probs)]
        score = macro_f1(y, probs.argmax(axis=1), probs.shape[1])
        return score, float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean()), "macro_f1"
    return validate


def start_feature_norm(head: keras.Model, x_train, chunk: int = 4096) -> None:
    """Start the head's per-feature standardisation (`feature_norm`, if any) at the training features' mean and
    variance. Its moving averages would otherwise start at 0 and 1 and take hundreds of steps to reach raw
    features in the thousands (VGG16's), so the first epochs' validation would read unstandardised features."""
    if "feature_norm" not in {layer.name for layer in head.layers} or len(x_train.shape) != 2:
        return
    sums, squares = np.zeros(x_train.shape[1]), np.zeros(x_train.shape[1])
    for start in range(0, len(x_train), chunk):
        rows = np.asarray(x_train[np.arange(start, min(start + chunk, len(x_train)))], np.float64)
        sums += rows.sum(axis=0)
        squares += (rows ** 2).sum(axis=0)
    mean = sums / len(x_train)
    norm = head.get_layer("feature_norm")
    gamma, beta = norm.get_weights()[:2]
    norm.set_weights([gamma, beta, mean, np.maximum(squares / len(x_train) - mean ** 2, 0.0)])


class StackedRows:
    """Several arrays of equal length (the cached features of the training set and of its augmented copies) read
    as one: row i is row i % n of array i // n. Memory-mapped caches stay on disk; a batch is read when gathered."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays, self.rows = list(arrays), len(arrays[0])
        self.shape = (self.rows * len(self.arrays), *arrays[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        out = np.empty((len(index), *self.shape[1:]), np.float32)
        for part in np.unique(index // self.rows):
            chosen = index // self.rows == part
            out[chosen] = self.arrays[part][index[chosen] % self.rows]
        return out


def _images(count: int, variant: str) -> str:
    return f"{count} images" + (f" ({variant})" if variant else "")


class FeatureCache:
    """Backbone features per image and augmented copy, computed once and kept as `<folder>/<model key>/<image
    key>.npy`. The model key changes with the extractor's architecture and weights and the preprocessing; the image
    key with the file's path, size and mtime and the copy (`variant`). Per image, so another split of the same
    images (another fold, validation fraction or class subset) reuses them; an augmented copy is drawn with a key
    made from the image and the copy, not from its place in a batch, so it is the same copy in every split. The rows
    of a list of images are assembled into one memory-mapped file (rebuilt from the per-image files when missing)
    from which training reads batch by batch."""

    def __init__(self, folder: Path, extractor: keras.Model, spec: ImageSpec, progress: Progress):
        self.extractor, self.spec, self.progress = extractor, spec, progress
        digest = hashlib.sha256(repr(spec).encode())
        # The architecture (its layers, not the model's own auto-numbered name): same weights, other layers, other
        # features.
        digest.update(json.dumps(extractor.get_config()["layers"], sort_keys=True, default=str).encode())
        for weight in extractor.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
        self.model_key = digest.hexdigest()[:16]
        self.store = Path(folder) / self.model_key

    @staticmethod
    def image_key(record: Record, variant: str = "") -> str:
        stat = os.stat(record.source) if os.path.exists(record.source) else None
        text = f"{record.source}|{stat.st_size if stat else 0}|{stat.st_mtime_ns if stat else 0}|{variant}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def features(self, records: Sequence[Record], augment: Callable | None = None, variant: str = "") -> np.ndarray:
        """Features of `records` (optionally of an augmented copy; `variant` names it in the keys), one row each."""
        keys = [self.image_key(record, variant) for record in records]
        missing = [i for i, key in enumerate(keys) if not (self.store / f"{key}.npy").is_file()]
        if missing:
            self._compute([records[i] for i in missing], [keys[i] for i in missing], augment, variant)
        else:
            self.progress(f"      features of {_images(len(records), variant)} from the cache {self.store}")
        return self._assembled(keys)

    def _compute(self, records: list[Record], keys: list[str], augment: Callable | None, variant: str) -> None:
        self.progress(f"      computing backbone features of {_images(len(records), variant)} (once per image; cached)")
        start = time.perf_counter()
        extract = keras_predict_fn(self.extractor)  # (predict_on_batch repeats rows under MirroredStrategy)
        for images, index in image_dataset(records, self.spec, None, 32):
            index = index.numpy()
            if augment is not None:  # a 63-bit key from each image's own key
                images = tf.concat([augment(images[j:j + 1], int(keys[i][:15], 16)) for j, i in enumerate(index)],
                                   axis=0)
            for i, row in zip(index, extract(images)):
                with atomic_path(self.store / f"{keys[i]}.npy", suffix=".npy") as tmp:
                    np.save(tmp, np.asarray(row, np.float32))
        self.progress(f"      {len(records) / (time.perf_counter() - start):.1f} images/s")

    def _assembled(self, keys: list[str]) -> np.ndarray:
        """The rows of `keys` in order, as one memory-mapped array (memory holds one row while it is written)."""
        path = self.store / "lists" / f"{hashlib.sha256('|'.join(keys).encode()).hexdigest()[:24]}.npy"
        if path.is_file():
            try:
                rows = np.load(path, mmap_mode="r")
                if len(rows) == len(keys):
                    return rows
            except (OSError, ValueError):
                pass  # a damaged list file is rebuilt
        first = np.load(self.store / f"{keys[0]}.npy")
        with atomic_path(path, suffix=".npy") as tmp:
            rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keys), *first.shape))
            for n, key in enumerate(keys):
                rows[n] = np.load(self.store / f"{key}.npy")
            rows.flush()
            del rows
        return np.load(path, mmap_mode="r")

