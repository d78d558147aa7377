"""The evaluator's segmentation (HC18 layout) and video paths, on tiny hand-made models with their cards."""
import keras
import numpy as np
import pytest

from fpc_keras.card import make_card, write_card
from fpc_keras.cli import main
from fpc_keras.io import read_json
from conftest import video_frames, write_gif, write_hc18, write_mp4


def _save(model: keras.Model, folder, task, labels, size, **pre):
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    card = make_card("tiny_" + task, task, labels, size, 3, "pad", {"kind": "x", "aliases": {}}, {}, {}, {})
    card["preprocessing"].update(pre)
    write_card(folder, card)
    return folder


def _threshold_segmenter(size):
    """Bright pixels are 'head': sigmoid((mean(rgb) - 128) / 2), a model whose output is known exactly."""
    inputs = keras.Input((*size, 3))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((1, 1, 3, 1), 0.5 / 3, np.float32), np.array([-64.0], np.float32)])
    return model


def test_segmentation_metrics_on_hc18_layout(tmp_path):
    model_dir = _save(_threshold_segmenter((64, 64)), tmp_path / "seg", "segmentation", [], (64, 64))
    data = write_hc18(tmp_path / "hc18")
    out = tmp_path / "seg.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", f"hc18:{data}", "--out", str(out)]) == 0
    metrics = read_json(out)["metrics"]
    assert metrics["dice"]["value"] > 0.95 and metrics["iou"]["value"] > 0.9
    assert metrics["hc_mad_mm"]["value"] < 1.5  # a 64x64 model grid, mapped back to 200x160 pixels of 0.1 mm


def _soft_segmenter(size):
    """A segmenter whose soft edge spills outward: at threshold 0.5 its masks are too large."""
    model = _threshold_segmenter(size)
    model.layers[-1].set_weights([np.full((1, 1, 3, 1), 1 / 122, np.float32), np.array([-1.4], np.float32)])
    return model


def test_postprocessing_is_chosen_on_validation_and_followed_by_the_evaluator(tmp_path):
    from fpc_keras.data.hc18 import read_hc18
    from fpc_keras.evaluate import choose_postprocessing, evaluate, load_predictor

    model_dir = _save(_soft_segmenter((64, 64)), tmp_path / "seg", "segmentation", [], (64, 64))
    records = read_hc18(write_hc18(tmp_path / "hc18"))
    predictor = load_predictor(model_dir)
    default = evaluate(predictor, records, "hc18:x", None, progress=lambda m: None)["metrics"]
    chosen = choose_postprocessing(predictor, records, progress=lambda m: None)
    assert chosen["criterion"] == "hc_mad_mm" and chosen["threshold"] > 0.5 and len(chosen["candidates"]) == 36
    # Both shapes share the ellipse, so the HC error; the shape is then chosen by Dice.
    pair = [row for row in chosen["candidates"]
            if (row["threshold"], row["flip"]) == (chosen["threshold"], chosen["flip"])]
    assert {row["shape"] for row in pair} == {"mask", "ellipse"} and pair[0]["hc_mad_mm"] == pair[1]["hc_mad_mm"]
    assert chosen["shape"] == max(pair, key=lambda row: row["dice"])["shape"]
    predictor.card["postprocessing"] = chosen
    after = evaluate(predictor, records, "hc18:x", None, progress=lambda m: None)["metrics"]
    assert after["hc_mad_mm"]["value"] < default["hc_mad_mm"]["value"]
    assert after["bland_altman"]["bias_mm"] < default["bland_altman"]["bias_mm"]


def test_postprocess_command_rechooses_on_validation_and_rewrites_the_card(tmp_path, capsys):
    """`fpc-keras postprocess`: a model whose card has the default post-processing (threshold 0.5, masks that
    spill outward) gets one chosen on its validation split (by its card's split rule); the card's test metrics and
    the run's results.json are those the evaluator now gives, the Keras-under-old-settings metrics dropped."""
    model_dir = _save(_soft_segmenter((64, 64)), tmp_path / "seg", "segmentation", [], (64, 64))
    card = read_json(model_dir / "model_card.json")
    card["training"]["split_rule"] = {"val_fraction": 0.25, "test_fraction": 0.25, "seed": 0}
    card["metrics"] = {"keras_test": {"dice": {"value": 0.5}}}
    write_card(model_dir, card)
    (model_dir / "results.json").write_text('{"timings": {"train_seconds": 12.0}, "phases": {"phase1": {}}}')
    data = f"hc18:{write_hc18(tmp_path / 'hc18', count=8)}"
    before = tmp_path / "before.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", data, "--split", "test", "--out", str(before)]) == 0
    assert main(["postprocess", "--model", str(model_dir), "--data", data]) == 0
    card, results = read_json(model_dir / "model_card.json"), read_json(model_dir / "results.json")
    post = card["postprocessing"]
    assert post["chosen_on"] == "val" and post["n"] == 2 and post["threshold"] > 0.5
    assert post["previous"] == {"threshold": 0.5, "flip": False, "shape": "mask"} and "keras_test" not in card["metrics"]
    old, new = read_json(before)["metrics"]["hc_mad_mm"]["value"], card["metrics"]["test"]["hc_mad_mm"]["value"]
    assert new < old and card["metrics"]["n_test"] == 2
    assert results["metrics"] == card["metrics"]["test"] and results["timings"]["train_seconds"] == 12.0
    after = tmp_path / "after.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", data, "--split", "test", "--out", str(after)]) == 0
    assert read_json(after)["metrics"]["hc_mad_mm"]["value"] == pytest.approx(new)


def test_postprocess_command_refuses_a_classifier(tmp_path, folder_dataset, capsys):
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)))
    model_dir = _save(model, tmp_path / "cls", "classification", ["a", "b"], (16, 16))
    assert main(["postprocess", "--model", str(model_dir), "--data", f"folder:{folder_dataset}"]) == 2
    assert "only frame segmenters have post-processing" in capsys.readouterr().err


def test_the_ellipse_shape_fills_the_fitted_ellipse_and_keeps_the_circumference():
    """A head mask with a ragged edge and a bite out of it: delivered as its fitted ellipse, it overlaps the true
    ellipse better; the ellipse (so the HC) is the one the plain mask gives."""
    from fpc_keras.biometry import Ellipse, ellipse_mask
    from fpc_keras.metrics import dice_iou
    from fpc_keras.postprocess import segment

    truth = ellipse_mask((120, 160), Ellipse(80.0, 60.0, 50.0, 35.0, 0.3))
    ragged = truth ^ (np.random.default_rng(0).random(truth.shape) < 0.25) & (truth ^ np.roll(truth, 2, axis=1))
    ragged[55:65, 125:135] = False  # a bite out of the edge
    probs = ragged.astype(np.float32)[..., None]
    mask, ellipse = segment(probs, truth.shape, "stretch", 0.5)
    filled, same = segment(probs, truth.shape, "stretch", 0.5, "ellipse")
    np.testing.assert_array_equal(mask, ragged)
    assert same == ellipse and abs(ellipse.circumference / Ellipse(80, 60, 50, 35, 0.3).circumference - 1) < 0.01
    assert dice_iou(filled, truth)[0] > dice_iou(mask, truth)[0] + 0.003  # 0.9947 against 0.9907
    with pytest.raises(ValueError, match="shape"):
        segment(probs, truth.shape, "stretch", 0.5, "convex")


def test_mirrored_averaging_mirrors_back():
    from fpc_keras.postprocess import mask_probabilities

    batch = np.zeros((1, 4, 6, 1), np.float32)
    right_half = lambda x: np.broadcast_to((np.arange(6) >= 3).astype(np.float32)[None, None, :, None], x.shape)
    np.testing.assert_allclose(mask_probabilities(right_half, batch, flip=True)[0, 0, :, 0], 0.5)
    keeps = lambda x: x
    ramp = np.arange(6, dtype=np.float32)[None, None, :, None] * np.ones((1, 4, 6, 1), np.float32)
    np.testing.assert_allclose(mask_probabilities(keeps, ramp, flip=True), ramp)


def test_segmentation_model_refuses_classification_data(tmp_path, folder_dataset, capsys):
    model_dir = _save(_threshold_segmenter((32, 32)), tmp_path / "seg", "segmentation", [], (32, 32))
    assert main(["evaluate", "--model", str(model_dir), "--data", f"folder:{folder_dataset}"]) == 2
    assert "segmentation model" in capsys.readouterr().err


@pytest.mark.parametrize("clip_length", [1, 4])
def test_video_top1_with_frame_and_clip_models(tmp_path, clip_length):
    """A model that calls a video 'bright' when its mean intensity is high: video_top1 must be 1."""
    shape = (16, 16, 3) if clip_length == 1 else (clip_length, 16, 16, 3)
    inputs = keras.Input(shape)
    pooled = (keras.layers.GlobalAveragePooling2D() if clip_length == 1 else keras.layers.GlobalAveragePooling3D())(inputs)
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(pooled))
    per_channel = np.array([[1, -1]] * 3, np.float32) / 30  # logits (mean - 60) / 10 and (60 - mean) / 10
    dense.set_weights([per_channel, np.array([-6, 6], np.float32)])
    model_dir = _save(model, tmp_path / "vid", "video", ["bright", "dark"], (16, 16), clip_length=clip_length,
                      clips_per_video=3)
    data = tmp_path / "videos"
    data.mkdir()
    for i in range(2):
        write_mp4(data / f"dark_{i}.mp4", video_frames(8) // 8)
        bright = video_frames(8)
        bright[..., :] = np.maximum(bright, 200)
        write_gif(data / f"bright-{i}.gif", bright)
    out = tmp_path / "v.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", f"videos:{data}", "--out", str(out)]) == 0
    results = read_json(out)
    assert results["n"] == 4 and results["metrics"]["video_top1"]["value"] == 1.0
