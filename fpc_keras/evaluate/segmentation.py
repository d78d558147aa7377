"""Segmenters measured (Dice, IoU, Hausdorff, HC error, Bland-Altman; sweeps for video segmenters) and their
post-processing chosen on validation (mirrored averaging, threshold, mask or ellipse)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .. import postprocess
from ..data.hc18 import read_mask
from ..data.images import image_size_of
from ..data.records import Record
from ..errors import BadInputError
from ..metrics import dice_iou, mean_metrics
from ..predictor import Predictor
from .images import predict_images

if TYPE_CHECKING:
    from ..biometry import Ellipse


def segmentation_metrics(predictor: Predictor, records: Sequence[Record], on_bad_input: str, batch_size: int,
                  progress: Callable[[str], None]):
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
    return metrics, len(kept), skipped, items


def _mask_predict(predictor: Predictor, flip: bool) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: postprocess.mask_probabilities(predictor.predict, batch, flip)


def measure(record: Record, probs: np.ndarray, resize: str, threshold: float, shape: str = "mask",
             truth: np.ndarray | None = None) -> dict:
    """One item's delivered mask on the original pixel grid, scored (`truth`: the annotation's mask when already
    read)."""
    if truth is None and record.extras.get("mask"):
        truth = read_mask(record.extras["mask"])
    original = truth.shape if truth is not None else image_size_of(record.source)
    return _scored(record, *postprocess.segment(probs, original, resize, threshold, shape), truth)


def _scored(record: Record, predicted: np.ndarray, ellipse: Ellipse | None, truth: np.ndarray | None,
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


POSTPROCESS_THRESHOLDS = tuple(np.round(np.arange(0.3, 0.701, 0.05), 2))


def choose_postprocessing(predictor: Predictor, records: Sequence[Record], batch_size: int = 16,
                          progress: Callable[[str], None] = print) -> dict:
    """Mirrored averaging on or off, the mask threshold and the delivered shape (mask or fitted ellipse), chosen on
    annotated `records` (the validation split, never test): the lowest mean HC error where the items carry a true
    HC, then (the HC being the same for both shapes) the highest Dice; else the highest Dice."""
    records = [r for r in records if r.extras.get("mask")]
    if not records:
        raise BadInputError("no annotated validation item to choose the mask threshold on",
                            "keep a validation split with annotations (data.val_fraction > 0)")
    truths = {r.source: read_mask(r.extras["mask"]) for r in records}
    resize = predictor.card["preprocessing"]["resize"]
    rows, by_hc = [], all(r.extras.get("hc_mm") for r in records)
    pairs, kept, _ = predict_images(predictor, records, "error", batch_size, lambda m: None,
                                     lambda batch: postprocess.with_mirrored(predictor.predict, batch))
    for flip in (False, True):  # one pass over the images serves every candidate
        probs = pairs.mean(axis=1) if flip else pairs[:, 0]
        for threshold in POSTPROCESS_THRESHOLDS:  # one ellipse fit per item serves both shapes
            fits = [(records[i], truths[records[i].source],
                     *postprocess.mask_and_ellipse(p, truths[records[i].source].shape, resize, float(threshold)))
                    for p, i in zip(probs, kept)]
            for shape in postprocess.SHAPES:
                items = [_scored(record, postprocess.delivered(mask, ellipse, shape), ellipse, truth, hausdorff=False)
                         for record, truth, mask, ellipse in fits]
                rows.append(_candidate(items, flip, float(threshold), shape, by_hc))

    def rank(row: dict) -> tuple[int, float, float]:  # fewest items without an ellipse, HC error, Dice
        hc = (math.inf if row["hc_mad_mm"] is None else row["hc_mad_mm"]) if by_hc else 0.0
        return row["no_ellipse"], hc, -row["dice"]
    best = min(rows, key=rank)
    progress(f"      post-processing chosen on validation (n={len(records)}, by {'HC error' if by_hc else 'Dice'}): "
             f"threshold {best['threshold']}, mirrored averaging {'on' if best['flip'] else 'off'}, "
             f"{best['shape']} (Dice {best['dice']:.4f}" +
             (f", HC error {best['hc_mad_mm']:.3f} mm)" if by_hc else ")"))
    return {"threshold": best["threshold"], "flip": best["flip"], "shape": best["shape"], "chosen_on": "val",
            "n": len(records), "criterion": "hc_mad_mm" if by_hc else "dice", "candidates": rows}


def _candidate(items: list[dict], flip: bool, threshold: float, shape: str, by_hc: bool) -> dict:
    """One post-processing candidate's validation scores (the HC error over the items with an ellipse)."""
    hc = np.array([item["hc_mad_mm"] for item in items if item["ellipse"] is not None], dtype=float)
    return {"flip": flip, "threshold": threshold, "shape": shape,
            "dice": float(np.mean([item["dice"] for item in items])),
            "hc_mad_mm": float(np.nanmean(hc)) if by_hc and len(hc) else None,
            "no_ellipse": sum(item["ellipse"] is None for item in items)}


def sweep_metrics(predictor: Predictor, records: Sequence[Record], progress: Callable[[str], None]):
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
    return mean_metrics(per_item), len(clips), {}
