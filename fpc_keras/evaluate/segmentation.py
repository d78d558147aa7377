"""Segmenters measured (Dice, IoU, Hausdorff, HC error, Bland-Altman; sweeps for video segmenters) and their
post-processing chosen on validation (mirrored averaging, threshold, mask or ellipse)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .. import postprocess
from ..data.hc18 import read_mask
from ..data.images import image_size_of
from ..data.records import Record
from ..metrics import dice_iou, mean_metrics
from ..predictor import Predictor
from .images import Measured, predict_images

if TYPE_CHECKING:
    from ..biometry import Ellipse


def segmentation_metrics(predictor: Predictor, records: Sequence[Record], on_bad_input: str, batch_size: int,
                         progress: Callable[[str], None]) -> Measured:
    """Dice, IoU, Hausdorff (mm) and head-circumference error (mm) on annotated items; every item (annotated or
    not, e.g. HC18's test_set) gets its fitted ellipse in `items` (Bland-Altman data, the challenge CSV). Masks
    follow the card's post-processing (mirrored averaging, threshold, shape)."""
    post = postprocess.settings(predictor.card)
    probs, kept, skipped = predict_images(predictor, records, on_bad_input, batch_size, progress,
                                           _mask_predict(predictor, post["flip"]))
    resize = predictor.card["preprocessing"]["resize"]
    per_item: dict[str, list[float]] = {"dice": [], "iou": [], "hausdorff_mm": [], "hc_mad_mm": []}
    items = []
    for prob, i in zip(probs, kept):
        item = measure(records[i], prob, resize, post["threshold"], post["shape"])
        items.append(item)
        if "dice" in item:
            for name in per_item:
                per_item[name].append(item[name])
    metrics = mean_metrics(per_item)
    if items and not per_item["dice"]:
        progress("      no annotated item: ellipses only (no Dice / HC error)")
    errors = [item["hc_mm"] - item["hc_true_mm"] for item in items if item.get("hc_true_mm") and item["hc_mm"]]
    if errors:
        bias, spread = float(np.mean(errors)), float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0
        metrics["bland_altman"] = {"bias_mm": bias, "limits_mm": [bias - 1.96 * spread, bias + 1.96 * spread],
                                   "n": len(errors)}
    return Measured(metrics, len(kept), skipped, items=items)


def _mask_predict(predictor: Predictor, flip: bool) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: postprocess.mask_probabilities(predictor.predict, batch, flip)


def measure(record: Record, probs: np.ndarray, resize: str, threshold: float, shape: str = "mask",
             truth: np.ndarray | None = None) -> dict:
    """One item's delivered mask on the original pixel grid, scored (`truth`: the annotation's mask when already
    read)."""
    if truth is None and record.extras.get("mask"):
        truth = read_mask(record.extras["mask"])
    original = truth.shape if truth is not None else image_size_of(record.source)
    return scored(record, *postprocess.segment(probs, original, resize, threshold, shape), truth)


def scored(record: Record, predicted: np.ndarray, ellipse: Ellipse | None, truth: np.ndarray | None,
            hausdorff: bool = True) -> dict:
    """One item: its ellipse and HC, and the errors of the delivered mask against the annotation where there is
    one."""
    from ..biometry import hausdorff_mm

    pixel_mm = record.extras.get("pixel_mm")
    hc = ellipse.circumference * pixel_mm if ellipse is not None and pixel_mm else None
    item = {"source": record.source, "mask": record.extras.get("mask"), "pixel_mm": pixel_mm, "hc_mm": hc,
            "hc_true_mm": record.extras.get("hc_mm"),
            "ellipse": None if ellipse is None else [ellipse.cx, ellipse.cy, ellipse.a, ellipse.b, ellipse.angle]}
    if truth is not None:
        item["dice"], item["iou"] = dice_iou(predicted, truth)
        if hausdorff:
            item["hausdorff_mm"] = hausdorff_mm(predicted, truth, pixel_mm or 1.0)
        item["hc_mad_mm"] = abs(hc - item["hc_true_mm"]) if hc is not None and item["hc_true_mm"] else np.nan
    return item


def sweep_metrics(predictor: Predictor, records: Sequence[Record], on_bad_input: str, batch_size: int,
                  progress: Callable[[str], None]) -> Measured:
    """Video segmenters on sweeps built from annotated images (fpc_keras.data.sweeps; item i always gives the same
    sweep): per-frame Dice on the model's grid, per-frame plane accuracy, and best-frame detection (the frame the
    plane head rates most likely standard, within one frame of the sweep's true standard plane)."""
    from ..data.pipeline import segmentation_arrays, sweep_arrays

    frames = int(predictor.card["preprocessing"]["clip_length"])
    images, masks = segmentation_arrays([r for r in records if "mask" in r.extras], predictor.image_spec(), progress)
    clips, clip_masks, labels, best = sweep_arrays(images, masks, frames)
    per_item: dict[str, list[float]] = {"sweep_dice": [], "plane_accuracy": [], "best_frame_within_1": [],
                                        "best_frame_error": []}
    for clip, truth, label, centre in zip(clips, clip_masks, labels, best):
        batch = clip[None].astype(np.float32)
        predicted, plane = (output[0] for output in predictor.predict(batch, None))  # one inference, both outputs
        per_item["sweep_dice"].append(float(np.mean([dice_iou(p[..., 0] > 0.5, t[..., 0] > 127)[0]
                                                     for p, t in zip(predicted, truth)])))
        per_item["plane_accuracy"].append(float((plane.argmax(axis=-1) == label).mean()))
        error = abs(int(plane[:, 0].argmax()) - int(centre))
        per_item["best_frame_within_1"].append(float(error <= 1))
        per_item["best_frame_error"].append(float(error))
    return Measured(mean_metrics(per_item), len(clips), {})
