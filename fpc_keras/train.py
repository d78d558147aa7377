"""Training, shared by every classifier of the suite.

Run folder (`runs/<name>/`): config.yaml (resolved), splits.csv, model_card.json, checkpoints/ (last.keras,
best.keras, state.json), history.csv, model.keras (the selected model), results.json (its test metrics).

- Model selection on the validation split (carved from the training groups): early stopping and the kept
  model follow validation macro-F1; the test split is touched once, at the end.
- Resume: every epoch writes last.keras (with optimizer state) and state.json atomically; rerunning the same
  command continues from the last finished epoch.
- Frozen backbone + `train.cache_features`: backbone features are computed once per image and stored with a
  checksum of the backbone weights, preprocessing and files, so each head epoch costs a fraction of a second.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from .card import make_card, write_card
from .config import RunConfig, config_to_dict, save_config
from .data import TASK_OF_KIND, prepare_records
from .data.augment import build_augmenter
from .data.images import ImageSpec
from .data.pipeline import SkipLog, image_dataset, label_ids
from .data.records import Record, in_split, labels_of, split_counts
from .errors import BadInputError
from .evaluate import Predictor, evaluate, summary_line
from .io import atomic_path, atomic_write_json, atomic_write_text, read_json
from .metrics import macro_f1
from .models import build_model, parameter_counts
from .models.backbones import FEATURES_LAYER, set_backbone_trainable

Progress = Callable[[str], None]


def train(config: RunConfig, progress: Progress = print) -> Path:
    """Train (or resume, or skip when finished), select on validation, evaluate on test, write the run."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.train.seed)
    progress(f"[1/4] reading {config.data.kind}:{config.data.path}")
    records = prepare_records(config.data.kind, config.data.path, config.data.val_fraction,
                              config.data.test_fraction, config.train.seed, config.data.aliases,
                              config.data.folds, config.data.fold)
    labels = labels_of(records)
    if len(labels) < 2:
        raise BadInputError(f"{config.data.path} holds {len(labels)} class(es): {labels}", "give at least two classes")
    config.model.num_classes = len(labels)
    counts = split_counts(records)
    progress(f"      {len(records)} items, classes {labels}, splits {counts}")
    _write_run_files(config, records)
    trainer = _Trainer(config, records, labels, progress)
    model = trainer.fit()
    with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    card = make_card(config.name, TASK_OF_KIND[config.data.kind], labels, config.data.image_size,
                     config.data.channels, config.data.resize,
                     {"kind": config.data.kind, "aliases": dict(config.data.aliases)},
                     config_to_dict(config)["model"], parameter_counts(model),
                     {"data": f"{config.data.kind}:{config.data.path}", "splits": counts,
                      "split_rule": {"val_fraction": config.data.val_fraction, "folds": config.data.folds,
                                     "test_fraction": config.data.test_fraction, "fold": config.data.fold,
                                     "seed": config.train.seed},
                      "seed": config.train.seed, "epochs_run": trainer.state["epoch"] + 1,
                      "best_epoch": trainer.state["best_epoch"] + 1,
                      "val_macro_f1": trainer.state["best_score"]})
    write_card(run_dir, card)
    progress("[4/4] evaluating the selected model on the test split")
    test = in_split(records, "test")
    predictor = Predictor(str(run_dir / "model.keras"), card, _predict_fn(model))
    results = evaluate(predictor, test, f"{config.data.kind}:{config.data.path}", "test",
                       config.data.on_bad_input, config.train.batch_size, progress)
    results["timings"]["train_seconds"] = trainer.state.get("seconds", 0.0)
    atomic_write_json(run_dir / "results.json", results)
    card["metrics"] = {"test": results["metrics"], "n_test": results["n"]}
    write_card(run_dir, card)
    progress("      " + summary_line(results))
    return run_dir


def _write_run_files(config: RunConfig, records: Sequence[Record]) -> None:
    save_config(config, config.run_dir / "config.yaml")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "label", "group", "split"])
    writer.writerows([r.source, r.label, r.group, r.split] for r in records)
    atomic_write_text(config.run_dir / "splits.csv", buffer.getvalue())


def _predict_fn(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    infer = tf.function(lambda x: model(x, training=False))
    return lambda batch: np.asarray(infer(tf.convert_to_tensor(batch, tf.float32)))


class _Trainer:
    """One training phase with checkpoints, resume, validation macro-F1 and early stopping."""

    def __init__(self, config: RunConfig, records: Sequence[Record], labels: list[str], progress: Progress):
        self.config, self.labels, self.progress = config, labels, progress
        self.train_records = in_split(records, "train")
        self.val_records = in_split(records, "val")
        self.spec = ImageSpec(tuple(config.data.image_size), config.data.channels, config.data.resize)
        self.ckpt = config.run_dir / "checkpoints"
        self.state = {"epoch": -1, "best_score": -1.0, "best_epoch": -1, "wait": 0, "seconds": 0.0,
                      "done": False}
        self.skip_log = SkipLog() if config.data.on_bad_input == "skip" else None

    def fit(self) -> keras.Model:
        """Train, or resume, and return the full model with the best validation weights."""
        t = self.config.train
        cached = t.freeze_backbone and t.cache_features
        model = self._build()
        resumed = self._resume()
        if cached:
            # The head is what trains (and is checkpointed, with its optimizer); it shares weights with `model`.
            x_train, x_val = self._cached_features(model)
            fit_model = resumed or self._compiled(model.get_layer("head"))
            y_train = keras.utils.to_categorical(label_ids(self.train_records, self.labels), len(self.labels))
            train_data = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
                len(x_train), seed=t.seed).batch(t.batch_size)
            predict_val = lambda: fit_model.predict(x_val, verbose=0, batch_size=256)  # noqa: E731
        else:
            fit_model = resumed or self._compiled(model)
            augment = build_augmenter(seed=t.seed) if t.augment else None
            train_data = image_dataset(self.train_records, self.spec, self.labels, t.batch_size, shuffle=True,
                                       seed=t.seed, augment=augment, skip_log=self.skip_log)
            val_data = image_dataset(self.val_records, self.spec, None, t.batch_size, skip_log=self.skip_log)
            predict_val = lambda: np.concatenate([fit_model.predict_on_batch(x) for x, _ in val_data])  # noqa: E731
        if not self.state["done"]:
            self.progress(f"[3/4] training {'the head on cached features' if cached else 'the model'}: "
                          f"{len(self.train_records)} train, {len(self.val_records)} val, epochs "
                          f"{self.state['epoch'] + 2}..{t.epochs}")
            callback = _EpochCallback(self, fit_model, predict_val, label_ids(self.val_records, self.labels))
            start = time.perf_counter()
            fit_model.fit(train_data, epochs=t.epochs, initial_epoch=self.state["epoch"] + 1, verbose=2,
                          class_weight=self._class_weights(), callbacks=[callback])
            self.state["seconds"] += time.perf_counter() - start
            self.state["done"] = True
            self._write_state()
        if self.skip_log is not None and self.skip_log.skipped:
            self.progress("      " + self.skip_log.summary())
        best = keras.saving.load_model(self.ckpt / "best.keras")
        if not cached:
            return best
        model.get_layer("head").set_weights(best.get_weights())
        return model

    def _build(self) -> keras.Model:
        m = self.config.model
        self.progress(f"[2/4] building {m.name} ({m.backbone}, attention {m.attention}, weights {m.weights})")
        model = build_model(self.config)
        set_backbone_trainable(model, 0 if self.config.train.freeze_backbone else None)
        return model

    def _resume(self) -> keras.Model | None:
        """The last checkpoint (with its optimizer state) where a previous run of this config stopped."""
        state_file = self.ckpt / "state.json"
        if not (state_file.is_file() and (self.ckpt / "last.keras").is_file()):
            return None
        self.state.update(read_json(state_file))
        done = "finished" if self.state["done"] else f"{self.state['epoch'] + 1} epoch(s) done"
        self.progress(f"      resuming from {self.ckpt / 'last.keras'} ({done})")
        return keras.saving.load_model(self.ckpt / "last.keras")

    def _compiled(self, model: keras.Model) -> keras.Model:
        t = self.config.train
        model.compile(optimizer=keras.optimizers.Adam(t.learning_rate),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
                      metrics=["accuracy"])
        return model

    def _class_weights(self) -> dict[int, float] | None:
        if not self.config.train.class_weights:
            return None
        ids = label_ids(self.train_records, self.labels)
        counts = np.bincount(ids, minlength=len(self.labels))
        return {c: float(len(ids) / (len(self.labels) * n)) if n else 0.0 for c, n in enumerate(counts)}

    def _cached_features(self, model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
        if self.skip_log is not None:
            raise BadInputError("train.cache_features needs every image readable (data.on_bad_input=skip given)",
                                "set train.cache_features=false to skip unreadable files while training")
        extractor = keras.Model(model.inputs, model.get_layer(FEATURES_LAYER).output)
        cache = FeatureCache(Path(self.config.runs_dir) / "_feature_cache", extractor, self.spec, self.progress)
        return cache.features(self.train_records), cache.features(self.val_records)

    def save_epoch(self, model: keras.Model, epoch: int, score: float, logs: dict) -> bool:
        """Record an epoch; returns True when early stopping should end training."""
        improved = score > self.state["best_score"]
        if improved:
            with atomic_path(self.ckpt / "best.keras", suffix=".keras") as tmp:
                model.save(tmp)
            self.state.update(best_score=score, best_epoch=epoch, wait=0)
        else:
            self.state["wait"] += 1
        with atomic_path(self.ckpt / "last.keras", suffix=".keras") as tmp:
            model.save(tmp)
        self.state["epoch"] = epoch
        self._append_history(epoch, logs, score)
        self._write_state()
        return self.state["wait"] >= self.config.train.early_stopping_patience

    def _write_state(self) -> None:
        atomic_write_json(self.ckpt / "state.json", self.state)

    def _append_history(self, epoch: int, logs: dict, score: float) -> None:
        path = self.config.run_dir / "history.csv"
        rows = list(csv.DictReader(path.open())) if path.is_file() else []
        rows = [r for r in rows if int(r["epoch"]) < epoch + 1]
        row = {"epoch": epoch + 1, **{k: f"{float(v):.6f}" for k, v in logs.items()},
               "val_macro_f1": f"{score:.6f}"}
        rows.append(row)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())


class _EpochCallback(keras.callbacks.Callback):
    def __init__(self, trainer: _Trainer, fit_model: keras.Model, predict_val: Callable[[], np.ndarray],
                 y_val: np.ndarray):
        super().__init__()
        self.trainer, self.fit_model, self.predict_val, self.y_val = trainer, fit_model, predict_val, y_val

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probs = self.predict_val()
        y_val = self.y_val[: len(probs)]
        score = macro_f1(y_val, probs.argmax(axis=1), len(self.trainer.labels))
        self.trainer.progress(f"      epoch {epoch + 1}: val macro-F1 {score:.4f} "
                              f"(best {max(score, self.trainer.state['best_score']):.4f})")
        if self.trainer.save_epoch(self.fit_model, epoch, score, logs or {}):
            self.trainer.progress(f"      early stop: no val macro-F1 gain for "
                                  f"{self.trainer.config.train.early_stopping_patience} epochs")
            self.model.stop_training = True


class FeatureCache:
    """Backbone features per image, computed once and stored under a key that changes with anything that
    changes the features: the backbone weights, the preprocessing and each file's path, size and mtime."""

    def __init__(self, folder: Path, extractor: keras.Model, spec: ImageSpec, progress: Progress):
        self.folder, self.extractor, self.spec, self.progress = folder, extractor, spec, progress
        digest = hashlib.sha256(repr(spec).encode())
        for weight in extractor.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
        self.model_key = digest.hexdigest()[:16]

    def key(self, records: Sequence[Record]) -> str:
        digest = hashlib.sha256(self.model_key.encode())
        for record in records:
            stat = os.stat(record.source) if os.path.exists(record.source) else None
            digest.update(f"{record.source}|{stat.st_size if stat else 0}|{stat.st_mtime_ns if stat else 0}".encode())
        return digest.hexdigest()[:24]

    def features(self, records: Sequence[Record]) -> np.ndarray:
        path = self.folder / f"{self.key(records)}.npy"
        if path.is_file():
            try:
                features = np.load(path)
                if len(features) == len(records):
                    self.progress(f"      features of {len(records)} images from the cache {path.name}")
                    return features
            except (OSError, ValueError):
                pass  # a damaged cache file is recomputed
        self.progress(f"      computing backbone features of {len(records)} images (once; cached)")
        start = time.perf_counter()
        data = image_dataset(records, self.spec, None, 32)
        features = np.concatenate([self.extractor.predict_on_batch(x) for x, _ in data])
        self.progress(f"      {len(records) / (time.perf_counter() - start):.1f} images/s")
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, features)
        return features

