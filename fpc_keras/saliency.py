"""Class-evidence maps drawn over their image, in numpy only (`tflite/run.py` draws them on an edge board).

Occlusion sensitivity (Zeiler & Fergus 2014): where covering the image lowers the predicted class's probability.
It needs forward passes only, so it explains any classifier the suite runs, an int8 .tflite included, where
Grad-CAM (`explain.py`) needs the Keras model's gradients. Cost: one forward pass per square position (a 224-pixel
input with the default squares: 13 x 13 = 169 passes).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

SQUARES_ACROSS = 7  # the square's side is the input's shorter side / 7 (32 pixels at 224) ...
STEPS_PER_SQUARE = 2  # ... moved by half its side


def square_corners(size: int, side: int, stride: int) -> list[int]:
    """Start positions along one axis of length `size` such that the squares reach both edges."""
    last = max(size - side, 0)
    return sorted(set(list(range(0, last + 1, stride)) + [last]))


def occlusion_map(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, target: int, side: int = 0,
                  stride: int = 0, batch: int = 16) -> np.ndarray:
    """Per pixel of `x` (HxWxC, the model's input), how much the `target` probability drops when a square around it
    is filled with the image's mean, averaged over the squares that cover the pixel; scaled to [0, 1] (0: covering
    there does not lower the class). `predict` maps a batch to class probabilities."""
    height, width = x.shape[:2]
    side = side or max(1, min(height, width) // SQUARES_ACROSS)
    stride = stride or max(1, side // STEPS_PER_SQUARE)
    fill = x.mean(axis=(0, 1), keepdims=True)
    base = float(np.asarray(predict(x[None]))[0][target])
    corners = [(top, left) for top in square_corners(height, side, stride)
               for left in square_corners(width, side, stride)]
    drop = np.zeros((height, width), np.float64)
    cover = np.zeros((height, width), np.float64)
    for start in range(0, len(corners), batch):
        chunk = corners[start:start + batch]
        covered = np.repeat(x[None], len(chunk), axis=0)
        for k, (top, left) in enumerate(chunk):
            covered[k, top:top + side, left:left + side] = fill
        probs = np.asarray(predict(covered))[:, target]
        for (top, left), p in zip(chunk, probs):
            drop[top:top + side, left:left + side] += base - float(p)
            cover[top:top + side, left:left + side] += 1
    sensitivity = np.clip(drop / np.maximum(cover, 1), 0, None)
    peak = sensitivity.max()
    return (sensitivity / peak).astype(np.float32) if peak > 0 else np.zeros((height, width), np.float32)


# matplotlib's "jet" colour map, as its (position, value) segments per channel
_JET = {"red": ((0, 0.35, 0.66, 0.89, 1), (0, 0, 1, 1, 0.5)),
        "green": ((0, 0.125, 0.375, 0.64, 0.91, 1), (0, 0, 1, 1, 0, 0)),
        "blue": ((0, 0.11, 0.34, 0.65, 1), (0.5, 1, 1, 0, 0))}


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The map (values in [0, 1], coloured jet) blended over an RGB or gray uint8 image of the same size."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    colours = np.stack([np.interp(cam, *_JET[channel]) for channel in ("red", "green", "blue")], axis=-1) * 255
    return np.clip((1 - alpha) * rgb.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)
