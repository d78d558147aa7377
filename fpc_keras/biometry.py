"""Biometry from masks: a least-squares ellipse fit (Fitzgibbon's direct method), circumference by Ramanujan,
in millimetres from the pixel size. numpy and scipy only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError


@dataclass(frozen=True)
class Ellipse:
    """Centre (x = column, y = row) and semi-axes in pixels; `angle` of semi-axis `a` from the x axis, radians."""
    cx: float
    cy: float
    a: float
    b: float
    angle: float

    @property
    def circumference(self) -> float:
        """Ramanujan's second approximation (relative error below 1e-9 for head-like ellipses)."""
        a, b = self.a, self.b
        h = ((a - b) / (a + b)) ** 2
        return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def fit_ellipse(x: np.ndarray, y: np.ndarray) -> Ellipse:
    """Direct least-squares ellipse fit (Fitzgibbon, Pilu & Fisher 1999) on normalised coordinates."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 6:
        raise ValueError(f"an ellipse fit needs at least 6 points, got {x.size}")
    mx, my = x.mean(), y.mean()
    scale = max(x.std(), y.std(), 1e-12)
    u, v = (x - mx) / scale, (y - my) / scale
    d1 = np.stack([u * u, u * v, v * v], axis=1)
    d2 = np.stack([u, v, np.ones_like(u)], axis=1)
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    t = -np.linalg.solve(s3, s2.T)
    m = s1 + s2 @ t
    m = np.array([m[2] / 2, -m[1], m[0] / 2])
    _, vectors = np.linalg.eig(m)
    vectors = np.real(vectors)
    condition = 4 * vectors[0] * vectors[2] - vectors[1] ** 2
    if not np.any(condition > 0):
        raise ValueError("the points do not lie on an ellipse")
    a1 = vectors[:, np.argmax(condition > 0)]
    coeffs = np.concatenate([a1, t @ a1])
    return _conic_to_ellipse(coeffs, mx, my, scale)


def _conic_to_ellipse(coeffs: np.ndarray, mx: float, my: float, scale: float) -> Ellipse:
    """Ax^2 + Bxy + Cy^2 + Dx + Ey + F = 0 (normalised coordinates) -> centre, semi-axes, angle in pixels."""
    a, b, c, d, e, f = coeffs
    disc = b * b - 4 * a * c
    cx = (2 * c * d - b * e) / disc
    cy = (2 * a * e - b * d) / disc
    common = 2 * (a * e * e + c * d * d - b * d * e + disc * f)
    root = math.sqrt((a - c) ** 2 + b * b)
    major = -math.sqrt(max(common * (a + c + root), 0.0)) / disc
    minor = -math.sqrt(max(common * (a + c - root), 0.0)) / disc
    angle = 0.5 * math.atan2(-b, c - a)
    if minor > major:
        major, minor, angle = minor, major, angle + math.pi / 2
    angle = (angle + math.pi / 2) % math.pi - math.pi / 2
    return Ellipse(cx * scale + mx, cy * scale + my, abs(major) * scale, abs(minor) * scale, angle)


def boundary_points(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel boundary: midpoints between horizontally or vertically adjacent inside/outside pixels.

    Unlike the centres of edge pixels, these lie on the region's true edge, so a fitted ellipse is not
    shrunk by half a pixel.
    """
    m = np.asarray(mask, dtype=bool)
    rows, cols = np.nonzero(m[:, 1:] != m[:, :-1])
    xs, ys = [cols + 0.5], [rows.astype(np.float64)]
    rows, cols = np.nonzero(m[1:, :] != m[:-1, :])
    xs.append(cols.astype(np.float64))
    ys.append(rows + 0.5)
    return np.concatenate(xs), np.concatenate(ys)


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(np.asarray(mask, dtype=bool))
    if count <= 1:
        return labels > 0
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def radial_distance(ellipse: Ellipse, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance of each point to the ellipse along the ray from its centre (close to the geometric distance for
    points near a head-shaped ellipse)."""
    dx, dy = np.asarray(x) - ellipse.cx, np.asarray(y) - ellipse.cy
    cos, sin = math.cos(ellipse.angle), math.sin(ellipse.angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    r = np.sqrt((u / ellipse.a) ** 2 + (v / ellipse.b) ** 2)
    return np.hypot(dx, dy) * np.abs(1.0 - 1.0 / np.maximum(r, 1e-12))


def fit_ellipse_robust(x: np.ndarray, y: np.ndarray, rounds: int = 3, cutoff: float = 3.0) -> Ellipse:
    """Least-squares fit, then refits without points farther than `cutoff` robust standard deviations (1.4826
    MAD, at least 1 pixel) from the ellipse: spurs and blobs of a predicted mask do not pull the fit."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ellipse = fit_ellipse(x, y)
    for _ in range(rounds):
        distance = radial_distance(ellipse, x, y)
        spread = max(1.4826 * float(np.median(np.abs(distance - np.median(distance)))), 1.0)
        keep = distance <= np.median(distance) + cutoff * spread
        if keep.all() or keep.sum() < 6:
            break
        x, y = x[keep], y[keep]
        ellipse = fit_ellipse(x, y)
    return ellipse


def ellipse_from_mask(mask: np.ndarray) -> Ellipse | None:
    """The robust ellipse of the largest filled region (holes filled), or None for an empty or degenerate mask."""
    region = ndimage.binary_fill_holes(largest_component(mask))
    if region.sum() < 10:
        return None
    x, y = boundary_points(region)
    try:
        return fit_ellipse_robust(x, y)
    except (ValueError, np.linalg.LinAlgError):
        return None


def hausdorff_mm(predicted: np.ndarray, truth: np.ndarray, pixel_mm: float) -> float:
    """Symmetric Hausdorff distance between the two masks' boundaries in mm (NaN when either is empty)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if not predicted.any() or not truth.any():
        return float("nan")
    edge = lambda m: m & ~ndimage.binary_erosion(m)  # noqa: E731
    to_truth = ndimage.distance_transform_edt(~edge(truth))
    to_predicted = ndimage.distance_transform_edt(~edge(predicted))
    return float(max(to_truth[edge(predicted)].max(), to_predicted[edge(truth)].max()) * pixel_mm)


def ellipse_from_outline(outline: np.ndarray) -> Ellipse:
    """An annotation drawn as an ellipse outline (HC18) -> the fitted ellipse; robust to parts outside the image."""
    ys, xs = np.nonzero(np.asarray(outline) > 0)
    return fit_ellipse(xs.astype(np.float64), ys.astype(np.float64))


def ellipse_mask(shape: tuple[int, int], ellipse: Ellipse) -> np.ndarray:
    """Rasterise the filled ellipse: pixel centres inside it."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    dx, dy = cols - ellipse.cx, rows - ellipse.cy
    cos, sin = math.cos(ellipse.angle), math.sin(ellipse.angle)
    u = (dx * cos + dy * sin) / ellipse.a
    v = (-dx * sin + dy * cos) / ellipse.b
    return (u * u + v * v) <= 1.0


def head_circumference_mm(mask: np.ndarray, pixel_mm: float) -> float | None:
    """The circumference of the mask's robust ellipse in mm (None for an empty or degenerate mask)."""
    ellipse = ellipse_from_mask(mask)
    return None if ellipse is None else ellipse.circumference * pixel_mm


def convex_region(mask: np.ndarray) -> np.ndarray:
    """The mask's largest region, holes filled, made convex: every pixel whose centre lies in the convex hull of
    the region's pixel centres."""
    region = ndimage.binary_fill_holes(largest_component(mask))
    ys, xs = np.nonzero(region)
    if xs.size < 3:
        return region
    try:
        hull = ConvexHull(np.stack([xs, ys], axis=1).astype(np.float64))
    except QhullError:  # all pixels in one row or column
        return region
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rows, cols = np.mgrid[top:bottom, left:right]
    centres = np.stack([cols.ravel(), rows.ravel(), np.ones(cols.size)], axis=1)
    inside = (centres @ hull.equations.T <= 1e-9).all(axis=1).reshape(rows.shape)
    out = np.zeros_like(region)
    out[top:bottom, left:right] = inside
    return out


def abdominal_circumference_mm(mask: np.ndarray, pixel_mm: float) -> float | None:
    """The circumference in mm of the ellipse on the abdomen's skin line (ISUOG): the robust ellipse of the convex
    hull of the largest region. Why the hull: the skin line is convex, while an abdomen segment is notched by the
    spine's and ribs' acoustic shadows and holed by the stomach and umbilical vein, which would pull the ellipse in."""
    return head_circumference_mm(convex_region(mask), pixel_mm)


def femur_length_mm(mask: np.ndarray, pixel_mm: float) -> float | None:
    """End-to-end length in mm of the largest region along its principal axis: the extent of its sub-pixel
    boundary projected on the axis (the callipers on the two ends of the ossified diaphysis); None for an empty
    mask."""
    region = largest_component(mask)
    ys, xs = np.nonzero(region)
    if xs.size < 2:
        return None
    centre = np.array([xs.mean(), ys.mean()])
    axis = np.linalg.svd(np.stack([xs, ys], axis=1) - centre, full_matrices=False)[2][0]
    projection = (np.stack(boundary_points(region), axis=1) - centre) @ axis
    return float(projection.max() - projection.min()) * pixel_mm
