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


def test_femur_length_of_a_bar():
    mask = np.zeros((200, 300), bool)
    mask[95:105, 50:250] = True
    assert femur_length_mm(mask, 0.5) == pytest.approx(100.0, rel=0.01)


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
