"""The command line on the tiny trained model: help, a quiet start, the version, one clear line per error, and
Grad-CAM overlays."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import write_folder_dataset
from fpc_keras.cli import main
from fpc_keras.io import read_json


def test_cli_help_for_every_command(capsys):
    for command in ("train", "evaluate", "export", "ensemble", "report", "gradcam", "datasets"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert "usage: fpc-keras " + command in capsys.readouterr().out


NOISE = ("I0000", "W0000", "E0000", "absl::", "cuInit", "cuda", "UserWarning", "XNNPACK", "doesn't match")


@pytest.mark.parametrize("model", ["run folder", "int8 tflite"])
def test_evaluate_prints_no_tensorflow_start_up_noise(trained, exported, model, tmp_path):
    """A fresh `fpc-keras evaluate` process writes nothing to stderr: TensorFlow's C++ start-up lines and the
    TFLite delegate line are silenced, and the Keras input-structure warning does not arise."""
    path = trained["run"] if model == "run folder" else exported["int8"] / "model.tflite"
    done = subprocess.run([sys.executable, "-m", "fpc_keras.cli", "evaluate", "--model", str(path), "--data",
                           f"folder:{trained['data']}", "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert done.returncode == 0, done.stderr
    assert "top1" in done.stdout
    assert not [noise for noise in NOISE if noise in done.stderr], done.stderr


def test_version_names_the_package_and_commit(capsys):
    from fpc_keras import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fpc-keras {__version__}") and "commit" in out  # the tests run in a git checkout


def _error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def test_cli_errors_are_one_clear_message(trained, tmp_path, capsys):
    run = str(trained["run"])
    assert "dataset folder not found" in _error_of(["evaluate", "--model", run, "--data",
                                                    f"folder:{tmp_path}/none"], capsys)
    assert "model not found" in _error_of(["evaluate", "--model", str(tmp_path), "--data",
                                           f"folder:{trained['data']}"], capsys)
    other = write_folder_dataset(tmp_path / "other", per_class=2, classes=("alpha", "delta"))
    err = _error_of(["evaluate", "--model", run, "--data", f"folder:{other}"], capsys)
    assert "['delta']" in err and "--alias" in err
    assert main(["evaluate", "--model", run, "--data", f"folder:{other}", "--alias", "delta=beta"]) == 0


def test_corrupt_image_error_and_skip(trained, tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data", per_class=3)
    bad = data / "beta" / "broken scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    err = _error_of(["evaluate", "--model", str(trained["run"]), "--data", f"folder:{data}"], capsys)
    assert str(bad) in err and "--on-bad-input skip" in err and err.count("\n") <= 3
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(trained["run"]), "--data", f"folder:{data}", "--on-bad-input", "skip",
                 "--out", str(out)]) == 0
    results = read_json(out)
    assert results["n"] == 9 and results["n_skipped"] == 1 and str(bad) in results["skipped"]


def test_datasets_command(folder_dataset, capsys):
    assert main(["datasets", f"folder:{folder_dataset}"]) == 0
    out = capsys.readouterr().out
    assert "36 items" in out and "test" in out


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam"])
def test_gradcam_overlay(trained, tmp_path, capsys, method):
    image = next((trained["data"] / "beta").glob("*.png"))
    out = tmp_path / "cam.png"
    assert main(["gradcam", "--model", str(trained["run"]), "--image", str(image), "--out", str(out),
                 "--method", method, "--class", "gamma"]) == 0
    assert Image.open(out).size == Image.open(image).size
    assert np.asarray(Image.open(out)).std() > 0
    assert f"{method} for class gamma" in capsys.readouterr().out


def test_occlusion_explains_an_int8_tflite_model_and_the_cams_refuse_one(trained, exported, tmp_path, capsys):
    image = next((trained["data"] / "beta").glob("*.png"))
    tflite = exported["int8"] / "model.tflite"
    out = tmp_path / "occlusion.png"
    assert main(["gradcam", "--model", str(tflite), "--image", str(image), "--out", str(out),
                 "--method", "occlusion"]) == 0
    assert Image.open(out).size == Image.open(image).size and np.asarray(Image.open(out)).std() > 0
    assert "occlusion for class" in capsys.readouterr().out
    assert main(["gradcam", "--model", str(tflite), "--image", str(image), "--out", str(out)]) == 2
    assert "use --method occlusion" in capsys.readouterr().err
    for model, drawn in ((tflite, "occlusion"), (trained["run"], "gradcam")):  # predict --overlays: the same maps
        assert main(["predict", "--model", str(model), "--input", str(image), "--out", str(tmp_path / "p.csv"),
                     "--overlays", str(tmp_path / drawn)]) == 0
        assert Image.open(tmp_path / drawn / f"{image.stem}_{drawn}.png").size == Image.open(image).size


def test_heatmap_follows_the_evidence():
    """Red evidence top-left, green distractor bottom-right; the class-1 score reads only the red channel:
    Grad-CAM must light up the red region, not the green one."""
    from fpc_keras.explain import heatmap
    from fpc_keras.models.backbones import FEATURES_LAYER

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Identity(name=FEATURES_LAYER)(keras.layers.AveragePooling2D(8)(inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda t: t[:, :, :, :1])(features))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(pooled)))
    dense.set_weights([np.array([[-0.01, 0.01]], np.float32), np.zeros(2, np.float32)])
    image = np.zeros((32, 32, 3), np.float32)
    image[:16, :16, 0] = 200
    image[16:, 16:, 1] = 200
    cam = heatmap(model, image, 1, "gradcam")
    assert cam[:16, :16].mean() > 2 * cam[16:, 16:].mean()


def test_evaluate_help_names_every_dataset_kind():
    from fpc_keras.cli import build_parser
    from fpc_keras.data.datasets import KINDS

    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    data_help = next(a.help for a in evaluate._actions if "--data" in a.option_strings)
    assert all(f"{kind}:" in data_help for kind in KINDS), data_help
