"""Occlusion sensitivity and the overlay colours (`fpc_keras/saliency.py`, numpy only)."""
import numpy as np

from fpc_keras.saliency import occlusion_map, overlay, square_corners


def _reads_the_top_left(batch: np.ndarray) -> np.ndarray:
    """A two-class 'model' whose class 1 is the brightness of the top-left quarter's red channel."""
    evidence = batch[:, :16, :16, 0].mean(axis=(1, 2)) / 255
    return np.stack([1 - evidence, evidence], axis=1)


def test_occlusion_lights_where_the_evidence_is_and_nowhere_else():
    image = np.zeros((32, 32, 3), np.float32)
    image[:16, :16, 0] = 200  # the evidence
    image[16:, 16:, 1] = 200  # a distractor the model ignores
    cam = occlusion_map(_reads_the_top_left, image, target=1)
    assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() == 1
    assert cam[:16, :16].mean() > 0.5 and cam[20:, 20:].max() == 0
    assert occlusion_map(_reads_the_top_left, image, target=0).max() == 0  # covering it only raises class 0


def test_squares_reach_both_edges_and_the_overlay_is_jet():
    assert square_corners(224, 32, 16) == list(range(0, 193, 16))
    assert square_corners(30, 8, 4) == [0, 4, 8, 12, 16, 20, 22]  # the last square ends at the edge
    gray = np.full((2, 2, 1), 100, np.uint8)
    cam = np.array([[0.0, 1.0], [0.5, 0.0]], np.float32)
    drawn = overlay(gray, cam, alpha=1.0)
    assert drawn.shape == (2, 2, 3)
    assert drawn[0, 0].tolist() == [0, 0, 127] and drawn[0, 1].tolist() == [127, 0, 0]  # jet: dark blue, dark red
    assert drawn[1, 0, 1] > 200  # the middle is green
