"""The tf_keras twin of a Keras 3 functional model, which tfmot can quantise: rebuilt from the Keras 3 config
layer by layer (custom layers through their tf_keras twins), the trained weights copied across with each
BatchNormalization folded into the convolution before it."""
from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

import numpy as np

from ..errors import BadInputError

# Weights are copied, so initialisers, regularisers and constraints are not needed to rebuild the graph.
_DROPPED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")
FUNCTIONAL = ("Functional", "Model")


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


def twin_layers():
    """tf_keras versions of fpc_keras' custom layers, sharing their arithmetic."""
    import tf_keras

    from ..models import layers as k3

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
    inputs, outputs = _call_graph(model.get_config(), twin_layers(), folds)
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
