"""TFLite export: fp32, fp16 weights, dynamic-range int8, full-integer int8 (representative images from the
training split), and quantisation-aware int8 (`qat`: fine-tuned with fake quantisation in a child process,
fpc_keras.qat). Each variant goes to `exports/<variant>/model.tflite` with its model card, which records its
size, latency and its own accuracy on the evaluation split beside the Keras model's, and on the validation split:
the quantised variants are ranked on validation (`choose_quantised`, written to `exports/choice.json`), the
evaluation split only reports.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

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
from .io import atomic_write_bytes, atomic_write_json, read_json
from .litert import TFLiteModel, interpreter_class
from .tasks import task_of_card
from .metrics import headline_metric
from .models.frozen_features import split_feature_norm

Progress = Callable[[str], None]
DEBUG_IMAGES = 16  # representative images the quantisation debugger ranks a mixed export's ops on
QUANTISED = ("dynamic", "int8", "mixed", "qat")  # the int8 variants `choose_quantised` ranks
CHOICE_RULE = ("on the validation split: a classifier's highest top-1 agreement with its float model, ties broken "
               "by the lower mean absolute probability difference (steadier than two accuracies on a small split); "
               "other models' highest validation top-1 or Dice")


def convert(model: keras.Model, variant: str, representative: np.ndarray | None = None,
            int8_io: bool = False, bias_correction: bool = True, float_ops: Sequence[str] = ()) -> bytes:
    """The `.tflite` bytes of `model` as `variant` (one of QUANT_VARIANTS but qat, which needs a run folder);
    int8 and mixed are bias-corrected on the representative images unless `bias_correction` is False; mixed keeps
    the ops named in `float_ops` (from `worst_int8_ops`) in float."""
    if variant not in QUANT_VARIANTS or variant == "qat":
        raise BadInputError(f"unknown export variant {variant!r}", f"use one of: {', '.join(QUANT_VARIANTS)}")
    if variant == "mixed":
        return _mixed(model, _representative_or_fail(representative), float_ops, bias_correction)
    if variant == "int8" and bias_correction and representative is not None:
        model, _ = bias_corrected(model, representative)
    return run_converter(tf.lite.TFLiteConverter.from_keras_model(single_item(split_feature_norm(model))), variant,
                         representative, int8_io)


def single_item(model: keras.Model) -> keras.Model:
    """The same model (same weights) taking a batch of exactly one, as every call on a device does.

    Why: with a free batch, a Dense on a 4-D tensor (squeeze-and-excitation) converts with shape arithmetic
    (SHAPE, GATHER, REDUCE_PROD, PACK, CONCATENATION, RESHAPE) that the XNNPACK delegate does not take, so the graph
    runs in several pieces; with the batch fixed the converter folds it away (BUSI EfficientNet-Lite2 + SE int8:
    112 ops -> 92, all delegated)."""
    inputs = keras.tree.map_structure(lambda tensor: keras.Input(batch_shape=(1, *tensor.shape[1:]),
                                                                 dtype=tensor.dtype), model.input)
    fixed = keras.models.clone_model(model, input_tensors=inputs)
    fixed.set_weights(model.get_weights())
    return fixed


def worst_int8_ops(model: keras.Model, representative: np.ndarray, count: int) -> list[str]:
    """The `count` ops of `model`'s int8 conversion that stray most from float, by TFLite's quantisation debugger:
    each int8 op is compared with its float twin on the same (dequantised) inputs, over the first DEBUG_IMAGES
    representative images, and ranked by the root mean squared difference of the outputs in units of the
    output's int8 step. Returned as the converter's tensor names, which a mixed export keeps in float."""
    if count <= 0:
        return []
    debugger = _debugger(model, _representative_or_fail(representative)[:DEBUG_IMAGES])
    with contextlib.redirect_stdout(io.StringIO()):
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    steps = {row["tensor_name"]: float(row["mean_squared_error"]) ** 0.5 / float(row["scale"])
             for row in csv.DictReader(dump) if float(row["scale"]) > 0}
    return sorted(steps, key=steps.get, reverse=True)[:count]


def layers_of(model: keras.Model, tensor_names: Sequence[str]) -> set[str]:
    """The top-level layers of `model` fused into the named converter tensors (a tensor's name lists the Keras ops
    fused into it, each as <model>/<layer>[_<n>]/<op>, joined by ';')."""
    return {layer.name for layer in model.layers for name in tensor_names
            if re.search(rf"(^|[/;]){re.escape(layer.name)}(_\d+)?/", name)}


def _mixed(model: keras.Model, representative: np.ndarray, float_ops: Sequence[str], bias_correction: bool) -> bytes:
    """int8 with `float_ops` left in float (between dequantise and quantise ops). Bias correction skips the float
    layers: their weights are not rounded, so a correction would move them off the float model."""
    if bias_correction:
        model, _ = bias_corrected(model, representative, skip=layers_of(model, float_ops))
    debugger = _debugger(model, representative, float_ops)
    with contextlib.redirect_stdout(io.StringIO()):
        content = debugger.get_nondebug_quantized_model()
    missing = len(float_ops) - len(float_ops_of(content))
    if missing > 0:
        raise BadInputError(f"{missing} of the {len(float_ops)} ops chosen to stay in float were not found in the "
                            "converted model", "export with --quant int8, or report this model's layer names")
    return content


def float_ops_of(content: bytes) -> list[str]:
    """The compute ops of a `.tflite` model that run in float32 ("OP tensor-name"): none for full int8, the kept
    ops for a mixed export. (TFLite's op table is only reachable through a private interpreter method.)"""
    interpreter = interpreter_class()(model_content=content)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return [f"{op['op_name']} {tensors[op['outputs'][0]]['name'].split(';')[0]}"
            for op in interpreter._get_ops_details()
            if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE") and len(op["inputs"]) and op["inputs"][0] >= 0
            and tensors[op["inputs"][0]]["dtype"] == np.float32]


def precision_fields(variant: str, content: bytes) -> dict:
    """What an export computes in, read back from its `.tflite`: `precision` ("fp32", "fp16" for float16 weights,
    "dynamic" for int8 weights with float activations, "int8" when every compute op is integer, else
    "int8+float"), and for the quantised variants `float_ops`, the compute ops left in float. An int8 request
    whose graph holds ops without int8 kernels (3-D convolutions) is not called int8."""
    if variant in ("fp32", "fp16", "dynamic"):
        return {"precision": variant, **({"float_ops": float_ops_of(content)} if variant == "dynamic" else {})}
    kept = float_ops_of(content)
    return {"precision": "int8+float" if kept else "int8", "float_ops": kept}


def _debugger(model: keras.Model, representative: np.ndarray,
              float_ops: Sequence[str] = ()) -> tf.lite.experimental.QuantizationDebugger:
    """TFLite's quantisation debugger on `model`, calibrated on the representative images (its constructor converts)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(single_item(split_feature_norm(model)))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _dataset(representative)
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_ops) or None)
    with contextlib.redirect_stdout(io.StringIO()):
        return tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=_dataset(representative),
                                                         debug_options=options)


def _dataset(representative: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    return lambda: ([item[None].astype(np.float32)] for item in representative)


def _representative_or_fail(representative: np.ndarray | None) -> np.ndarray:
    if representative is None or not len(representative):
        raise BadInputError("int8 export needs representative images", "export from a run with a train split")
    return representative


def run_converter(converter: tf.lite.TFLiteConverter, variant: str, representative: np.ndarray | None = None,
                  int8_io: bool = False) -> bytes:
    """Set `converter` up for `variant` (fp32, fp16, dynamic, int8) and convert; shared with fpc_keras.qat."""
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        converter.representative_dataset = _dataset(_representative_or_fail(representative))
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


def ship(variant_folder: str | Path, destination: str | Path) -> Path:
    """Copy an exported variant (model.tflite + model_card.json) to e.g. tflite/models/<name>/."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("model.tflite", "model_card.json"):
        shutil.copy2(Path(variant_folder) / name, destination / name)
    return destination
