"""The model card: everything evaluation, export and the edge runner need to use a model, in one JSON file
beside it (`model_card.json`): labels, label rule, typed inputs and outputs, preprocessing, task, metrics,
provenance; and, shaped after MONAI bundles' metadata, the schema version, the model's version with a changelog,
its intended use, the paper it reproduces and its training data's source and licence. `card_schema.json` beside
this module is the schema every shipped card is checked against (tests/test_cards.py)."""
from __future__ import annotations

import datetime
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .data.sources import data_source
from .postprocess import CANDIDATES
from .errors import BadInputError
from .io import atomic_write_json, read_json

CARD_NAME = "model_card.json"
SCHEMA = Path(__file__).resolve().parent / "card_schema.json"
SCHEMA_VERSION = "1.0"
INTENDED_USE = "research; not for diagnosis"
ORDER = ("schema_version", "name", "version", "changelog", "task", "intended_use", "references", "labels", "label_rule",
         "input", "preprocessing", "outputs", "model", "params", "training", "metrics", "provenance",
         "postprocessing", "export")  # the order of a card's sections, as make_card writes them
PACKAGES = ("tensorflow", "keras", "numpy", "pillow", "ai-edge-litert", "tensorflow-model-optimization",
            "tf-keras-vis", "pandas")


def make_card(name: str, task: str, labels: list[str], image_size: tuple[int, int], channels: int, resize: str,
              label_rule: dict, model: dict, params: dict, training: dict, outputs: list[dict] | None = None) -> dict:
    """A new model's card (version 1.0.0). `training["data"]` (KIND:PATH) is recorded relative to its root, with
    the dataset's source and licence; `outputs` (typed, `typed_outputs`) default to one probability vector."""
    height, width = image_size
    if "data" in training:
        training = with_data_source(training)
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": "1.0.0",
        "changelog": [{"version": "1.0.0", "change": "trained", "date": _today()}],
        "task": task,
        "intended_use": INTENDED_USE,
        "references": references(model.get("name", "")),
        "labels": list(labels),
        "label_rule": label_rule,
        "input": {"shape": [1, height, width, 3 if channels == 3 else channels], "dtype": "float32",
                  "value_range": [0, 255], "layout": "NHWC", "channels": "RGB" if channels == 3 else "gray"},
        "preprocessing": {"image_size": [height, width], "channels": channels, "resize": resize,
                          "note": "decode, convert to RGB (gray copied to 3 channels), resize bilinearly by `resize` "
                                  "(pad: keep aspect, black bars, centred; crop: keep aspect, centre crop; stretch; "
                                  "stretch_crop: stretch to size/0.875, centre crop), float 0-255; the model "
                                  "normalises internally"},
        "outputs": outputs or [probabilities_output(len(labels), labels)],
        "model": model,
        "params": params,
        "training": training,
        "metrics": {},
        "provenance": provenance(),
    }


def probabilities_output(classes: int, labels: list[str], leading: tuple[int, ...] = (1,)) -> dict:
    return {"name": "probabilities", "shape": [*leading, classes], "dtype": "float32",
            "meaning": "softmax probabilities over `labels`", "labels": list(labels)}


def typed_outputs(shapes: list[tuple], labels: list[str], segmenter: bool) -> list[dict]:
    """The card's `outputs` from the model's output shapes (batch first, set to 1): a segmenter's mask (one
    channel: the head) and plane classifier, or a classifier's probabilities."""
    shapes = [[1, *shape[1:]] for shape in shapes]
    if not segmenter:
        return [probabilities_output(shapes[0][-1], labels, tuple(shapes[0][:-1]))]
    return [{"name": "mask", "shape": shapes[0], "dtype": "float32", "channels": ["head"],
             "meaning": "per-pixel probability of the head (sigmoid); the card's `postprocessing` makes it a mask"},
            {**probabilities_output(shapes[1][-1], labels, tuple(shapes[1][:-1])), "name": "plane",
             "meaning": "softmax over the plane classes (`labels`)"}]


def references(model_name: str) -> list[dict]:
    """The paper a model reproduces (report/papers.py), as the card cites it."""
    from .report.papers import PAPERS

    paper = PAPERS.get(model_name)
    if not paper:
        return []
    return [{"citation": paper["title"], **{k: paper[k] for k in ("doi", "arxiv") if k in paper}}]


def with_data_source(training: dict) -> dict:
    """The card's training section with `data` (KIND:PATH) relative to its root and `data_source` beside it."""
    data = data_source(training["data"])
    return {**training, "data": data["path"], "data_source": data}


def _today() -> str:
    return datetime.date.today().isoformat()


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


def succeeding(card: dict, previous: dict) -> dict:
    """`card` as the next major version of the model it replaces at a shipped location (`previous`, that model's
    card): its changelog continues the previous one, so a deployed model's card says what it replaced and when."""
    major = int(str(previous.get("version", "1.0.0")).split(".")[0]) + 1
    version = f"{major}.0.0"
    change = f"replaced {previous.get('name', 'the previous model')} with {card['name']}"
    return {**card, "version": version,
            "changelog": [*previous.get("changelog", []), {"version": version, "change": change, "date": _today()}]}


def upgrade_card(card: dict, output_shapes: list[tuple]) -> tuple[dict, list | None]:
    """A card written before schema 1.0, in schema 1.0, the model and its figures unchanged: version 1.0.0 with a
    changelog, intended use, references, typed outputs (`output_shapes`: the model's, primary first), training
    data relative to its root with source and licence. Returns the card and the post-processing candidates it
    carried (None if none), which belong in a file beside it."""
    from .config import section_of

    if card.get("schema_version") == SCHEMA_VERSION:
        return card, None
    trained = str(card.get("provenance", {}).get("date", ""))[:10] or _today()
    upgraded = {"schema_version": SCHEMA_VERSION, "name": card["name"], "version": "1.0.0",
                "changelog": [{"version": "1.0.0", "change": "trained", "date": trained},
                              {"version": "1.0.0", "change": "card upgraded to schema 1.0 (model and figures "
                                                              "unchanged)", "date": _today()}],
                "task": card["task"], "intended_use": INTENDED_USE,
                "references": references(card["model"]["name"])}
    upgraded.update({k: v for k, v in card.items() if k not in upgraded and k != "output"})
    upgraded["outputs"] = typed_outputs(output_shapes, card["labels"], card["task"] == "segmentation")
    upgraded["model"] = section_of(card["model"])
    upgraded["training"] = with_data_source(card["training"])
    upgraded = {key: upgraded[key] for key in sorted(upgraded, key=lambda k: ORDER.index(k) if k in ORDER else 99)}
    candidates = None
    if "postprocessing" in card:
        post = dict(card["postprocessing"])
        candidates = post.pop("candidates", None)
        if candidates is not None:
            post["candidates_file"] = CANDIDATES
        upgraded["postprocessing"] = post
    return upgraded, candidates


def upgrade_beside(model_file: str | Path) -> Path:
    """Upgrade the card beside a `.tflite` (its output shapes read from the file), in place; candidates to a file."""
    from .litert import interpreter_class

    model_file = Path(model_file)
    details = interpreter_class()(model_path=str(model_file)).get_output_details()
    shapes = [tuple(int(n) for n in d["shape"]) for d in sorted(details, key=lambda d: -len(d["shape"]))]
    card, candidates = upgrade_card(read_card(model_file), shapes)
    if candidates is not None:
        atomic_write_json(model_file.parent / CANDIDATES, candidates)
    return write_card(model_file.parent, card)


if __name__ == "__main__":  # python -m fpc_keras.card tflite/models/*/model.tflite
    import sys

    for argument in sys.argv[1:]:
        print(upgrade_beside(argument))
