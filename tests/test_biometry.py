import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fpc_keras.biometry import (Ellipse, ellipse_from_mask, ellipse_from_outline, ellipse_mask, femur_length_mm,
                                fit_ellipse, head_circumference_mm)
from fpc_keras.data.datasets import read_dataset
from fpc_keras.data.hc18 import read_mask


def _numeric_circumference(a, b, n=200000):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    return float(np.hypot(np.diff(np.append(x, x[0])), np.diff(np.append(y, y[0]))).sum())


def test_ramanujan_matches_numeric_length():
    for a, b in [(100, 100), (120, 80), (300, 90)]:
        assert Ellipse(0, 0, a, b, 0).circumference == pytest.approx(_numeric_circumference(a, b), rel=1e-6)


def test_fit_recovers_parameters_from_points():
    t = np.linspace(0, 2 * np.pi, 400)
    cx, cy, a, b, angle = 210.0, 170.0, 150.0, 95.0, 0.6
    x = cx + a * np.cos(t) * math.cos(angle) - b * np.sin(t) * math.sin(angle)
    y = cy + a * np.cos(t) * math.sin(angle) + b * np.sin(t) * math.cos(angle)
    e = fit_ellipse(x, y)
    assert (e.cx, e.cy, e.a, e.b) == pytest.approx((cx, cy, a, b), rel=1e-6)
    assert e.angle == pytest.approx(angle, abs=1e-6)


@pytest.mark.parametrize("a, b, angle", [(150.0, 110.0, 0.3), (90.0, 60.0, -1.2), (200.0, 199.0, 0.0)])
def test_hc_from_rasterised_mask_within_half_percent(a, b, angle):
    truth = Ellipse(260.3, 240.7, a, b, angle)
    mask = ellipse_mask((500, 540), truth)
    pixel_mm = 0.12
    hc = head_circumference_mm(mask, pixel_mm)
    assert abs(hc - truth.circumference * pixel_mm) / (truth.circumference * pixel_mm) < 0.005


def test_outline_cut_by_the_border_is_completed():
    truth = Ellipse(120, 60, 100, 80, 0.2)  # reaches above the image
    image = Image.new("L", (300, 200))
    t = np.linspace(0, 2 * np.pi, 2000)
    pts = [(truth.cx + truth.a * math.cos(s) * math.cos(truth.angle) - truth.b * math.sin(s) * math.sin(truth.angle),
            truth.cy + truth.a * math.cos(s) * math.sin(truth.angle) + truth.b * math.sin(s) * math.cos(truth.angle))
           for s in t]
    ImageDraw.Draw(image).line(pts, fill=255, width=1)
    fitted = ellipse_from_outline(np.asarray(image))
    assert fitted.circumference == pytest.approx(truth.circumference, rel=0.005)


HC18_SHAPE = (540, 800)  # the original resolution of HC18's frames (rows, columns)


def _bar(shape, cx, cy, length, width, angle):
    """A femur diaphysis: pixel centres inside a rotated length x width rectangle."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    dx, dy = cols - cx, rows - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


@pytest.mark.parametrize("angle", [0.0, 0.35, -0.8, 1.1, math.pi / 2])
def test_femur_length_of_an_oblique_diaphysis_at_the_original_resolution(angle):
    pixel_mm, length_mm = 0.12, 44.0  # a 24-week femur
    mask = _bar(HC18_SHAPE, 400.3, 270.6, length_mm / pixel_mm, 22.0, angle)
    assert femur_length_mm(mask, pixel_mm) == pytest.approx(length_mm, rel=0.003)
    assert femur_length_mm(np.zeros(HC18_SHAPE, bool), pixel_mm) is None


def test_femur_length_ignores_a_smaller_echo_beside_the_bone():
    mask = _bar(HC18_SHAPE, 400.0, 270.0, 300.0, 20.0, 0.5) | _bar(HC18_SHAPE, 150.0, 100.0, 60.0, 60.0, 0.0)
    assert femur_length_mm(mask, 0.1) == pytest.approx(30.0, rel=0.003)


def _shadowed_abdomen(truth: Ellipse, directions, half_width: float, depth: float) -> np.ndarray:
    """An abdomen segment with acoustic shadows: wedges around `directions` (radians from the centre), lost from
    `depth` pixels out to the skin."""
    rows, cols = np.mgrid[0:HC18_SHAPE[0], 0:HC18_SHAPE[1]]
    angle = np.arctan2(rows - truth.cy, cols - truth.cx)
    shadow = np.zeros(HC18_SHAPE, bool)
    for direction in directions:
        shadow |= (np.abs((angle - direction + np.pi) % (2 * np.pi) - np.pi) < half_width) & \
            (np.hypot(rows - truth.cy, cols - truth.cx) > depth)
    return ellipse_mask(HC18_SHAPE, truth) & ~shadow


@pytest.mark.parametrize("angle", [0.25, -1.0])
def test_abdominal_circumference_bridges_the_shadows_of_spine_and_ribs(angle):
    """Three shadows (spine and two ribs) take a third of the skin line: AC stays within 1 % (the convex hull
    bridges them), while the ellipse of the notched segment itself (HC's measurement) falls short by more."""
    from fpc_keras.biometry import abdominal_circumference_mm

    pixel_mm, truth = 0.15, Ellipse(400.2, 270.4, 190.0, 150.0, angle)
    segment = _shadowed_abdomen(truth, (1.9, 0.3, -2.2), 0.35, 110)
    expected = truth.circumference * pixel_mm
    assert abdominal_circumference_mm(segment, pixel_mm) == pytest.approx(expected, rel=0.01)
    assert head_circumference_mm(segment, pixel_mm) < expected * 0.99


@pytest.mark.parametrize("angle", [0.25, -1.0])
def test_abdominal_circumference_on_the_skin_line_of_a_shadowed_abdomen(angle):
    """An abdomen at the original resolution, its segment notched by the spine's acoustic shadow (a 57-degree
    wedge, a sixth of the skin line, lost to 60 px from the centre) and holed by the stomach: AC is the skin-line
    ellipse's."""
    from fpc_keras.biometry import abdominal_circumference_mm

    pixel_mm, truth = 0.15, Ellipse(400.2, 270.4, 190.0, 150.0, angle)
    abdomen = ellipse_mask(HC18_SHAPE, truth)
    stomach = ellipse_mask(HC18_SHAPE, Ellipse(360, 240, 40, 25, 0.5))
    segment = _shadowed_abdomen(truth, (1.9,), 0.5, 60) & ~stomach
    expected = truth.circumference * pixel_mm
    assert abdominal_circumference_mm(segment, pixel_mm) == pytest.approx(expected, rel=0.003)  # 0.5 mm
    assert abdominal_circumference_mm(abdomen, pixel_mm) == pytest.approx(expected, rel=0.0005)
    assert abdominal_circumference_mm(np.zeros(HC18_SHAPE, bool), pixel_mm) is None


def test_empty_mask_gives_none():
    assert ellipse_from_mask(np.zeros((50, 50), bool)) is None
    assert head_circumference_mm(np.zeros((50, 50), bool), 0.1) is None


@pytest.mark.realdata
def test_hc18_masks_reproduce_the_published_circumference(shared_data):
    records = read_dataset("hc18", shared_data / "HC18")
    assert len(records) == 798
    assert len({r.group for r in records}) < len(records)  # several images per subject share a group
    errors = []
    for record in records[::40]:
        mask = read_mask(record.extras["mask"])
        errors.append(abs(head_circumference_mm(mask, record.extras["pixel_mm"]) - record.extras["hc_mm"]))
    assert np.mean(errors) < 0.5, errors  # the filled-ellipse masks agree with HC18's own HC to sub-mm


def test_robust_fit_ignores_a_blob_attached_to_the_head():
    truth = Ellipse(260.0, 240.0, 150.0, 110.0, 0.3)
    mask = ellipse_mask((500, 540), truth)
    mask[230:250, 400:440] = True  # a bright structure the segmenter merged with the skull
    hc = head_circumference_mm(mask, 0.1)
    assert abs(hc - truth.circumference * 0.1) / (truth.circumference * 0.1) < 0.005
    from fpc_keras.biometry import boundary_points, fit_ellipse  # a plain fit is pulled by the blob

    plain = fit_ellipse(*boundary_points(mask)).circumference * 0.1
    assert abs(plain - truth.circumference * 0.1) > abs(hc - truth.circumference * 0.1)


def test_hausdorff_of_a_shifted_mask_is_the_shift():
    from fpc_keras.biometry import hausdorff_mm

    truth = ellipse_mask((200, 200), Ellipse(100, 100, 50, 40, 0))
    shifted = np.roll(truth, 7, axis=1)
    assert hausdorff_mm(shifted, truth, 0.2) == pytest.approx(7 * 0.2, abs=0.05)
    assert math.isnan(hausdorff_mm(np.zeros_like(truth), truth, 0.2))
