import numpy as np
import pytest

from fpc_keras.metrics import classification_metrics, dice_iou, macro_f1, mean_metrics


def test_classification_metrics_known_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.4, .5, .1], [.1, .8, .1], [.2, .7, .1], [.1, .2, .7], [.5, .1, .4]])
    m = classification_metrics(y, probs, ["a", "b", "c"], n_boot=200)
    assert m["top1"]["value"] == pytest.approx(4 / 6)
    assert m["top2"]["value"] == pytest.approx(1.0)
    assert m["confusion"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    lo, hi = m["top1"]["ci95"]
    assert lo <= m["top1"]["value"] <= hi and hi - lo > 0


def test_macro_f1_matches_hand_computation():
    y, p = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    f1_a, f1_b = 2 * 1 / (2 * 1 + 1), 2 * 2 / (2 * 2 + 1)
    assert macro_f1(y, p, 2) == pytest.approx((f1_a + f1_b) / 2)


def test_dice_iou():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:5], b[:, :5] = True, True
    assert dice_iou(a, b) == pytest.approx((0.5, 25 / 75))
    assert dice_iou(a, a) == (1.0, 1.0)


def test_mean_metrics_skip_nan():
    out = mean_metrics({"hc_mad_mm": [1.0, np.nan, 3.0]}, n_boot=100)
    assert out["hc_mad_mm"]["value"] == 2.0


def test_calibration_bins_and_expected_calibration_error():
    from fpc_keras.metrics import calibration

    # Four items at confidence 0.95 (three right) and two at 0.55 (both right).
    probs = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 2)
    y = np.array([0, 0, 0, 1, 0, 0])
    c = calibration(y, probs, n_boot=50)
    assert [(b["lo"], b["count"]) for b in c["bins"]] == [(0.5, 2), (0.9, 4)]
    assert c["bins"][1]["accuracy"] == 0.75 and abs(c["bins"][1]["confidence"] - 0.95) < 1e-12
    expected = (4 * abs(0.75 - 0.95) + 2 * abs(1.0 - 0.55)) / 6
    assert abs(c["ece"]["value"] - expected) < 1e-12
    perfect = calibration(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]), n_boot=10)
    assert perfect["ece"]["value"] == 0.0 and perfect["bins"][0]["lo"] == 0.9


def test_metrics_from_a_confusion_matrix_equal_those_of_its_items():
    from fpc_keras.metrics import metrics_from_confusion

    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 2, 2, 2, 0, 2]]
    items = classification_metrics(y_true, probs, ["a", "b", "c"])
    pooled = metrics_from_confusion(items["confusion"]["matrix"])
    for name in ("top1", "macro_f1"):  # the same values; the bootstrap CIs differ with the items' order only
        assert pooled[name]["value"] == pytest.approx(items[name]["value"])
        assert pooled[name]["ci95"] == pytest.approx(items[name]["ci95"], abs=0.1)
