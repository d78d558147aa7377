"""Segmentation with plane classification (FetalNet): frame and video models, phase 2 refinement, final fits."""
from __future__ import annotations

import functools
from typing import Sequence

import keras
import numpy as np

from ..config import RunConfig
from ..data.images import ImageSpec
from ..data.pipeline import segmentation_arrays, segmentation_dataset, sweep_arrays
from ..data.records import Record
from ..litert import primary_output
from ..metrics import dice_iou
from ..models import parameter_counts
from ..models.backbones import set_backbone_trainable
from ..models.losses import dice_cross_entropy
from .averaging import make_optimizer, restart_average
from .phase import Phase, Progress, Validate
from .session import TaskSession, fresh_model


class SegmentationSession(TaskSession):
    """Multi-task training (fetalnet): mask (Dice + cross-entropy) and plane class, weighted by
    `train.mask_weight` / `train.plane_weight`; selection on validation Dice. Frame models see each training item
    through a random probe pose, a quarter of them as off-plane frames; video models see a new random sweep of
    each item every epoch (fpc_keras.data.sweeps). An ImageNet encoder is fine-tuned end to end (its
    BatchNormalization statistics stay frozen). A final fit (`final_fit`: epochs per phase, from
    `train.refit_from`) has no validation split: each phase runs its epochs and keeps the last."""

    OFF_PLANE_FRACTION = 0.25

    def __init__(self, config: RunConfig, records: Sequence[Record], labels: list[str], progress: Progress,
                 final_fit: dict[str, int] | None = None):
        super().__init__(config, records, labels, progress, validation=final_fit is None)
        self.final_fit = final_fit
        self.spec = ImageSpec(tuple(config.data.image_size), config.data.channels, config.data.resize)
        self.phase, self.phase2 = self.new_phase("phase1"), self.new_phase("phase2")

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

    def _fit(self, fitted: keras.Model, phase: "Phase", epochs: int) -> None:
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


def _dice_score(model: keras.Model, images: np.ndarray, masks: np.ndarray, batch_size: int) -> Validate:
    """Mean validation Dice of the thresholded mask on the model's grid, and 1 - Dice as the tie-breaker."""
    def validate() -> tuple[float, float, str]:
        predicted = np.concatenate([primary_output(model(images[i:i + batch_size].astype(np.float32),
                                                         training=False))
                                    for i in range(0, len(images), batch_size)])
        dice = float(np.mean([dice_iou(p[..., 0] > 0.5, m[..., 0] > 127)[0] for p, m in zip(predicted, masks)]))
        return dice, 1.0 - dice, "dice"
    return validate
