"""The model card: everything evaluation, export and the edge runner need to use a model, in one JSON file
beside it (`model_card.json`): labels, label rule, input spec and preprocessing, task, metrics, provenance."""
from __future__ import annotations

import datetime
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .errors import BadInputError
from .io import atomic_write_json, read_json
from .tasks import TASKS

CARD_NAME = "model_card.json"
PACKAGES = ("tensorflow", "keras", "numpy", "pillow", "ai-edge-litert", "tensorflow-model-optimization",
            "tf-keras-vis", "pandas")


def make_card(name: str, task: str, labels: list[str], image_size: tuple[int, int], channels: int, resize: str,
              label_rule: dict, model: dict, params: dict, training: dict) -> dict:
    height, width = image_size
    return {
        "name": name,
        "task": task,
        "labels": list(labels),
        "label_rule": label_rule,
        "input": {"shape": [1, height, width, 3 if channels == 3 else channels], "dtype": "float32",
                  "value_range": [0, 255], "layout": "NHWC", "channels": "RGB" if channels == 3 else "gray"},
        "preprocessing": {"image_size": [height, width], "channels": channels, "resize": resize,
                          "note": "decode, convert to RGB (gray copied to 3 channels), resize bilinearly by `resize` "
                                  "(pad: keep aspect, black bars, centred; crop: keep aspect, centre crop; stretch; "
                                  "stretch_crop: stretch to size/0.875, centre crop), float 0-255; the model "
                                  "normalises internally"},
        "output": TASKS[task].output,
        "model": model,
        "params": params,
        "training": training,
        "metrics": {},
        "provenance": provenance(),
    }


def provenance() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {"versions": versions, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def card_path_for(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return (model_path if model_path.is_dir() else model_path.parent) / CARD_NAME


def read_card(model_path: str | Path) -> dict:
    path = card_path_for(model_path)
    if not path.is_file():
        raise BadInputError(f"no {CARD_NAME} beside {model_path}",
                            "keep the model card that training/export wrote next to the model file")
    return read_json(path)


def write_card(folder: str | Path, card: dict) -> Path:
    path = Path(folder) / CARD_NAME
    atomic_write_json(path, card)
    return path
