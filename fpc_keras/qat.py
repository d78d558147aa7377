"""Quantisation-aware training (tensorflow-model-optimization) through a tf_keras twin of a Keras 3 model.

tfmot only quantises tf_keras models, and importing it sets TF_USE_LEGACY_KERAS=1 for everything the process
starts afterwards (../shared/STACK.md). So QAT runs in a child process of its own, `python -m fpc_keras.qat`,
started by `fpc_keras.export`: the twin is rebuilt from the Keras 3 functional config layer by layer, the trained
weights are copied across with each BatchNormalization folded into the convolution before it, the layers tfmot
supports get fake-quantisation, the model is fine-tuned for a few epochs to reproduce the float twin's outputs on
augmented images of the run's training split (`distil`), and the converter writes a full-integer int8 `.tflite`
(layers that tfmot leaves alone, e.g. attention, are quantised from representative images as in post-training
quantisation).
"""
from __future__ import annotations

import argparse
import inspect
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError

# Weights are copied, so initialisers, regularisers and constraints are not needed to rebuild the graph.
_DROPPED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")
FUNCTIONAL = ("Functional", "Model")
DISTIL_TEMPERATURE = 2.0


def _clean(config: Any) -> Any:
    """A Keras 3 layer config in the form tf_keras' `from_config` accepts."""
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return config["config"]["name"]
        out = {}
        for key, value in config.items():
            if key == "optional" or key.endswith(_DROPPED_SUFFIXES):
                continue
            out["batch_input_shape" if key == "batch_shape" else key] = _clean(value)
        return out
    if isinstance(config, (list, tuple)):
        return [_clean(item) for item in config]
    return config


def _twin_layers():
    """tf_keras versions of fpc_keras' custom layers, sharing their arithmetic."""
    import tf_keras

    from .models import layers as k3

    class CaffePreprocess(tf_keras.layers.Layer):
        def call(self, inputs):
            return k3.caffe_preprocess(inputs)

    class ChannelPool(tf_keras.layers.Layer):
        def call(self, inputs):
            return k3.channel_pool(inputs)

    return {"CaffePreprocess": CaffePreprocess, "ChannelPool": ChannelPool}


def _layer(entry: dict, custom: dict):
    import tf_keras

    config = _clean(entry["config"])
    if entry["class_name"] in custom:
        return custom[entry["class_name"]](**{k: v for k, v in config.items() if k in ("name", "trainable", "dtype")})
    layer_class = getattr(tf_keras.layers, entry["class_name"], None)
    if layer_class is None:
        raise BadInputError(f"quantisation-aware training cannot rebuild layer {config['name']!r} "
                            f"({entry['class_name']}) in tf_keras", "export with --quant int8 (post-training) instead")
    return layer_class(**_known_arguments(layer_class, config))  # not from_config: tf_keras' attention wants
    # the input shapes, which Keras 3 does not save


_BASE_ARGUMENTS = {"name", "trainable", "dtype", "batch_input_shape", "input_shape", "autocast", "dynamic"}


def _known_arguments(layer_class, config: dict) -> dict:
    """Drop Keras 3 arguments tf_keras lacks (lora_rank, quantization_config, use_gate...) where they are at their
    off value; refuse to drop one that changes the layer."""
    known = set(_BASE_ARGUMENTS)
    for cls in layer_class.__mro__:  # subclasses pass their base's arguments on as **kwargs
        if "__init__" in vars(cls):
            known |= set(inspect.signature(cls.__init__).parameters)
    extra = {key: value for key, value in config.items() if key not in known}
    if any(extra.values()):
        raise BadInputError(f"layer {config['name']!r} uses Keras 3 options tf_keras lacks: {extra}",
                            "export with --quant int8 (post-training) instead of qat")
    return {key: value for key, value in config.items() if key in known}


def _resolve(value: Any, tensors: dict) -> Any:
    """Replace Keras 3's serialised tensor references (`__keras_tensor__`) by the twin's tensors."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        name, node, index = value["config"]["keras_history"]
        return tensors[name][node][index]
    if isinstance(value, dict):
        return {key: _resolve(item, tensors) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve(item, tensors) for item in value]
    return value


_FOLDABLE = ("Conv2D", "DepthwiseConv2D")


def batchnorm_folds(config: dict) -> dict[str, str]:
    """BatchNormalization layer -> the convolution it directly follows, where that convolution has no activation
    and feeds nothing else, and the normalisation runs over the channels (last) axis.

    Why fold: tfmot fake-quantises a convolution's output and leaves a BatchNormalization it does not annotate in
    float after it; the converter then cannot fold the two and keeps every BatchNormalization as separate int8
    multiply and add ops, each rounding again (EfficientNet-Lite0: 0.50 validation top-1 against 0.98 for the
    fake-quantised model). Folded, a convolution and its normalisation are one int8 convolution, as in
    post-training quantisation; the statistics are frozen, so the fold is exact."""
    convolutions = {entry["config"]["name"] for entry in config["layers"] if entry["class_name"] in _FOLDABLE
                    and entry["config"].get("activation") in (None, "linear")}
    consumers = Counter(name for entry in config["layers"] for name in _inbound_names(entry))
    consumers.update(ref[0] for ref in _as_refs(config["output_layers"]))
    folds = {}
    for entry in config["layers"]:
        inbound = _inbound_names(entry)
        if (entry["class_name"] == "BatchNormalization" and len(inbound) == 1
                and inbound[0] in convolutions and consumers[inbound[0]] == 1
                and entry["config"].get("axis") in (-1, 3, [3], [-1])):
            folds[entry["config"]["name"]] = inbound[0]
    return folds


def _inbound_names(entry: dict) -> list[str]:
    """The layers whose outputs a config entry's calls take."""
    found = []

    def walk(value: Any) -> None:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            found.append(value["config"]["keras_history"][0])
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
    walk(entry.get("inbound_nodes", []))
    return found


def _call_graph(config: dict, custom: dict, folds: dict[str, str], inputs: list | None = None) -> tuple[list, list]:
    """Walk a Keras 3 functional config (layers in topological order) and call tf_keras layers the same way,
    folding BatchNormalization into convolutions (`batchnorm_folds`; the folds made are added to `folds`).
    Nested models are inlined, so the twin is flat: tfmot does not quantise models nested in models."""
    import tf_keras

    tensors: dict[str, list[list]] = {}
    input_refs = _as_refs(config["input_layers"])
    here = batchnorm_folds(config)
    folds.update(here)
    folded_convs = set(here.values())
    for entry in config["layers"]:
        name = entry["config"]["name"]
        if name in here:  # the convolution before it already applies it
            tensors[name] = tensors[here[name]]
            continue
        if name in folded_convs:
            entry = {**entry, "config": {**entry["config"], "use_bias": True}}
        if entry["class_name"] == "InputLayer":
            given = [inputs[k] for k, ref in enumerate(input_refs) if ref[0] == name] if inputs else []
            tensors[name] = [[given[0] if given else
                              tf_keras.Input(batch_shape=tuple(entry["config"]["batch_shape"]), name=name)]]
            continue
        nested = entry["class_name"] in FUNCTIONAL
        layer = None if nested else _layer(entry, custom)
        tensors[name] = [None] if nested else []  # a model's node 0 is its own graph
        for node in entry["inbound_nodes"]:
            args = _resolve(node["args"], tensors)
            if nested:
                out = _call_graph(entry["config"], custom, folds, _flatten(args))[1]
            else:
                out = layer(*args, **_resolve(node.get("kwargs", {}), tensors))
            tensors[name].append(list(out) if isinstance(out, (list, tuple)) else [out])
    pick = lambda refs: [tensors[n][node][i] for n, node, i in refs]  # noqa: E731
    return pick(input_refs), pick(_as_refs(config["output_layers"]))


def _flatten(value) -> list:
    return [item for part in value for item in _flatten(part)] if isinstance(value, (list, tuple)) \
        else [value]


def _as_refs(refs: list) -> list:
    return [refs] if refs and isinstance(refs[0], str) else refs


def tf_keras_twin(model):
    """The same function in tf_keras, flat, with the same weights and BatchNormalization folded into the
    convolutions before it (the tests check the outputs to 1e-5)."""
    import tf_keras

    folds: dict[str, str] = {}
    inputs, outputs = _call_graph(model.get_config(), _twin_layers(), folds)
    twin = tf_keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                          name=model.name)
    layers = _flat_layers(model)
    norm_after = {conv: bn for bn, conv in folds.items()}
    for name, layer in layers.items():
        if name in folds:
            continue
        weights = layer.get_weights()
        if name in norm_after:
            weights = folded_weights(weights, layers[norm_after[name]],
                                     depthwise=layer.__class__.__name__ == "DepthwiseConv2D")
        if weights:
            twin.get_layer(name).set_weights(weights)
    return twin


def _flat_layers(model) -> dict:
    """Every layer by name, nested models' layers included (they are inlined in the twin)."""
    out = {}
    for layer in model.layers:
        out.update(_flat_layers(layer) if hasattr(layer, "layers") else {layer.name: layer})
    return out


def folded_weights(weights: list[np.ndarray], norm, depthwise: bool) -> list[np.ndarray]:
    """A convolution's [kernel(, bias)] with the inference-mode BatchNormalization `norm` after it folded in:
    per output channel, kernel * gamma / sqrt(var + eps) and (bias - mean) * that + beta."""
    from keras import ops

    value = lambda variable, default: default if variable is None else ops.convert_to_numpy(variable)  # noqa: E731
    factor = value(norm.gamma, 1.0) / np.sqrt(value(norm.moving_variance, None) + norm.epsilon)
    kernel, bias = weights[0], weights[1] if len(weights) > 1 else 0.0
    # A depthwise kernel is (h, w, channels, multiplier) and its output channel c * multiplier + m.
    scale = factor.reshape(kernel.shape[2:]) if depthwise else factor
    return [(kernel * scale).astype(kernel.dtype),
            ((bias - value(norm.moving_mean, None)) * factor + value(norm.beta, 0.0)).astype(kernel.dtype)]


def quantize_aware(twin):
    """Fake-quantise every layer tfmot's default 8-bit scheme supports; the rest stay float for the converter."""
    import tensorflow_model_optimization as tfmot
    import tf_keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)

    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()

    def annotate(layer):
        if registry.supports(layer):
            return tfmot.quantization.keras.quantize_annotate_layer(layer.__class__.from_config(layer.get_config()))
        return layer.__class__.from_config(layer.get_config())

    annotated = tf_keras.models.clone_model(twin, clone_function=annotate)
    annotated.set_weights(twin.get_weights())
    with tfmot.quantization.keras.quantize_scope(_twin_layers()):
        return tfmot.quantization.keras.quantize_apply(annotated)


def calibrate(model, batches, decay: float = 0.5) -> None:
    """Set the fake-quantisation ranges from data before fine-tuning.

    tfmot starts every activation range at [-6, 6] and moves it by an EMA with decay 0.999, which needs thousands
    of steps: a few epochs on a small dataset leave linear layers (projections, residual adds) clipped at +-6 and
    the model wrong (0 % accuracy seen on BUSI). Here a few forward passes run with a fast EMA instead."""
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.MovingAvgQuantize

    def fast(*args, **kwargs):
        return original(*args, **{**kwargs, "ema_decay": decay})

    quant_ops.MovingAvgQuantize = fast
    try:
        for x in batches:
            model(x, training=True)
    finally:
        quant_ops.MovingAvgQuantize = original


def distil(student, teacher, images, epochs: int, optimizer, temperature: float = DISTIL_TEMPERATURE) -> None:
    """Fine-tune the fake-quantised `student` to reproduce the float `teacher`'s class probabilities (KL divergence
    at `temperature`) on augmented training images.

    Why not the labels: the float model already fits its training images, so label loss mostly pulls the student
    away from the model that was chosen on validation (QAT on labels lost 4-5 points of BUSI test top-1 where PTQ lost
    2-3); the teacher's soft outputs say where quantisation moved each decision. On BUSI Lite2 + SE (seed 1) this
    raised QAT's validation agreement with float from 0.891 to 0.913 (mean |probability difference| 0.088 -> 0.067).
    The student runs in inference mode: its BatchNormalizations keep their statistics (batch statistics of 16 images
    moved the head), dropout is off, and the fake-quantisation ranges stay as calibrated, while the weights learn
    through the straight-through estimator."""
    import tensorflow as tf

    def log_softmax_at(probabilities):
        return tf.nn.log_softmax(tf.math.log(tf.maximum(probabilities, 1e-12)) / temperature)

    @tf.function
    def step(x):
        log_target = log_softmax_at(teacher(x, training=False))
        with tf.GradientTape() as tape:
            log_student = log_softmax_at(student(x, training=False))
            loss = tf.reduce_mean(tf.reduce_sum(tf.exp(log_target) * (log_target - log_student), -1))
        gradients = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(gradients, student.trainable_variables))
        return loss

    for epoch in range(epochs):
        losses = [float(step(x)) for x in images]
        print(f"qat epoch {epoch + 1}/{epochs}: distillation loss {np.mean(losses):.5f} over {len(losses)} batches",
              flush=True)


def qat_tflite(run_dir: str | Path, epochs: int, learning_rate: float, representative_samples: int,
               batch_size: int = 16) -> bytes:
    """Fine-tune the run's model with fake quantisation on its training split; return int8 `.tflite` bytes."""
    import keras
    import tensorflow as tf
    import tf_keras

    from .card import read_card
    from .data.images import ImageSpec
    from .data.augment import build_augmenter
    from .data.pipeline import image_dataset
    from .export import representative_images, run_converter, train_records
    from .models.frozen_features import split_feature_norm

    run_dir = Path(run_dir)
    card = read_card(run_dir / "model.keras")
    spec = ImageSpec.from_card(card)
    train = [r for r in train_records(run_dir) if r.split == "train"]
    # The graph every export converts: a multiscale head's branches standardised before their concatenation.
    source = split_feature_norm(keras.saving.load_model(run_dir / "model.keras", compile=False))
    teacher = tf_keras_twin(source)
    model = quantize_aware(teacher)
    representative = representative_images(train, spec, representative_samples)
    calibrate(model, [representative[i:i + batch_size] for i in range(0, len(representative), batch_size)] * 3)
    images = image_dataset(train, spec, batch_size=batch_size, shuffle=True, augment=build_augmenter(seed=0))
    distil(model, teacher, images.map(lambda x, _: x), epochs, tf_keras.optimizers.Adam(learning_rate))
    # A fixed batch of 1 keeps every shape static: tf_keras' Dense on 4-D tensors otherwise leaves dynamic
    # Shape/Gather/Pack ops that the XNNPACK delegate refuses.
    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1, *representative.shape[1:]), tf.float32))
    return run_converter(tf.lite.TFLiteConverter.from_concrete_functions([concrete], model), "int8", representative)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="QAT int8 export of a run (started by `fpc-keras export`)")
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--representative-samples", type=int, default=64)
    args = parser.parse_args(argv)
    from .io import atomic_write_bytes

    try:
        tflite = qat_tflite(args.run_dir, args.epochs, args.learning_rate, args.representative_samples)
    except BadInputError as exc:
        print(exc, file=sys.stderr)
        return 2
    atomic_write_bytes(Path(args.out), tflite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
