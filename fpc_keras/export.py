"""TFLite export: fp32, fp16 weights, dynamic-range int8, full-integer int8 (representative images from the
training split), and quantisation-aware int8 (`qat`: fine-tuned with fake quantisation in a child process,
fpc_keras.qat). Each variant goes to `exports/<variant>/model.tflite` with its model card, which records its
size, latency and its own accuracy on the evaluation split beside the Keras model's, and on the validation split:
variants (PTQ or QAT) are chosen on validation, the evaluation split only reports.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from . import models  # noqa: F401  (registers custom layers)
from .bias_correction import bias_corrected
from .card import read_card, write_card
from .config import QUANT_VARIANTS, ExportConfig
from .data.images import ImageSpec
from .data.records import Record
from .errors import BadInputError
from .evaluate import class_probabilities, evaluate, fidelity, load_predictor, summary_line
from .io import atomic_write_bytes
from .litert import TFLiteModel
from .models.frozen_features import split_feature_norm

Progress = Callable[[str], None]


def convert(model: keras.Model, variant: str, representative: np.ndarray | None = None,
            int8_io: bool = False, bias_correction: bool = True) -> bytes:
    """The `.tflite` bytes of `model` as `variant` (one of QUANT_VARIANTS but qat, which needs a run folder);
    int8 is bias-corrected on the representative images unless `bias_correction` is False."""
    if variant not in QUANT_VARIANTS or variant == "qat":
        raise BadInputError(f"unknown export variant {variant!r}", f"use one of: {', '.join(QUANT_VARIANTS)}")
    if variant == "int8" and bias_correction and representative is not None:
        model, _ = bias_corrected(model, representative)
    return run_converter(tf.lite.TFLiteConverter.from_keras_model(split_feature_norm(model)), variant,
                         representative, int8_io)


def run_converter(converter: tf.lite.TFLiteConverter, variant: str, representative: np.ndarray | None = None,
                  int8_io: bool = False) -> bytes:
    """Set `converter` up for `variant` (fp32, fp16, dynamic, int8) and convert; shared with fpc_keras.qat."""
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        if representative is None or not len(representative):
            raise BadInputError("int8 export needs representative images", "export from a run with a train split")
        converter.representative_dataset = lambda: ([item[None].astype(np.float32)] for item in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints every captured tensor while exporting
        return converter.convert()


def representative_images(records: Sequence[Record], spec: ImageSpec, count: int, seed: int = 0,
                          clip_length: int = 0) -> np.ndarray:
    """Up to `count` training items, chosen at random, as the model sees them: images, or for video classifiers
    (`clip_length` > 0) the middle clip of each video."""
    from .data.video import model_clips, read_video

    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(records))[:count]
    if clip_length:
        return np.stack([model_clips(read_video(records[i].source, spec.size, spec.channels, spec.resize),
                                     clip_length, 1)[0].astype(np.float32) for i in chosen])
    return np.stack([spec.load(records[i].source).astype(np.float32) for i in chosen])


def train_records(run_dir: Path) -> list[Record]:
    path = run_dir / "splits.csv"
    if not path.is_file():
        raise BadInputError(f"{path} not found", "export from a run folder written by `fpc-keras train`")
    with path.open() as handle:
        return [Record(r["source"], r["label"], r["group"], r["split"], json.loads(r.get("extras") or "{}"))
                for r in csv.DictReader(handle)]


def export_run(run_dir: str | Path, variants: Sequence[str] = ("fp32", "int8"), representative_samples: int = 64,
               latency_runs: int = 30, evaluate_split: str = "test", threads: int = 2, int8_io: bool = False,
               qat: tuple[int, float] = (ExportConfig.qat_epochs, ExportConfig.qat_learning_rate),
               bias_correction: bool = ExportConfig.bias_correction, progress: Progress = print) -> dict[str, Path]:
    """Export the run's model as each variant, measure size, latency and accuracy; return variant -> folder."""
    run_dir = Path(run_dir)
    card = read_card(run_dir / "model.keras")
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    records = train_records(run_dir)
    spec = ImageSpec.from_card(card)
    train = [r for r in records if r.split == "train"]
    evaluation = {split: [r for r in records if r.split == split] for split in (evaluate_split, "val")}
    clip_length = int(card["preprocessing"].get("clip_length", 0)) if card["task"] == "video" else 0
    representative = (representative_images(train, spec, representative_samples, clip_length=clip_length)
                      if "int8" in variants else None)
    int8_io = bool(int8_io and "int8" in variants)
    keras_results = card.get("metrics", {}).get(evaluate_split)
    references = _keras_probabilities(run_dir, card, evaluation)
    out = {}
    for variant in variants:
        progress(f"      exporting {variant}")
        folder = run_dir / "exports" / variant
        folder.mkdir(parents=True, exist_ok=True)
        tflite_path = folder / "model.tflite"
        if variant == "qat":
            _quantize_aware(run_dir, tflite_path, *qat, representative_samples)
        else:
            atomic_write_bytes(tflite_path, convert(model, variant, representative, int8_io and variant == "int8",
                                                    bias_correction))
        variant_card = dict(card, name=f"{card['name']}_{variant}")
        variant_card["export"] = {"variant": variant, "size_bytes": tflite_path.stat().st_size,
                                  "int8_io": int8_io and variant == "int8",
                                  **({"bias_correction": bias_correction} if variant == "int8" else {}),
                                  **({"qat_epochs": qat[0], "qat_learning_rate": qat[1]} if variant == "qat" else {}),
                                  "latency": {f"{threads}_threads": TFLiteModel(tflite_path, threads).latency_ms(
                                      latency_runs)}}
        write_card(folder, variant_card)
        metrics, agreement = {}, {}
        predictor = load_predictor(tflite_path, threads) if any(evaluation.values()) else None
        for split, items in evaluation.items():
            if items:
                results = evaluate(predictor, items, card["training"]["data"], split, progress=progress,
                                   keep_probabilities=split in references)
                metrics.update({split: results["metrics"], f"n_{split}": results["n"]})
                if split in references:
                    agreement[split] = fidelity(references[split], results.pop("probabilities"))
                progress("      " + summary_line(results))
        if metrics:
            variant_card["metrics"] = {**metrics, "keras_" + evaluate_split: keras_results,
                                       **({"fidelity": agreement} if agreement else {})}
            write_card(folder, variant_card)
        out[variant] = folder
    return out


def _keras_probabilities(run_dir: Path, card: dict, evaluation: dict[str, list[Record]]) -> dict[str, np.ndarray]:
    """An image classifier's float probabilities per evaluation split, which each export's are compared with
    (`metrics.fidelity` of its card); other tasks: none."""
    if card["task"] != "classification":
        return {}
    predictor = load_predictor(run_dir)
    return {split: class_probabilities(predictor, items) for split, items in evaluation.items() if items}


def _quantize_aware(run_dir: Path, out: Path, epochs: int, learning_rate: float, samples: int) -> None:
    """QAT runs in a child process: tfmot needs tf_keras and switches the environment to legacy Keras."""
    command = [sys.executable, "-m", "fpc_keras.qat", str(run_dir), str(out), "--epochs", str(epochs),
               "--learning-rate", str(learning_rate), "--representative-samples", str(samples)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        message = next((line for line in lines if line.startswith("[fpc_keras]")), lines[-1] if lines else "")
        raise BadInputError(f"quantisation-aware training of {run_dir} failed: {message}",
                            "see `python -m fpc_keras.qat RUN OUT` for the full log, or export --quant int8")


def ship(variant_folder: str | Path, destination: str | Path) -> Path:
    """Copy an exported variant (model.tflite + model_card.json) to e.g. tflite/models/<name>/."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("model.tflite", "model_card.json"):
        shutil.copy2(Path(variant_folder) / name, destination / name)
    return destination
