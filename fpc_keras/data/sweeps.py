"""Probe motion in numpy: one warp moves an image and its mask together, so that segmentation training can
augment, and fetal video sweeps can be built from still frames (no public fetal video exists here).

A frame is the standard plane seen through a probe pose: rotation, zoom and shift about the head's centre, gain,
multiplicative speckle, and an *elevation* offset `depth` in [-1, 1] out of the standard plane. Away from the
standard plane the head's cross-section shrinks like a sphere's (scale sqrt(1 - 0.8 depth^2)) and the image
blurs (the beam's elevation focus): an off-plane frame. A sweep is a sequence of such poses that moves smoothly
through the standard plane at a random frame, with slow drift of the other parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

STANDARD_PLANE_SCALE = 0.97  # frames whose head is at least this fraction of the standard plane's are "standard"
PLANE_LABELS = ("head", "off_plane")


@dataclass(frozen=True)
class Pose:
    rotation_deg: float = 0.0
    zoom: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # rows, columns, as fractions of the image size
    depth: float = 0.0
    gain: float = 1.0
    speckle: float = 0.0

    @property
    def head_scale(self) -> float:
        return float(np.sqrt(max(1.0 - 0.8 * self.depth ** 2, 0.0)))

    @property
    def label(self) -> str:
        return PLANE_LABELS[0] if self.head_scale >= STANDARD_PLANE_SCALE else PLANE_LABELS[1]


def mask_centre(mask: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of the mask, or the image centre for an empty mask."""
    weights = mask[..., 0].astype(np.float64) if mask.ndim == 3 else mask.astype(np.float64)
    if weights.sum() <= 0:
        return (mask.shape[0] - 1) / 2, (mask.shape[1] - 1) / 2
    rows, cols = np.indices(weights.shape)
    return float((rows * weights).sum() / weights.sum()), float((cols * weights).sum() / weights.sum())


def render(image: np.ndarray, mask: np.ndarray, pose: Pose, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The (image, mask) pair seen through `pose`; uint8 HxWxC and HxWx1 in, same shapes and dtype out."""
    height, width = image.shape[:2]
    centre = np.array(mask_centre(mask))
    angle = np.deg2rad(pose.rotation_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = pose.zoom * pose.head_scale
    matrix = rotation / scale  # output -> input coordinates
    shift = np.array(pose.shift) * (height, width)
    offset = centre - matrix @ (centre + shift)
    warp = lambda plane, order: ndimage.affine_transform(plane, matrix, offset, order=order, mode="constant")  # noqa: E731
    out = np.stack([warp(image[..., c].astype(np.float32), 1) for c in range(image.shape[2])], axis=-1)
    out_mask = warp(mask[..., 0].astype(np.float32), 1)[..., None]
    blur = 2.5 * abs(pose.depth)
    if blur > 0.3:
        out = ndimage.gaussian_filter(out, sigma=(blur, blur, 0))
    out = out * pose.gain
    if pose.speckle > 0:
        out = out * (1.0 + pose.speckle * rng.standard_normal(out.shape[:2])[..., None])
    return np.clip(out, 0, 255).astype(np.uint8), np.clip(out_mask, 0, 255).astype(np.uint8)


def training_pose(rng: np.random.Generator, off_plane: bool) -> Pose:
    """A random pose for frame training: a standard plane under probe jitter, or an off-plane frame."""
    depth = rng.uniform(0.35, 1.0) if off_plane else rng.uniform(0.0, 0.15)
    return Pose(rotation_deg=rng.uniform(-15, 15), zoom=rng.uniform(0.9, 1.1),
                shift=tuple(rng.uniform(-0.05, 0.05, 2)), depth=float(depth * rng.choice((-1, 1))),
                gain=rng.uniform(0.8, 1.2), speckle=rng.uniform(0.0, 0.1))


def sweep_poses(frames: int, rng: np.random.Generator) -> tuple[list[Pose], int]:
    """Poses of a sweep through the standard plane and the index of its best (most central) frame.

    The elevation moves at constant speed from one side of the head to the other, crossing 0 at a random frame
    in the middle half; rotation, zoom, shift and gain drift slowly (a smoothed random walk); speckle is new
    every frame.
    """
    centre = int(rng.integers(frames // 4, frames - frames // 4))
    speed = rng.uniform(1.2, 2.0) / max(frames - 1, 1)
    drift = lambda scale: np.cumsum(rng.normal(0, scale, frames))  # noqa: E731
    start_angle, start_zoom = rng.uniform(-10, 10), rng.uniform(0.92, 1.08)
    shifts = np.stack([drift(0.008), drift(0.008)], axis=1) + rng.uniform(-0.03, 0.03, 2)
    angles, zooms, gains = start_angle + drift(0.8), start_zoom * np.exp(drift(0.01)), np.exp(drift(0.03))
    poses = [Pose(rotation_deg=float(angles[t]), zoom=float(zooms[t]), shift=(float(shifts[t, 0]), float(shifts[t, 1])),
                  depth=float(np.clip((t - centre) * speed, -1, 1)), gain=float(np.clip(gains[t], 0.7, 1.3)),
                  speckle=float(rng.uniform(0.03, 0.1)))
             for t in range(frames)]
    return poses, centre


def make_sweep(image: np.ndarray, mask: np.ndarray, frames: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(frames T x H x W x C, masks T x H x W x 1, per-frame plane labels, index of the best frame)."""
    poses, best = sweep_poses(frames, rng)
    rendered = [render(image, mask, pose, rng) for pose in poses]
    return (np.stack([r[0] for r in rendered]), np.stack([r[1] for r in rendered]), [p.label for p in poses], best)
