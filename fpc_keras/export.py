"""TFLite export: fp32, fp16 weights, dynamic-range int8, full-integer int8 (representative images from the
training split), and quantisation-aware int8 (`qat`: fine-tuned with fake quantisation in a child process,
fpc_keras.qat). Each variant goes to `exports/<variant>/model.tflite` with its model card, which records its
size, latency and its own accuracy on the evaluation split beside the Keras model's, and on the validation split:
the quantised variants are ranked on validation (`choose_quantised`, written to `exports/choice.json`), the
evaluation split only reports.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from . import models  # noqa: F401  (registers custom layers)
from .card import CARD_NAME, read_card, succeeding, write_card
from .conversion import convert, precision_fields, worst_int8_ops
from .config import QUANT_VARIANTS, ExportConfig
from .data.images import ImageSpec
from .data.records import Record
from .errors import BadInputError
from .evaluate import class_probabilities, evaluate, fidelity, load_predictor, summary_line
from .familiarity import carried_over
from .io import atomic_write_bytes, atomic_write_json, read_json
from .litert import TFLiteModel
from .tasks import task_of_card
from .metrics import headline_metric

Progress = Callable[[str], None]
QUANTISED = ("dynamic", "int8", "mixed", "qat")  # the int8 variants `choose_quantised` ranks
CHOICE_RULE = ("on the validation split: a classifier's highest top-1 agreement with its float model, ties broken "
               "by the lower mean absolute probability difference (steadier than two accuracies on a small split); "
               "other models' highest validation top-1 or Dice")


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
               bias_correction: bool = ExportConfig.bias_correction, float_ops: int = ExportConfig.float_ops,
               progress: Progress = print) -> dict[str, Path]:
    """Export the run's model as each variant, measure size, latency and accuracy; return variant -> folder.
    `mixed` is int8 with the `float_ops` ops that stray most from float kept in float."""
    run_dir = Path(run_dir)
    card = read_card(run_dir / "model.keras")
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    records = train_records(run_dir)
    spec = ImageSpec.from_card(card)
    train = [r for r in records if r.split == "train"]
    evaluation = {split: [r for r in records if r.split == split] for split in (evaluate_split, "val")}
    clip_length = int(card["preprocessing"].get("clip_length", 0)) if task_of_card(card).name == "video" else 0
    representative = (representative_images(train, spec, representative_samples, clip_length=clip_length)
                      if {"int8", "mixed"} & set(variants) else None)
    if int8_io and "mixed" in variants:
        progress("      mixed keeps float input and output: --int8-io applies to the int8 variant only")
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
            kept = worst_int8_ops(model, representative, float_ops) if variant == "mixed" else []
            atomic_write_bytes(tflite_path, convert(model, variant, representative, int8_io and variant == "int8",
                                                    bias_correction, kept))
        described = precision_fields(variant, tflite_path.read_bytes())
        variant_card = dict(card, name=f"{card['name']}_{described['precision']}")
        variant_card["export"] = {"variant": variant, **described, "size_bytes": tflite_path.stat().st_size,
                                  "int8_io": int8_io and variant == "int8",
                                  **({"bias_correction": bias_correction} if variant in ("int8", "mixed") else {}),
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
    choice = choose_quantised(run_dir)
    if choice:
        progress(f"      chosen on validation among {', '.join(r['variant'] for r in choice['ranking'])}: "
                 f"{choice['chosen']} (exports/choice.json)")
    return out


def export_as_configured(run_dir: str | Path, export: ExportConfig, variants: Sequence[str] | None = None,
                         progress: Progress = print) -> dict[str, Path]:
    """`export_run` with a run config's export section (its `quant` variants unless `variants` is given)."""
    return export_run(run_dir, export.quant if variants is None else variants, export.representative_samples,
                      export.latency_runs, qat=(export.qat_epochs, export.qat_learning_rate),
                      bias_correction=export.bias_correction, float_ops=export.float_ops, progress=progress)


def choose_quantised(run_dir: str | Path) -> dict | None:
    """Rank every quantised export of the run that was measured on validation (by CHOICE_RULE), write the ranking
    to `exports/choice.json` and return it; None when there is none. Test figures ride along for the report and
    never decide."""
    exports = Path(run_dir) / "exports"
    cards = {card["export"]["variant"]: card for card in map(read_json, sorted(exports.glob("*/model_card.json")))
             if card["export"]["variant"] in QUANTISED and _measured_on_validation(card)}
    if not cards:
        return None
    ranked = sorted(cards, key=lambda variant: (_validation_key(cards[variant]), QUANT_VARIANTS.index(variant)))
    choice = {"rule": CHOICE_RULE, "chosen": ranked[0],
              "ranking": [{"variant": variant, **_choice_figures(cards[variant])} for variant in ranked]}
    atomic_write_json(exports / "choice.json", choice)
    return choice


def _measured_on_validation(card: dict) -> bool:
    val = card.get("metrics", {}).get("val") or {}
    return headline_metric(val) in val


def _validation_key(card: dict) -> tuple[float, ...]:
    metrics = card["metrics"]
    fidelity = metrics.get("fidelity", {}).get("val")
    if fidelity:
        return -fidelity["top1_agreement"], fidelity["mean_abs_prob_diff"]
    return (-metrics["val"][headline_metric(metrics["val"])]["value"],)


def _choice_figures(card: dict) -> dict:
    metrics = card["metrics"]
    metric = headline_metric(metrics["val"])
    figures = {f"val_{metric}": metrics["val"][metric]["value"],
               **{f"val_{key}": value for key, value in metrics.get("fidelity", {}).get("val", {}).items()
                  if key != "n"}}
    for split in ("test", "keras_test"):
        if (metrics.get(split) or {}).get(metric):
            figures[f"{split}_{metric}"] = metrics[split][metric]["value"]
    return figures


def _keras_probabilities(run_dir: Path, card: dict, evaluation: dict[str, list[Record]]) -> dict[str, np.ndarray]:
    """An image classifier's float probabilities per evaluation split, which each export's are compared with
    (`metrics.fidelity` of its card); other tasks: none."""
    if task_of_card(card).name != "classification":
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


def shipped_variant(run_dir: str | Path, exported: Sequence[str]) -> str:
    """What `--ship` copies after exporting `exported`: the run's quantised variant chosen on validation when a
    quantised variant was among them (`choose_quantised`), else the last one exported."""
    choice_path = Path(run_dir) / "exports" / "choice.json"
    if set(QUANTISED) & set(exported) and choice_path.is_file():
        return read_json(choice_path)["chosen"]
    return exported[-1]


def ship(variant_folder: str | Path, destination: str | Path, metrics: dict | None = None) -> Path:
    """Copy an exported variant (model.tflite + model_card.json) to e.g. tflite/models/<name>/, each file written
    atomically. A model already there is replaced, and the new card becomes its next major version
    (`card.succeeding`); its input check stays where it still applies (`familiarity.carried_over`). `metrics` (e.g. a cross-validation's) join the card's before its one write."""
    variant_folder, destination = Path(variant_folder), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    card = read_card(variant_folder / "model.tflite")
    if metrics:
        card["metrics"] = {**card.get("metrics", {}), **metrics}
    if (destination / CARD_NAME).is_file():
        previous = read_card(destination / "model.tflite")
        card = carried_over(succeeding(card, previous), previous, destination)
    atomic_write_bytes(destination / "model.tflite", (variant_folder / "model.tflite").read_bytes())
    write_card(destination, card)
    return destination
