"""Segmentation post-processing recorded in the model card: mirrored test-time averaging, the mask threshold and
the delivered shape (the thresholded mask, or the filled ellipse fitted to it).

All three are chosen on the validation split after training (`evaluate.segmentation.choose_postprocessing`) and
stored as `card["postprocessing"]`, so the evaluator, the export cards and the TF-free runner (`tflite/run.py`) turn
probabilities into masks the same way. TensorFlow-free: the runner imports it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from .data.images import unfit_image

if TYPE_CHECKING:
    from .biometry import Ellipse

DEFAULT = {"threshold": 0.5, "flip": False, "shape": "mask"}
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
