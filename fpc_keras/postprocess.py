"""Segmentation post-processing recorded in the model card: mirrored test-time averaging, the mask threshold and
the delivered shape (the thresholded mask, or the filled ellipse fitted to it).

All three are chosen on the validation split after training (`choose_postprocessing`) and
stored as `card["postprocessing"]`, so the evaluator, the export cards and the TF-free runner (`tflite/run.py`) turn
probabilities into masks the same way. TensorFlow-free: the runner imports it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .data.images import unfit_image
from .errors import BadInputError

if TYPE_CHECKING:
    from .biometry import Ellipse
    from .data.records import Record
    from .predictor import Predictor

DEFAULT = {"threshold": 0.5, "flip": False, "shape": "mask"}
CANDIDATES = "postprocessing_candidates.json"
SHAPES = ("mask", "ellipse")


def settings(card: dict) -> dict:
    """The card's post-processing (models exported before it existed: threshold 0.5, no mirroring, the mask)."""
    return {**DEFAULT, **{k: v for k, v in card.get("postprocessing", {}).items() if k in DEFAULT}}


def invokes_per_item(card: dict) -> int:
    """Model runs per image under the card's post-processing (mirrored averaging runs it twice): latency per
    item is the single-run latency times this."""
    return 2 if settings(card)["flip"] else 1


def mask_probabilities(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, flip: bool) -> np.ndarray:
    """Per-pixel probabilities of a (B, H, W, C) batch; with `flip`, averaged with those of the mirrored batch
    (mirrored back). A fetal head seen from either side is the same head, so the average removes noise."""
    return with_mirrored(predict, batch).mean(axis=1) if flip else np.asarray(predict(batch))


def with_mirrored(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
    """(B, 2, H, W, C): each item's probabilities, and those of its mirror image mirrored back."""
    probs = np.asarray(predict(batch))
    mirrored = np.asarray(predict(np.ascontiguousarray(batch[:, :, ::-1])))[:, :, ::-1]
    return np.stack([probs, mirrored], axis=1)


def original_mask(probs: np.ndarray, original: tuple[int, int], resize: str, threshold: float) -> np.ndarray:
    """A model-grid probability map (H, W[, C]; channel 0 used) -> the boolean mask on the original pixel grid."""
    plane = probs if probs.ndim == 2 else probs[..., 0]
    return unfit_image(plane, original, resize) > threshold


def segment(probs: np.ndarray, original: tuple[int, int], resize: str, threshold: float,
            shape: str = "mask") -> tuple[np.ndarray, Ellipse | None]:
    """A model-grid probability map -> the delivered mask on the original pixel grid and the robust ellipse of the
    thresholded mask (None when there is none)."""
    mask, ellipse = mask_and_ellipse(probs, original, resize, threshold)
    return delivered(mask, ellipse, shape), ellipse


def mask_and_ellipse(probs: np.ndarray, original: tuple[int, int], resize: str,
                     threshold: float) -> tuple[np.ndarray, Ellipse | None]:
    """The thresholded mask on the original pixel grid and its robust ellipse (None when there is none)."""
    from .biometry import ellipse_from_mask  # scipy: classifier-only boards need not have it

    mask = original_mask(probs, original, resize, threshold)
    return mask, ellipse_from_mask(mask)


def delivered(mask: np.ndarray, ellipse: Ellipse | None, shape: str) -> np.ndarray:
    """The segmentation a model delivers: the thresholded mask, or with `shape="ellipse"` its fitted ellipse,
    filled. Where the annotation is itself an ellipse (HC18's heads; the challenge scores the submitted ellipses),
    the ellipse smooths the mask's ragged edge away; the ellipse, and so the circumference, is the same for both."""
    from .biometry import ellipse_mask

    if shape not in SHAPES:
        raise ValueError(f"post-processing shape {shape!r} is not one of {SHAPES}")
    return ellipse_mask(mask.shape, ellipse) if shape == "ellipse" and ellipse is not None else mask


POSTPROCESS_THRESHOLDS = tuple(np.round(np.arange(0.3, 0.701, 0.05), 2))


def choose_postprocessing(predictor: Predictor, records: Sequence[Record], batch_size: int = 16,
                          progress: Callable[[str], None] = print) -> dict:
    """Mirrored averaging on or off, the mask threshold and the delivered shape (mask or fitted ellipse), chosen on
    annotated `records` (the validation split, never test): the lowest mean HC error where the items carry a true
    HC, then (the HC being the same for both shapes) the highest Dice; else the highest Dice."""
    from .data.hc18 import read_mask
    from .evaluate.images import predict_images
    from .evaluate.segmentation import scored

    records = [r for r in records if r.extras.get("mask")]
    if not records:
        raise BadInputError("no annotated validation item to choose the mask threshold on",
                            "keep a validation split with annotations (data.val_fraction > 0)")
    truths = {r.source: read_mask(r.extras["mask"]) for r in records}
    resize = predictor.card["preprocessing"]["resize"]
    rows, by_hc = [], all(r.extras.get("hc_mm") for r in records)
    pairs, kept, _ = predict_images(predictor, records, "error", batch_size, lambda m: None,
                                     lambda batch: with_mirrored(predictor.predict, batch))
    for flip in (False, True):  # one pass over the images serves every candidate
        probs = pairs.mean(axis=1) if flip else pairs[:, 0]
        for threshold in POSTPROCESS_THRESHOLDS:  # one ellipse fit per item serves both shapes
            fits = [(records[i], truths[records[i].source],
                     *mask_and_ellipse(p, truths[records[i].source].shape, resize, float(threshold)))
                    for p, i in zip(probs, kept)]
            for shape in SHAPES:
                items = [scored(record, delivered(mask, ellipse, shape), ellipse, truth, hausdorff=False)
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


def keep_candidates(folder: Path, choice: dict) -> dict:
    """The choice as the card keeps it, every candidate's validation scores written beside the card instead
    (`postprocessing_candidates.json`): the card says what was chosen, the folder how."""
    from .io import atomic_write_json

    atomic_write_json(Path(folder) / CANDIDATES, choice.get("candidates", []))
    return {**{k: v for k, v in choice.items() if k != "candidates"}, "candidates_file": CANDIDATES}
