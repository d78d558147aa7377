"""kill -9 during feature caching, training and export: rerunning the same command resumes and reaches the same
result, and no half-written file is read as valid. The same config and seed give the same metrics."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpc_keras.io import read_json

REPO = Path(__file__).resolve().parents[1]


def _brightness_dataset(root: Path, per_class: int = 12) -> Path:
    """Three classes told apart by brightness: learnable from ImageNet features of 32x32 images in seconds."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("dark", "mid", "bright")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.normal(30 + 100 * k, 15, (32, 32)).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def _command(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fpc_keras.cli", *args]


def _train_command(tmp_path: Path, name: str, *extra: str) -> list[str]:
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    values = [f"name={name}", f"runs_dir={tmp_path / 'runs'}", "data.kind=folder",
              f"data.path={tmp_path / 'data'}", "data.image_size=[32, 32]", "data.val_fraction=0.25",
              "data.test_fraction=0.25", "model.weights=imagenet", "model.head_units=[16]", "model.batch_norm=false", "model.dropout=0",
              "train.epochs=8",
              "train.batch_size=8", "train.learning_rate=0.003", "train.early_stopping_patience=20",
              "export.representative_samples=4", "export.latency_runs=2", *extra]
    return _command(tmp_path, "train", "--config", str(config), *[a for v in values for a in ("--set", v)])


def _kill_at(command: list[str], marker: str) -> str:
    """Run `command`, SIGKILL it as soon as a line containing `marker` appears; return what it printed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                               env=env)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"{marker!r} never appeared:\n{''.join(seen)[-2000:]}"
    return "".join(seen)


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _outcome(run: Path) -> dict:
    results = read_json(run / "results.json")
    state = read_json(run / "checkpoints" / "phase1" / "state.json")
    return {"metrics": {k: results["metrics"][k]["value"] for k in ("top1", "top2", "macro_f1")},
            "best_epoch": state["best_epoch"], "best_loss": round(state["best_loss"], 6),
            "best_score": round(state["best_score"], 6)}


def _all_json_valid(folder: Path) -> None:
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())


def test_kill_during_caching_and_training_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Bit-for-bit with dropout off: Keras does not checkpoint its dropout RNG, so with dropout on, a resumed run
    draws other masks after the restart and matches only within training noise."""
    _brightness_dataset(tmp_path / "data")
    _run(_train_command(tmp_path, "straight"))
    straight = _outcome(tmp_path / "runs" / "straight")
    assert straight["best_score"] > 0.5  # it learns (chance: 0.33)

    crashed = _train_command(tmp_path, "crashed", f"runs_dir={tmp_path / 'runs2'}")
    _kill_at(crashed, "computing backbone features")  # no cache file may exist half-written
    rows = [p for p in (tmp_path / "runs2").rglob("_feature_cache/*/*.npy") if not p.name.startswith(".")]
    assert len({np.load(path).shape for path in rows}) <= 1  # every row whole (a kill may leave a temporary file)
    _kill_at(crashed, "phase1 epoch 4:")
    state = read_json(tmp_path / "runs2" / "crashed" / "checkpoints" / "phase1" / "state.json")
    assert 2 <= state["epoch"] <= 4 and not state["done"]
    out = _run(crashed)
    assert "features of 18 images from the cache" in out and "resuming from" in out
    assert _outcome(tmp_path / "runs2" / "crashed") == straight
    _all_json_valid(tmp_path / "runs2")

    card = read_json(tmp_path / "runs" / "straight" / "model_card.json")
    assert card["training"]["seed"] == 0 and card["provenance"]["commit"]
    assert {"tensorflow", "keras", "numpy"} <= set(card["provenance"]["versions"])


def test_kill_during_export_then_rerun(tmp_path, trained):
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained["run"]), str(run)], check=True)
    subprocess.run(["rm", "-rf", str(run / "exports")], check=True)
    export = _command(tmp_path, "export", "--model", str(run), "--quant", "int8")
    _kill_at(export, "exporting int8")
    _all_json_valid(run)
    assert not (run / "exports" / "int8" / "model.tflite").exists()
    _run(export)
    card = read_json(run / "exports" / "int8" / "model_card.json")
    assert card["export"]["size_bytes"] == (run / "exports" / "int8" / "model.tflite").stat().st_size
    assert "top1" in card["metrics"]["test"]


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus_matches_one_device(tmp_path):
    """MirroredStrategy over two logical CPU devices (set before TensorFlow starts, so in a child process): the
    same training reaches the single-device validation loss within 0.1 nats."""
    _brightness_dataset(tmp_path / "data", per_class=24)
    script = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from fpc_keras.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    losses = {}
    for strategy in ("default", "mirrored"):  # (batch norm off: its per-replica statistics differ by design)
        command = _train_command(tmp_path, strategy, f"train.strategy={strategy}", "train.epochs=30")
        out = _run([sys.executable, "-c", script, *command[3:]])
        if strategy == "mirrored":
            assert "mirrored strategy over 2 replicas" in out
        history = (tmp_path / "runs" / strategy / "history.csv").read_text().splitlines()
        losses[strategy] = float(history[-1].split(",")[history[0].split(",").index("val_loss")])
    print(f"final validation loss: {losses}")
    assert losses["default"] < 0.8 and abs(losses["mirrored"] - losses["default"]) < 0.1, losses
