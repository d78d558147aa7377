"""Shared fixtures and helpers: generated tiny datasets (32x32 images, videos, an HC18-layout folder), the real data
in ../shared/data (marked `realdata`), and the edge runner launched where TensorFlow cannot be imported."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FPC_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLE = REPO / "samples" / "busi_small"
RUNNER = REPO / "tflite" / "run.py"


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA} (set FPC_SHARED_DATA to its folder)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


def blob_image(label: int, rng: np.random.Generator, size: int = 32, jitter: float = 0.0) -> np.ndarray:
    """A gray image whose bright blob position depends on the class: learnable in a few epochs. `jitter` moves
    the blob by up to that fraction of the side and varies its radius."""
    image = rng.normal(60, 20, (size, size)).clip(0, 255)
    yy, xx = np.mgrid[0:size, 0:size]
    cx, cy = [(size * 0.3, size * 0.3), (size * 0.7, size * 0.7), (size * 0.3, size * 0.7)][label % 3]
    radius = size * 0.18
    if jitter:
        cx, cy = cx + rng.uniform(-jitter, jitter) * size, cy + rng.uniform(-jitter, jitter) * size
        radius *= rng.uniform(0.85, 1.15)
    image[(xx - cx) ** 2 + (yy - cy) ** 2 < radius ** 2] += 150
    return image.clip(0, 255).astype(np.uint8)


def class_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A class blob, placed and sized a little differently each time, on a faint smooth background of its own: the
    images of a dataset are distinct scans, not near-duplicates of one another (which the splitter would join into
    one group)."""
    coarse = rng.normal(0, 1, (4, 4)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    return (blob_image(label, rng, size, jitter=0.09) + 10 * texture).clip(0, 255).astype(np.uint8)


def write_folder_dataset(root: Path, per_class: int = 12, classes=("alpha", "beta", "gamma"),
                         size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(class_image(k, rng, size)).save(root / name / f"{name} ({i}).png")
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "folder_data")


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny classifier trained once per test session on a generated 3-class folder dataset (its run folder is
    read-only for the tests that share it). Its backbone starts from the ImageNet EfficientNet-Lite0 weights that a
    package ships: at 32x32 a random backbone gives every image the same features, and the model one output."""
    from fpc_keras.config import load_config
    from fpc_keras.training import train

    root = tmp_path_factory.mktemp("e2e")
    data = write_folder_dataset(root / "data")
    config = load_config(None, trained_overrides(data, root / "runs"))
    run_dir = train(config, progress=lambda m: None)
    return {"root": root, "data": data, "run": run_dir, "config": config}


@pytest.fixture(scope="session")
def exported(trained):
    """The `trained` run exported once per test session (fp32, fp16, int8) and its int8 shipped under
    `trained['root'] / 'shipped'`; returns each variant's export folder."""
    from fpc_keras.cli import main

    assert main(["export", "--model", str(trained["run"]), "--quant", "fp32", "int8", "fp16",
                 "--representative-samples", "8", "--ship", str(trained["root"] / "shipped")]) == 0
    return {v: trained["run"] / "exports" / v for v in ("fp32", "fp16", "int8")}


def trained_overrides(data_path: Path, runs: Path, **extra: str) -> list[str]:
    """The `trained` fixture's config (rerunning it resumes that run)."""
    return tiny_overrides(data_path, runs, **{"model.weights": "imagenet", **extra})


def tiny_overrides(data_path: Path, runs: Path, **extra: str) -> list[str]:
    """A 32x32 EfficientNet-Lite0 (random weights) config: builds in about a second."""
    values = {"name": "tiny", "runs_dir": str(runs), "data.kind": "folder", "data.path": str(data_path),
              "data.image_size": "[32, 32]", "data.val_fraction": "0.25", "data.test_fraction": "0.25",
              "model.weights": "none", "model.head_units": "[16, 8]", "model.attention": "se",
              "train.epochs": "2", "train.batch_size": "8", "train.learning_rate": "0.01",
              "export.representative_samples": "8", "export.latency_runs": "3"}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


# One tiny model per family the suite exports (32x32 inputs, random weights): parity and QAT tests run on each.
# (VGG16's flatten head differs from the multiscale one only after the features; the CaffeNet builder has its
# own fp32 parity test in test_frozen_features.py.)
FAMILIES = {
    "lite_se": ["model.attention=se"],
    "lite_cbam": ["model.attention=cbam"],
    "lite_mhsa": ["model.attention=mhsa"],
    "vgg16_multiscale": ["model.name=frozen_features", "model.backbone=vgg16", "model.pooling=multiscale",
                         "model.attention=none"],
}


def family_model(family: str, weights: str = "none"):
    from fpc_keras.config import load_config
    from fpc_keras.models import build_model

    config = load_config(None, ["data.image_size=[32, 32]", f"model.weights={weights}", "model.num_classes=3",
                                "model.head_units=[16, 8]", *FAMILIES[family]])
    import keras

    keras.utils.set_random_seed(0)
    model = build_model(config)
    calibrate_batch_norm(model, family_inputs(16, seed=7))
    head = model.get_layer("head")
    rng = np.random.default_rng(0)  # a random classifier, so that the outputs differ per class and per image
    head.get_layer("classifier").set_weights([w + rng.normal(0, 0.3, w.shape)
                                              for w in head.get_layer("classifier").get_weights()])
    return model


def standardised_multiscale_vgg16(images: np.ndarray, classes: int, seed: int = 0):
    """A 32x32 frozen VGG16 multiscale classifier (random weights, linear head) whose `feature_norm` standardises the
    features of `images` with their own statistics, as a trained head does: block3's max-pooled features are about
    20x block5's, which is what the per-depth standardisation of the int8 export is for."""
    import keras

    from fpc_keras.config import load_config
    from fpc_keras.models import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(load_config(None, [
        "model.name=frozen_features", "model.backbone=vgg16", "model.weights=none", f"model.num_classes={classes}",
        "data.image_size=[32, 32]", "model.pooling=multiscale", "model.head_units=[]", "model.dropout=0"]))
    features = keras.Model(model.input, model.get_layer("multiscale_features").output).predict(images, verbose=0)
    norm = model.get_layer("head").get_layer("feature_norm")
    norm.set_weights([*norm.get_weights()[:2], features.mean(axis=0), features.var(axis=0) + 1e-6])
    return model


def family_inputs(count: int = 8, seed: int = 1) -> np.ndarray:
    """Images for the family models: the class blobs of `blob_image` (what the models are meant to tell apart)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.repeat(blob_image(i, rng)[..., None], 3, axis=2) for i in range(count)]).astype("float32")


def calibrate_batch_norm(model, images: np.ndarray) -> None:
    """Every BatchNormalization's moving statistics set to those of `images`: a random-weight net whose
    activations neither vanish nor saturate, so its outputs differ per image (with the initial statistics, a
    random EfficientNet-Lite gives every image the same probabilities, and a parity check compares constants)."""
    import keras

    norms = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    model(images, training=True)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def video_frames(n=12, h=40, w=56) -> np.ndarray:
    """A bright vertical line moving 4 pixels a frame."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, :, (i * 4) % w] = 255
    return frames


def write_mp4(path, frames):
    import imageio.v3 as iio
    iio.imwrite(path, frames, plugin="FFMPEG", fps=10, codec="libx264", macro_block_size=8)


def write_gif(path, frames):
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100)


def write_hc18(root: Path, count: int = 4) -> Path:
    """An HC18-layout folder of `count` ellipse "heads", their outlines and their circumferences."""
    folder = root / "training_set"
    folder.mkdir(parents=True)
    rows = ["filename,pixel size(mm),head circumference (mm)"]
    for i in range(count):
        a, b = 60 + 5 * i, 45 + 3 * i
        image = Image.new("L", (200, 160))
        ImageDraw.Draw(image).ellipse([100 - a, 80 - b, 100 + a, 80 + b], fill=220)
        image.save(folder / f"{i:03d}_HC.png")
        outline = Image.new("L", (200, 160))
        ImageDraw.Draw(outline).ellipse([100 - a, 80 - b, 100 + a, 80 + b], outline=255)
        outline.save(folder / f"{i:03d}_HC_Annotation.png")
        h = ((a - b) / (a + b)) ** 2
        hc = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h))) * 0.1
        rows.append(f"{i:03d}_HC.png,0.1,{hc:.2f}")
    (root / "training_set_pixel_size_and_HC.csv").write_text("\r\n".join(rows) + "\r\n")
    return root


def fetalnet_train_args(tmp_path, name: str, images: int, *overrides: str) -> list[str]:
    """`fpc-keras train` of a tiny FetalNet on a generated HC18-layout dataset of `images` images."""
    data = tmp_path / "hc18" if (tmp_path / "hc18").exists() else write_hc18(tmp_path / "hc18", count=images)
    values = [f"name={name}", f"runs_dir={tmp_path / 'runs'}", "data.kind=hc18", f"data.path={data}",
              "data.image_size=[32, 32]", "data.val_fraction=0.25", "data.test_fraction=0.25", "model.name=fetalnet",
              "model.backbone=unet", "model.attention=gates", "model.base_filters=4", "model.depth=2",
              "export.representative_samples=4", "export.latency_runs=2", *overrides]
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    return ["train", "--config", str(config), *[a for value in values for a in ("--set", value)]]


BLOCKED = ("tensorflow", "keras", "tf_keras", "pandas", "tensorflow_model_optimization")
BLOCKER = '''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} must not be imported by the edge runner")
sys.meta_path.insert(0, Block())
'''


def run_blocked(tmp_path, *args: str, also_blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """tflite/run.py ARGS in a Python where TensorFlow, Keras, pandas (and `also_blocked`) cannot be imported: a
    sitecustomize.py in `tmp_path` refuses them."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked={*BLOCKED, *also_blocked}))
    return subprocess.run([sys.executable, str(RUNNER), *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)), timeout=120)
