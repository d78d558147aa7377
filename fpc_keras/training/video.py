"""Video classifiers (SlowFast, Slow-only): balanced clips drawn anew every epoch, or a head on frozen frame
features; selection on whole validation videos."""
from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from ..config import RunConfig
from ..data.augment import build_augmenter
from ..data.pipeline import clip_dataset, label_ids
from ..data.records import Record
from ..data.video import model_clips, read_video, sample_clip
from ..errors import BadInputError
from ..evaluate import keras_predict_fn
from ..models import parameter_counts
from ..models.backbones import set_backbone_trainable
from .averaging import compile_classifier
from .phase import Progress
from .session import TaskSession, classification_score, fit_head_on_features, fresh_model


class VideoSession(TaskSession):
    """Video classifiers (slowfast): clips drawn anew every epoch, class-balanced, `data.clips_per_video` draws
    per training video, each a random stretch at a random speed, augmented as whole clips
    (`pipeline.clip_dataset`); selection on the validation videos' macro-F1, each video scored by the mean of
    `data.clips_per_video` evenly spaced clips, as the evaluator does. An ImageNet slow pathway is frozen
    (`train.freeze_backbone`); the fast pathway, laterals and classifier train."""

    def __init__(self, config: RunConfig, records: Sequence[Record], labels: list[str], progress: Progress):
        if config.train.finetune_blocks:
            raise BadInputError("train.finetune_blocks is not supported for video models yet",
                                "set train.finetune_blocks=0")
        super().__init__(config, records, labels, progress)
        self.y_train, self.y_val = label_ids(self.train_records, labels), label_ids(self.val_records, labels)
        self.phase = self.new_phase("phase1")

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
            self.phase.fit(fitted, data, t.epochs, classification_score(predict_val, self.y_val),
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
                                 classification_score(predict_val, self.y_val), t, len(self.labels))
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
