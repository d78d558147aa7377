"""Grad-CAM, Grad-CAM++ and Score-CAM (tf-keras-vis) on the backbone's feature map, and occlusion sensitivity
(`saliency.py`, for .tflite models too), saved as overlays.

The backbone's layers live in the classifier's own graph, ending in `backbone_features`, so tf-keras-vis can
reach that feature map without the "Graph disconnected" error of nested backbones.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from PIL import Image

from .card import read_card
from .data.images import ImageSpec, read_image, unfit_image
from .errors import BadInputError
from .io import atomic_path
from .models.backbones import FEATURES_LAYER
from .saliency import occlusion_map, overlay
from .tasks import task_of_card

CAMS = ("gradcam", "gradcam++", "scorecam")  # need the Keras model
METHODS = (*CAMS, "occlusion")


def heatmap(model: keras.Model, image: np.ndarray, class_index: int, method: str = "gradcam") -> np.ndarray:
    """A class-activation map in [0, 1] at the model's input size for one image (HxWx3 float 0-255)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

    kinds = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "scorecam": Scorecam}
    if method not in kinds:
        raise BadInputError(f"unknown class-activation method {method!r}", f"use one of: {', '.join(CAMS)}")
    names = {layer.name for layer in model.layers}
    if FEATURES_LAYER not in names:
        raise BadInputError(f"model {model.name} has no `{FEATURES_LAYER}` layer", "explain models built by fpc_keras")
    explainer = kinds[method](model, clone=False)
    options = {"max_N": 32} if method == "scorecam" else {}
    # seek_penultimate_conv_layer=False: use `backbone_features` itself, not the nearest Conv2D before it
    # (for EfficientNet that would be top_conv, ahead of its batch norm and activation).
    cam = explainer(CategoricalScore([class_index]), image[None].astype(np.float32),
                    penultimate_layer=FEATURES_LAYER, seek_penultimate_conv_layer=False, **options)
    cam = np.nan_to_num(np.asarray(cam[0], dtype=np.float32))
    span = cam.max() - cam.min()
    return (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)


def explain_file(model_path: str | Path, image_path: str, out: str | Path, method: str = "gradcam",
                 class_name: str | None = None) -> dict:
    """Explain one image with a run folder, .keras or (occlusion only) .tflite model; writes the overlay PNG at the
    original size."""
    from .evaluate import load_predictor

    if method not in METHODS:
        raise BadInputError(f"unknown explanation method {method!r}", f"use one of: {', '.join(METHODS)}")
    predictor = load_predictor(model_path)
    if method != "occlusion" and not predictor.path.endswith(".keras"):
        raise BadInputError(f"{method} needs the Keras model (run folder or .keras), not a .tflite file",
                            "give the run folder the .tflite was exported from, or use --method occlusion")
    if task_of_card(predictor.card).name != "classification":
        raise BadInputError(f"{model_path} is a {predictor.task} model", "explain an image classifier")
    spec = predictor.image_spec()
    x = spec.load(image_path).astype(np.float32)
    probs = np.asarray(predictor.predict(x[None]))[0]
    labels = predictor.labels
    if class_name is not None and class_name not in labels:
        raise BadInputError(f"class {class_name!r} is not one of the model's {labels}", "pick one of those")
    target = labels.index(class_name) if class_name else int(probs.argmax())
    if method == "occlusion":
        cam = occlusion_map(predictor.predict, x, target)
    else:
        from . import models  # noqa: F401

        cam = heatmap(keras.saving.load_model(predictor.path, compile=False), x, target, method)
    original = read_image(image_path, 3)
    cam_full = np.clip(unfit_image(cam, original.shape[:2], spec.resize), 0, 1)
    with atomic_path(out, suffix=".png") as tmp:
        Image.fromarray(overlay(original, cam_full)).save(tmp, format="PNG")
    return {"image": image_path, "class": labels[target], "probability": float(probs[target]),
            "predicted": labels[int(probs.argmax())], "method": method, "out": str(out)}


def class_montage(run_dir: str | Path, out: str | Path, method: str = "gradcam") -> Path | None:
    """Grad-CAM per class of a classification run: the first test image of each class (splits.csv order), its
    map for the true class, titled with the model's prediction; one PNG row. None for other tasks or runs whose
    test images are not on this machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .export import train_records

    run_dir = Path(run_dir)
    card = read_card(run_dir / "model.keras")
    labels = card["labels"]
    if task_of_card(card).name != "classification":
        return None
    test = [r for r in train_records(run_dir) if r.split == "test" and Path(r.source).is_file()]
    chosen = [next((r for r in test if r.label == label), None) for label in labels]
    if not any(chosen):
        return None
    from . import models  # noqa: F401

    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    spec = ImageSpec.from_card(card)
    figure, axes = plt.subplots(1, len(labels), figsize=(2.2 * len(labels), 2.6), squeeze=False)
    for axis, label, record in zip(axes[0], labels, chosen):
        axis.axis("off")
        if record is None:
            axis.set_title(f"{label}: no test image", fontsize=7)
            continue
        x = spec.load(record.source).astype(np.float32)
        probs = np.asarray(model(x[None], training=False))[0]
        cam = heatmap(model, x, labels.index(label), method)
        axis.imshow(overlay(np.clip(x, 0, 255).astype(np.uint8), cam))
        predicted = labels[int(probs.argmax())]
        axis.set_title(f"true {label}\npredicted {predicted} ({probs.max():.2f})", fontsize=7,
                       color="black" if predicted == label else "firebrick")
    with atomic_path(out, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return Path(out)
