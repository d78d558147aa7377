"""Image classifiers: phase 1 (the head on cached backbone features, or the model on images), then phase 2
(fine-tuning the top backbone blocks from images), each kept only where validation macro-F1 improves."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from ..config import RunConfig, model_section_dict
from ..data.augment import build_augmenter
from ..data.feature_cache import FeatureCache, StackedRows
from ..data.images import ImageSpec
from ..data.pipeline import SkipLog, image_dataset, label_ids
from ..data.records import Record
from ..errors import BadInputError
from ..evaluate import keras_predict_fn
from ..models import parameter_counts
from ..models.backbones import set_backbone_trainable
from .averaging import compile_classifier
from .phase import Phase, Progress
from .session import (TaskSession, class_weights, classification_score, fit_head_on_features, fresh_model,
                      head_input)


class ClassificationSession(TaskSession):
    """Both phases of one run: the data they share and the order they run in."""

    def __init__(self, config: RunConfig, records: Sequence[Record], labels: list[str], progress: Progress):
        super().__init__(config, records, labels, progress)
        self.y_train = label_ids(self.train_records, labels)
        self.y_val = label_ids(self.val_records, labels)
        self.spec = ImageSpec(tuple(config.data.image_size), config.data.channels, config.data.resize)
        self.skip_log = SkipLog() if config.data.on_bad_input == "skip" else None
        self.phase1, self.phase2 = self.new_phase("phase1"), self.new_phase("phase2")

    def run(self) -> keras.Model:
        t, m = self.config.train, self.config.model
        shown = {k: v for k, v in model_section_dict(m).items() if k in ("backbone", "attention", "pooling", "weights")}
        self.progress(f"[2/4] building {m.name} ({', '.join(f'{k} {v}' for k, v in shown.items())})")
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
                self._fit_on_images(fitted, t.epochs, self.phase1, t.batch_size)
            model = self.phase1.best()
        if t.finetune_blocks:
            model = self.finetune(model, self.phase2, len(self.train_records),
                                  lambda fitted: self._fit_on_images(fitted, t.finetune_epochs, self.phase2,
                                                                     t.phase2_batch_size))
        if self.skip_log is not None and self.skip_log.skipped:
            self.progress("      " + self.skip_log.summary())
        return model

    def _fit_on_cache(self, model: keras.Model, head: keras.Model) -> None:
        t = self.config.train
        if self.skip_log is not None:
            raise BadInputError("train.cache_features needs every image readable (data.on_bad_input=skip given)",
                                "set train.cache_features=false to skip unreadable files while training")
        extractor = keras.Model(model.input, model.get_layer(head_input(model)).output)
        cache = FeatureCache(Path(self.config.runs_dir) / "_feature_cache", extractor, self.spec, self.progress)
        with self.phase1.timed():
            x_train = [cache.features(self.train_records)]
            for copy in range(1, t.feature_copies + 1):
                augment = build_augmenter(seed=t.seed + 100 * copy, horizontal_flip=t.horizontal_flip)
                x_train.append(cache.features(self.train_records, augment, f"augment{copy}-{augment.fingerprint}"))
            x_train = StackedRows(x_train)  # memory-mapped, never copied into one array
            x_val = cache.features(self.val_records)
        y_train = np.tile(self.y_train, t.feature_copies + 1)
        self.progress(f"[3/4] phase 1: the head on cached features ({len(x_train)} train incl. "
                      f"{t.feature_copies} augmented cop{'y' if t.feature_copies == 1 else 'ies'}, "
                      f"{len(x_val)} val)")
        predict_val = lambda: head.predict(x_val, verbose=0, batch_size=256)  # noqa: E731
        fit_head_on_features(head, self.phase1, x_train, y_train, classification_score(predict_val, self.y_val),
                             t, len(self.labels))

    def _fit_on_images(self, model: keras.Model, epochs: int, phase: "Phase", batch_size: int) -> None:
        t = self.config.train
        augment = build_augmenter(seed=t.seed, horizontal_flip=t.horizontal_flip) if t.augment else None
        data = image_dataset(self.train_records, self.spec, self.labels, batch_size, shuffle=True, seed=t.seed,
                             augment=augment, skip_log=self.skip_log, balanced=t.balance == "sampling",
                             mixup_alpha=t.mixup)
        val = image_dataset(self.val_records, self.spec, None, batch_size, skip_log=self.skip_log)
        predict = keras_predict_fn(model)
        predict_val = lambda: np.concatenate([predict(x.numpy()) for x, _ in val])  # noqa: E731
        self.progress(f"[3/4] {phase.name}: the model on images ({len(self.train_records)} train, "
                      f"{len(self.val_records)} val, {parameter_counts(model)['trainable']:,} trainable parameters)")
        phase.fit(model, data, epochs, classification_score(predict_val, self.y_val),
                  class_weights(self.y_train, len(self.labels), t.balance))
