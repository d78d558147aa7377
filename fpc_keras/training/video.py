"""Video classifiers (SlowFast, Slow-only): balanced clips drawn anew every epoch, or a head on frozen frame
features; selection on whole validation videos."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from ..config import RunConfig
from ..data.augment import build_augmenter
from ..data.feature_cache import extractor_key
from ..data.pipeline import clip_dataset, label_ids
from ..data.records import Record
from ..data.video import cached_video, model_clips, sample_clip
from ..evaluate import keras_predict_fn
from ..io import atomic_path, file_key
from ..models import parameter_counts
from ..models.backbones import set_backbone_trainable
from .averaging import compile_classifier
from .phase import Phase, Progress
from .session import TaskSession, classification_score, fit_head_on_features, fresh_model


class VideoSession(TaskSession):
    """Video classifiers (slowfast): clips drawn anew every epoch, balanced by class and, within a class, by source
    (`Record.group`), `data.clips_per_video` draws per training video, each a random stretch at a random speed,
    augmented as whole clips (`pipeline.clip_dataset`); selection on the validation videos' macro-F1, each video
    scored by the mean of `data.clips_per_video` evenly spaced clips, as the evaluator does. An ImageNet slow
    pathway is frozen in phase 1 (`train.freeze_backbone`; Slow-only then fits its head on cached frame
    features); with `train.finetune_blocks` phase 2 fine-tunes its top blocks on clips (`TaskSession.finetune`).
    The videos are decoded at the model's size once (`RUNS/_frame_cache`) and kept in memory for every phase and
    epoch."""

    def __init__(self, config: RunConfig, records: Sequence[Record], labels: list[str], progress: Progress):
        super().__init__(config, records, labels, progress)
        self.y_train, self.y_val = label_ids(self.train_records, labels), label_ids(self.val_records, labels)
        self.phase1, self.phase2 = self.new_phase("phase1"), self.new_phase("phase2")
        self._videos: dict[str, list[np.ndarray]] = {}
        self._store: Path | None = None  # the frame features' cache folder of this run's encoder

    def run(self) -> keras.Model:
        t, m, d = self.config.train, self.config.model, self.config.data
        self.progress(f"[2/4] building {m.name} (slow pathway {m.backbone}, preset {m.preset}, weights {m.weights})")
        if not m.fast_pathway and t.freeze_backbone and t.cache_features:
            model = self._fit_head_on_frames()
        else:
            model = self._fit_model_on_clips()
        if t.finetune_blocks:
            frozen_norms(model)
            model = self.finetune(model, self.phase2, len(self.train_records) * d.clips_per_video,
                                  lambda fitted: self._fit_clips(fitted, t.finetune_epochs, self.phase2,
                                                                 t.phase2_batch_size))
        return model

    def _fit_model_on_clips(self) -> keras.Model:
        t, m = self.config.train, self.config.model
        fitted = self.phase1.resume()
        if fitted is None:
            fitted = fresh_model(self.config, self.progress)
            if m.backbone != "none":
                set_backbone_trainable(fitted, 0 if t.freeze_backbone else None)
            fitted = compile_classifier(fitted, t.learning_rate, t.label_smoothing, t.ema_momentum)
        if not self.phase1.state["done"]:
            self._fit_clips(fitted, t.epochs, self.phase1, t.batch_size)
        return self.phase1.best()

    def _fit_clips(self, fitted: keras.Model, epochs: int, phase: Phase, batch_size: int) -> None:
        """`phase` of `fitted` on balanced, augmented training clips, validated on whole videos."""
        t, d = self.config.train, self.config.data
        videos, val_videos = self.decoded("train"), self.decoded("val")
        data = clip_dataset(videos, self.y_train, len(self.labels), d.clip_length, batch_size,
                            d.clips_per_video, phase.state["epoch"] + 1, epochs, t.seed,
                            build_augmenter(seed=t.seed, horizontal_flip=False) if t.augment else None,
                            groups=[r.group for r in self.train_records])
        predict = keras_predict_fn(fitted)
        predict_val = lambda: np.stack([  # noqa: E731
            predict(model_clips(v, d.clip_length, d.clips_per_video)).mean(axis=0) for v in val_videos])
        self.progress(f"[3/4] {phase.name}: {len(videos)} train videos x {d.clips_per_video} clips per epoch "
                      f"(balanced by class and source), {len(val_videos)} val videos, "
                      f"{parameter_counts(fitted)['trainable']:,} trainable parameters")
        phase.fit(fitted, data, epochs, classification_score(predict_val, self.y_val),
                  steps_per_epoch=-(-len(videos) * d.clips_per_video // batch_size))

    def _fit_head_on_frames(self) -> keras.Model:
        """Slow-only on a frozen encoder: each slow frame's features are computed once (the evaluator's evenly
        spaced clips of every training video, and `train.feature_copies` sets of as many random, augmented clips),
        the head is fitted on single frames (class-weighted or class-balanced), and validation scores whole videos
        as the evaluator does (the head on each clip's mean features, clips' probabilities averaged)."""
        t = self.config.train
        model = fresh_model(self.config, self.progress)
        set_backbone_trainable(model, 0)
        head = model.get_layer("head")
        fitted = self.phase1.resume() or compile_classifier(head, t.learning_rate, t.label_smoothing, t.ema_momentum)
        if not self.phase1.state["done"]:
            frames = keras.Model(model.input, model.get_layer("unfold_slow").output)
            with self.phase1.timed():
                x_train, y_train = self._frame_features(frames, self.decoded("train"))
                val = [self._encoded(frames, r, v, 0) for r, v in zip(self.val_records, self.decoded("val"))]
            clip_means, ends = np.concatenate([x.mean(axis=1) for x in val]), np.cumsum([len(x) for x in val])
            predict_val = lambda: np.stack([p.mean(axis=0) for p in np.split(  # noqa: E731
                fitted.predict(clip_means, verbose=0, batch_size=256), ends[:-1])])
            self.progress(f"[3/4] phase1: the head on frame features ({len(x_train)} training frames of "
                          f"{len(self.train_records)} videos, {len(val)} val videos)")
            fit_head_on_features(fitted, self.phase1, x_train, y_train,
                                 classification_score(predict_val, self.y_val), t, len(self.labels))
        head.set_weights(self.phase1.best().get_weights())
        return model

    def _frame_features(self, frames: keras.Model, videos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of slow-frame features of the training videos (every slow frame of each clip set), and their
        class ids."""
        t = self.config.train
        self.progress(f"      encoding the slow frames of {len(videos)} videos x {1 + t.feature_copies} clip sets "
                      f"(cached per video in {self._feature_store(frames)})")
        features, labels = [], []
        for record, video, label in zip(self.train_records, videos, self.y_train):
            for copy in range(t.feature_copies + 1):
                encoded = self._encoded(frames, record, video, copy)
                features.append(encoded.reshape(-1, encoded.shape[-1]))
                labels.append(np.full(len(features[-1]), label))
        return np.concatenate(features), np.concatenate(labels)

    def _encoded(self, frames: keras.Model, record: Record, video: np.ndarray, copy: int) -> np.ndarray:
        """(clips, slow frames, features) of one video's clip set: copy 0 the evaluator's evenly spaced clips, copy
        k > 0 random clips augmented with a key drawn from the video file's own key, so that every fold and run
        of the same encoder finds the same copy in RUNS/_feature_cache."""
        t, d = self.config.train, self.config.data
        key = file_key(record.source, f"clips{copy}")
        path = self._feature_store(frames) / f"{key}.npy"
        if path.is_file():
            return np.load(path)
        clips = model_clips(video, d.clip_length, d.clips_per_video)
        if copy:
            rng = np.random.default_rng(int(key[:15], 16))
            clips = np.stack([video[sample_clip(len(video), d.clip_length, rng)] for _ in range(d.clips_per_video)])
            augment = build_augmenter(seed=t.seed, horizontal_flip=False)
            clips = augment.clips(tf.constant(clips, tf.float32), tf.constant(int(key[:15], 16), tf.int64))
        encoded = frames.predict(np.asarray(clips, np.float32), verbose=0)
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, encoded)
        return encoded

    def _feature_store(self, frames: keras.Model) -> Path:
        if self._store is None:
            t, d = self.config.train, self.config.data
            settings = (f"{d.image_size}|{d.channels}|{d.resize}|{d.clip_length}|{d.clips_per_video}|{t.seed}|"
                        f"{build_augmenter(seed=t.seed, horizontal_flip=False).fingerprint}")
            self._store = Path(self.config.runs_dir) / "_feature_cache" / "videos" / extractor_key(frames, settings)
        return self._store

    def decoded(self, split: str) -> list[np.ndarray]:
        """The split's videos decoded at the model's size (uint8), once per run (and once for all runs, through
        RUNS/_frame_cache): every phase and epoch reuse them."""
        if split not in self._videos:
            d = self.config.data
            records = self.train_records if split == "train" else self.val_records
            self.progress(f"      decoding {len(records)} {split} videos")
            cache = Path(self.config.runs_dir) / "_frame_cache"
            self._videos[split] = [cached_video(r.source, tuple(d.image_size), d.channels, d.resize, cache)
                                   for r in records]
        return self._videos[split]


def frozen_norms(model: keras.Model) -> None:
    """Freeze every BatchNormalization, nested heads' included, before fine-tuning on a few videos' clips: batch
    statistics of 8 clips from a handful of sources would replace the statistics phase 1 settled."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            frozen_norms(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
