"""FetalNet: frame and video builders, Keras-versus-TFLite parity of both, probe-motion sweeps, and multi-task
training on a tiny HC18-layout dataset through the CLI (train, resume, export, the challenge CSV); its final fit
and cross-validation are in test_segmentation_cv.py."""
import csv
import math

import keras
import numpy as np
import pytest

from fpc_keras.cli import main
from fpc_keras.config import load_config
from fpc_keras.data.sweeps import PLANE_LABELS, Pose, make_sweep, render
from fpc_keras.errors import BadInputError
from fpc_keras.conversion import convert
from fpc_keras.io import read_json
from fpc_keras.litert import TFLiteModel, primary_output
from fpc_keras.models import build_model
from fpc_keras.training.session import fresh_model
from conftest import calibrate_batch_norm, family_inputs, fetalnet_train_args
from parity import assert_parity


def _fetalnet_config(*overrides: str, classes: int = len(PLANE_LABELS)):
    config = load_config(None, ["model.name=fetalnet", "model.backbone=unet", "model.attention=gates",
                                "model.base_filters=4", "model.depth=2", "data.image_size=[32, 32]", *overrides])
    config.model.num_classes = classes
    return config


def _fetalnet(*overrides: str):
    return build_model(_fetalnet_config(*overrides))


def test_frame_model_outputs_mask_and_plane_with_named_gates():
    model = _fetalnet()
    assert [tuple(o.shape) for o in model.outputs] == [(None, 32, 32, 1), (None, 2)]
    names = {layer.name for layer in model.layers}
    assert {"mask", "plane", "dec1_gate_alpha", "dec2_gate_alpha", "bottleneck_conv2"} <= names


def _saved_donor(path, classes: int = len(PLANE_LABELS)) -> dict:
    """A 32x32 model with recognisable (random) weights, saved to `path`; its weights by layer name."""
    donor = build_model(_fetalnet_config(classes=classes))
    rng = np.random.default_rng(5)
    for layer in donor.layers:
        layer.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in layer.get_weights()])
    donor.save(path)
    return {layer.name: layer.get_weights() for layer in donor.layers if layer.get_weights()}


def test_warm_start_carries_a_model_to_a_larger_input_size(tmp_path):
    donor = _saved_donor(tmp_path / "small.keras")
    messages = []
    model = fresh_model(_fetalnet_config("data.image_size=[48, 64]", f"train.init_from={tmp_path / 'small.keras'}"),
                        messages.append)
    assert model.inputs[0].shape[1:3] == (48, 64)
    for name, weights in donor.items():
        for expected, got in zip(weights, model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, expected)
    assert f"{len(donor)} layer(s) copied" in messages[0] and "left as built" not in messages[0]


def test_warm_start_leaves_layers_of_another_shape_as_built_and_says_so(tmp_path):
    donor = _saved_donor(tmp_path / "three.keras", classes=3)
    messages = []
    model = fresh_model(_fetalnet_config(f"train.init_from={tmp_path / 'three.keras'}"), messages.append)
    assert messages[0].endswith("1 left as built: plane")
    assert model.get_layer("plane").get_weights()[0].shape != donor["plane"][0].shape
    np.testing.assert_array_equal(model.get_layer("plane_dense").get_weights()[0], donor["plane_dense"][0])


def test_warm_start_from_a_missing_or_unrelated_model_is_refused(tmp_path):
    with pytest.raises(BadInputError, match="nothing.keras does not exist"):
        fresh_model(_fetalnet_config(f"train.init_from={tmp_path / 'nothing.keras'}"), print)
    inputs = keras.Input((8,))
    keras.Model(inputs, keras.layers.Dense(2, name="classifier")(inputs)).save(tmp_path / "other.keras")
    with pytest.raises(BadInputError, match="no layer of .*other.keras matches"):
        fresh_model(_fetalnet_config(f"train.init_from={tmp_path / 'other.keras'}"), print)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "vgg16"])
def test_imagenet_encoder_taps_one_skip_per_scale(backbone):
    model = _fetalnet(f"model.backbone={backbone}", "model.weights=none", "data.image_size=[64, 64]")
    assert tuple(model.outputs[0].shape) == (None, 64, 64, 1)
    gates = {layer.name: layer for layer in model.layers if layer.name.endswith("_gate_alpha")}
    assert sorted(gates) == [f"dec{i}_gate_alpha" for i in (1, 2, 3, 4)]
    assert [gates[f"dec{i}_gate_alpha"].output.shape[1] for i in (1, 2, 3, 4)] == [32, 16, 8, 4]


def test_video_model_is_one_encoder_per_frame_and_a_temporal_module():
    model = _fetalnet("model.temporal=convlstm", "data.clip_length=3")
    assert [tuple(o.shape) for o in model.outputs] == [(None, 3, 32, 32, 1), (None, 3, 2)]
    clip = np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 32, 3)).astype("float32")
    mask, plane = (np.asarray(o) for o in model(clip, training=False))
    np.testing.assert_allclose(plane.sum(axis=-1), 1.0, atol=1e-5)
    # The temporal module mixes frames: changing only the first frame changes the last frame's output.
    changed = clip.copy()
    changed[:, 0] = 255 - changed[:, 0]
    assert np.abs(np.asarray(model(changed, training=False)[0])[:, -1] - mask[:, -1]).max() > 1e-6


def test_image_size_must_suit_the_encoder():
    from fpc_keras.errors import BadInputError

    with pytest.raises(BadInputError, match="multiple of 4"):
        _fetalnet("data.image_size=[30, 30]")


@pytest.mark.parametrize("temporal", ["none", "convlstm"])
def test_keras_tflite_parity(temporal, tmp_path):
    keras.utils.set_random_seed(0)  # one fixed draw of the random weights
    model = _fetalnet(f"model.temporal={temporal}", "data.clip_length=2")
    x = family_inputs(8)  # bright blobs: masks that differ per image
    if temporal != "none":
        x = np.stack([x[:4], x[4:]], axis=1)  # 4 clips of 2 frames
    calibrate_batch_norm(model, x)
    reference = primary_output(model(x, training=False))
    variants = ("fp32", "fp16", "int8") if temporal == "none" else ("fp32",)
    for variant in variants:
        path = tmp_path / f"{variant}.tflite"
        path.write_bytes(convert(model, variant, x if variant == "int8" else None))
        out = TFLiteModel(path)(x)  # the mask, not the plane output
        print(variant, assert_parity(variant, out, reference, task="segmentation"))


def _ellipse_pair(size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    inside = ((xx - 30) / 18.0) ** 2 + ((yy - 34) / 12.0) ** 2 <= 1
    image = np.repeat((inside * 200 + 20).astype(np.uint8)[..., None], 3, axis=2)
    return image, (inside * 255).astype(np.uint8)[..., None]


def test_render_moves_image_and_mask_together():
    image, mask = _ellipse_pair()
    rng = np.random.default_rng(0)
    same_image, same_mask = render(image, mask, Pose(), rng)
    assert np.abs(same_image.astype(int) - image).max() <= 1 and np.abs(same_mask.astype(int) - mask).max() <= 1
    moved_image, moved_mask = render(image, mask, Pose(rotation_deg=25, zoom=1.1, shift=(0.05, -0.05)), rng)
    bright, inside = moved_image[..., 0] > 110, moved_mask[..., 0] > 127
    assert (bright == inside).mean() > 0.98 and not np.array_equal(inside, mask[..., 0] > 127)


def test_off_plane_frames_shrink_the_head():
    image, mask = _ellipse_pair()
    _, off = render(image, mask, Pose(depth=0.9), np.random.default_rng(0))
    assert Pose(depth=0.9).label == "off_plane" and Pose(depth=0.1).label == "head"
    assert (off > 127).sum() < 0.6 * (mask > 127).sum()


def test_sweep_passes_through_the_standard_plane_once():
    image, mask = _ellipse_pair()
    frames, masks, labels, best = make_sweep(image, mask, 12, np.random.default_rng(3))
    assert frames.shape == (12, 64, 64, 3) and masks.shape == (12, 64, 64, 1)
    assert labels[best] == "head" and labels[0] == labels[-1] == "off_plane"
    standard = [i for i, label in enumerate(labels) if label == "head"]
    assert standard == list(range(standard[0], standard[-1] + 1))  # one contiguous passage
    areas = (masks > 127).sum(axis=(1, 2, 3))
    assert areas[best] == pytest.approx(areas.max(), rel=0.1)


def test_train_resume_export_and_challenge_csv(tmp_path):
    args = fetalnet_train_args(tmp_path, "fn", 12, "train.epochs=2", "train.batch_size=4")
    data = tmp_path / "hc18"
    assert main(args) == 0
    run = tmp_path / "runs" / "fn"
    card = read_json(run / "model_card.json")
    assert card["task"] == "segmentation" and card["labels"] == list(PLANE_LABELS)
    assert card["postprocessing"]["chosen_on"] == "val" and card["postprocessing"]["n"] == 3
    results = read_json(run / "results.json")
    assert {"dice", "iou", "hausdorff_mm"} <= set(results["metrics"]) and results["n"] == len(results["items"])
    history = list(csv.DictReader((run / "history.csv").open()))
    assert len(history) == 2 and "val_dice" in history[0]
    # Rerunning the finished command resumes from its checkpoints instead of training again.
    assert main(args) == 0
    assert read_json(run / "checkpoints" / "phase1" / "state.json")["epoch"] == 1
    assert main(["export", "--model", str(run), "--quant", "int8"]) == 0
    int8_card = read_json(run / "exports" / "int8" / "model_card.json")
    assert "dice" in int8_card["metrics"]["test"]  # the .tflite's own Dice, from the split's masks
    out = tmp_path / "ellipses.csv"
    assert main(["evaluate", "--model", str(run / "exports" / "int8" / "model.tflite"), "--data", f"hc18:{data}",
                 "--hc18-csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and list(rows[0]) == ["filename", "center_x_mm", "center_y_mm", "semi_axes_a_mm",
                                                 "semi_axes_b_mm", "angle_rad"]
    page = tmp_path / "report" / "index.html"
    assert main(["report", "--runs", str(tmp_path / "runs"), "--out", str(page)]) == 0
    assert 'href="runs/fn.html"' in page.read_text() and "latency against dice" in page.read_text()
    html = (tmp_path / "report" / "runs" / "fn.html").read_text()
    assert "head circumference agreement of fn" in html and "best, median and worst segmentations of fn" in html
    assert "<th>dice on test (TFLite)</th>" in html and "<th>dice on validation (choose here)</th>" in html
    assert "Post-processing chosen on validation" in html


def test_challenge_rows_are_in_millimetres():
    from fpc_keras.data.hc18 import challenge_rows

    rows = challenge_rows([{"source": "/x/001_HC.png", "pixel_mm": 0.1, "ellipse": [100, 80, 60, 45, 0.25]},
                           {"source": "/x/002_HC.png", "pixel_mm": 0.1, "ellipse": None}])
    assert rows[0]["filename"] == "001_HC.png"
    assert (rows[0]["center_x_mm"], rows[0]["center_y_mm"]) == pytest.approx((10.0, 8.0))
    assert (rows[0]["semi_axes_a_mm"], rows[0]["semi_axes_b_mm"], rows[0]["angle_rad"]) == pytest.approx((6, 4.5, .25))
    assert rows[1]["center_x_mm"] == ""  # no ellipse found: an empty row, scored as a failure
    assert not math.isnan(rows[0]["angle_rad"])


def test_video_model_trains_on_sweeps_and_is_evaluated_on_them(tmp_path):
    assert main(fetalnet_train_args(tmp_path, "fnv", 6, "data.clip_length=4", "model.temporal=convlstm",
                                    "train.epochs=1", "train.batch_size=2")) == 0
    run = tmp_path / "runs" / "fnv"
    card = read_json(run / "model_card.json")
    assert card["preprocessing"]["clip_length"] == 4 and card["input"]["shape"] == [1, 4, 32, 32, 3]
    metrics = read_json(run / "results.json")["metrics"]
    assert {"sweep_dice", "plane_accuracy", "best_frame_within_1", "best_frame_error"} <= set(metrics)
    assert main(["export", "--model", str(run), "--quant", "fp32"]) == 0
    tflite_metrics = read_json(run / "exports" / "fp32" / "model_card.json")["metrics"]["test"]
    assert tflite_metrics["sweep_dice"]["value"] == pytest.approx(metrics["sweep_dice"]["value"], abs=1e-3)
