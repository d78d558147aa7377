"""TFLite conversion of a Keras model: fp32, fp16 weights, dynamic-range int8, full-integer int8 (bias-corrected on
representative items) and mixed int8 (the ops that stray most from float kept in float, found by TFLite's
quantisation debugger); and what a `.tflite` computes in, read back from its op table. Run folders, cards and the
choice among variants are `export`'s; quantisation-aware training is `qat`'s."""
from __future__ import annotations

import contextlib
import csv
import io
import re
from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from . import models  # noqa: F401  (registers custom layers)
from .bias_correction import bias_corrected
from .config import QUANT_VARIANTS
from .errors import BadInputError
from .litert import interpreter_class
from .models.frozen_features import split_feature_norm

DEBUG_IMAGES = 16  # representative images the quantisation debugger ranks a mixed export's ops on


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
    return run_converter(frozen_converter(model), variant, representative, int8_io)


def frozen_converter(model: keras.Model) -> tf.lite.TFLiteConverter:
    """A converter of `model` as the graph every export converts (a multiscale head's branches standardised
    apart), traced once for a batch of exactly one with its weights frozen into constants.

    Why a batch of one: it is what every call on a device is, and with a free batch a Dense on a 4-D tensor
    (squeeze-and-excitation) converts with shape arithmetic (SHAPE, GATHER, REDUCE_PROD, PACK, CONCATENATION,
    RESHAPE) that the XNNPACK delegate does not take, so the graph runs in several pieces; with the batch fixed
    the converter folds it away (BUSI EfficientNet-Lite2 + SE int8: 112 ops -> 92, all delegated).
    Why not `TFLiteConverter.from_keras_model`: that writes a SavedModel first, tracing and tracking every Keras
    layer; on an EfficientNet-Lite0 it takes about three times as long (9 s against 3 s) for the same `.tflite`
    (same ops and tensor names, outputs equal). Weight-heavy graphs of few layers (VGG16) convert a few seconds
    slower this way."""
    graph = split_feature_norm(model)
    specs = [tf.TensorSpec((1, *tensor.shape[1:]), tensor.dtype, name=f"input_{i}")
             for i, tensor in enumerate(graph.inputs)]
    function = tf.function(lambda *inputs: graph(list(inputs) if len(inputs) > 1 else inputs[0], training=False))
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(*specs))
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen])


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
    converter = frozen_converter(model)
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
