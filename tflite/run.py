"""Run an exported fpc_keras model with nothing but a TFLite interpreter: no TensorFlow.

    python tflite/run.py --model tflite/models/NAME/model.tflite [--threads 2] [--json] INPUT...
    python tflite/run.py --model tflite/models/hc18_fetalnet/model.tflite --pixel-mm 0.12 scan.png

The model card beside the model (`model_card.json`) gives the task, labels, preprocessing and post-processing.
Classifiers print the top classes per image; segmenters print the mask area (the mask, or its fitted ellipse where
the card's post-processing says so) and, with --pixel-mm, the head circumference in mm (ellipse fit); video
classifiers average their clips. Needs numpy, Pillow and ai-edge-litert (or tflite-runtime) from requirements.txt,
scipy for segmenters and imageio[ffmpeg] for videos; it imports the small TF-free modules of fpc_keras from this
repository (or an installed fpc_keras).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if (REPO / "fpc_keras").is_dir() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from fpc_keras.card import read_card  # noqa: E402
from fpc_keras import postprocess  # noqa: E402
from fpc_keras.data.images import ImageSpec, read_image  # noqa: E402
from fpc_keras.errors import BadInputError  # noqa: E402
from fpc_keras.litert import TFLiteModel  # noqa: E402


def classify(model: TFLiteModel, card: dict, source: str, top: int) -> dict:
    image = ImageSpec.from_card(card).load(source).astype(np.float32)
    return _top_classes(card, source, model(image[None])[0], top)


def segment(model: TFLiteModel, card: dict, source: str, pixel_mm: float | None) -> dict:
    spec, post = ImageSpec.from_card(card), postprocess.settings(card)
    probs = postprocess.mask_probabilities(model, spec.load(source).astype(np.float32)[None], post["flip"])[0]
    mask, ellipse = postprocess.segment(probs, read_image(source, 1).shape[:2], spec.resize, post["threshold"],
                                        post["shape"])
    result = {"input": source, "mask_pixels": int(mask.sum())}
    if pixel_mm:
        result["hc_mm"] = None if ellipse is None else round(ellipse.circumference * pixel_mm, 2)
    return result


def classify_video(model: TFLiteModel, card: dict, source: str, top: int) -> dict:
    from fpc_keras.data.video import model_clips, read_video

    pre, spec = card["preprocessing"], ImageSpec.from_card(card)
    frames = read_video(source, spec.size, spec.channels, spec.resize).astype(np.float32)
    batch = model_clips(frames, int(pre.get("clip_length", 1)), int(pre.get("clips_per_video", 4)))
    return _top_classes(card, source, model(batch).mean(axis=0), top)


def _top_classes(card: dict, source: str, probs: np.ndarray, top: int) -> dict:
    order = np.argsort(-probs)[:top]
    return {"input": source, "top": [{"label": card["labels"][i], "probability": float(probs[i])} for i in order]}


def _line(result: dict) -> str:
    if "top" in result:
        return f"{result['input']}: " + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in result["top"])
    hc = f", head circumference {result['hc_mm']} mm" if result.get("hc_mm") is not None else ""
    return f"{result['input']}: mask {result['mask_pixels']} pixels{hc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model.tflite with model_card.json beside it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=2, help="classes to print per input")
    parser.add_argument("--pixel-mm", type=float, help="segmenters: pixel size in mm, for the circumference")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("inputs", nargs="+")
    args = parser.parse_args(argv)
    try:
        card = read_card(args.model)
        model = TFLiteModel(args.model, args.threads)
        for source in args.inputs:
            start = time.perf_counter()
            if card["task"] == "segmentation":
                result = segment(model, card, source, args.pixel_mm)
            elif card["task"] == "video":
                result = classify_video(model, card, source, args.top)
            else:
                result = classify(model, card, source, args.top)
            result["ms"] = round(1000 * (time.perf_counter() - start), 1)
            print(json.dumps(result) if args.json else _line(result), flush=True)
    except BadInputError as exc:
        print(str(exc).replace("[fpc_keras] ", "error: ", 1), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
