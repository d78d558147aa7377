"""tflite/run.py, the edge runner, where TensorFlow cannot be imported: its predictions are the Keras model's, its
errors one line, its latency recorded on the card; and in a fresh virtual environment from tflite/requirements.txt."""
import json
import shutil
import subprocess

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, RUNNER, run_blocked
from fpc_keras.io import read_json
from fpc_keras.litert import cpu_name


def test_tflite_runner_needs_no_tensorflow(trained, exported, tmp_path):
    """tflite/run.py with TensorFlow, Keras and pandas (and, for a classifier, scipy) made unimportable gives the
    evaluator's predictions."""
    images = sorted((trained["data"] / "gamma").glob("*.png"))[:3]
    tflite = exported["fp32"] / "model.tflite"
    done = run_blocked(tmp_path, "--model", tflite, "--json", "--top", "3", *images, also_blocked=("scipy",))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert [line["input"] for line in lines] == [str(p) for p in images]
    model = keras.saving.load_model(trained["run"] / "model.keras")
    from fpc_keras.data.images import ImageSpec
    for line, image in zip(lines, images):
        expected = np.asarray(model(ImageSpec((32, 32), 3, "pad").load(str(image))[None].astype("float32")))[0]
        got = {t["label"]: t["probability"] for t in line["top"]}
        assert got == pytest.approx(dict(zip(["alpha", "beta", "gamma"], expected.tolist())), abs=1e-4)
    maps = run_blocked(tmp_path, "--model", tflite, "--overlays", tmp_path / "maps", images[0],
                       also_blocked=("scipy",))  # occlusion: forward passes only, so without TensorFlow too
    assert maps.returncode == 0, maps.stderr[-2000:]
    drawn = Image.open(tmp_path / "maps" / f"{images[0].stem}_occlusion.png")
    assert drawn.size == Image.open(images[0]).size and np.asarray(drawn).std() > 0
    bad = run_blocked(tmp_path, "--model", tflite, tmp_path / "missing.png", also_blocked=("scipy",))
    assert bad.returncode == 2 and "input not found" in bad.stderr and "Traceback" not in bad.stderr
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    stops = run_blocked(tmp_path, "--model", tflite, broken, images[0], also_blocked=("scipy",))
    assert stops.returncode == 2 and str(broken) in stops.stderr and "--on-bad-input skip" in stops.stderr
    assert not stops.stdout.strip()  # the first input stopped the run
    goes_on = run_blocked(tmp_path, "--model", tflite, "--on-bad-input", "skip", "--json", broken, images[0],
                          also_blocked=("scipy",))
    assert goes_on.returncode == 0, goes_on.stderr[-2000:]
    assert [json.loads(line)["input"] for line in goes_on.stdout.strip().splitlines()] == [str(images[0])]
    assert f"skipped {broken}" in goes_on.stderr and "1 unreadable input(s) skipped" in goes_on.stderr
    model = tmp_path / "timed" / "model.tflite"
    shutil.copytree(exported["fp32"], model.parent)
    timing = run_blocked(tmp_path, "--model", model, "--threads", "1", "--latency", "7", "--record", "--json",
                         also_blocked=("scipy",))
    assert timing.returncode == 0, timing.stderr[-2000:]
    measured = json.loads(timing.stdout.splitlines()[-1])
    assert measured["runs"] == 7 and 0 < measured["median_ms"] <= measured["p90_ms"]
    recorded = read_json(model.parent / "model_card.json")["export"]["latency"]["1_threads"]
    assert recorded == {key: measured[key] for key in recorded} and recorded["cpu"] == cpu_name()


def test_tflite_runner_in_a_virtual_environment_without_tensorflow(trained, exported, tmp_path):
    """What a Jetson / Raspberry Pi user does: a fresh venv with tflite/requirements.txt only, then run.py."""
    import venv

    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r",
                              str(REPO / "tflite" / "requirements.txt")], capture_output=True, text=True, timeout=600)
    if install.returncode:
        pytest.skip(f"cannot install tflite/requirements.txt from the package index: {install.stderr[-300:]}")
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('tensorflow'))"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "None"  # the runner really has no TensorFlow to fall back on
    image = sorted((trained["data"] / "beta").glob("*.png"))[0]
    done = subprocess.run([str(python), str(RUNNER), "--model",
                           str(exported["int8"] / "model.tflite"), "--threads", "1", "--json", str(image)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[0])
    assert result["input"] == str(image) and {t["label"] for t in result["top"]} <= {"alpha", "beta", "gamma"}
