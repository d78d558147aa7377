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
import sys
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .twin import twin_layers, batchnorm_folds, folded_weights, tf_keras_twin

__all__ = ["batchnorm_folds", "calibrate", "distil", "folded_weights", "qat_tflite", "quantize_aware",
           "tf_keras_twin"]
DISTIL_TEMPERATURE = 2.0


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
    with tfmot.quantization.keras.quantize_scope(twin_layers()):
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


def distillation_augmenter(run_dir: str | Path):
    """The augmentation QAT distils on: the suite's, mirrored where the run trained on mirrored images (its
    `config.yaml`; a run without one, such as an ensemble of runs, is not mirrored)."""
    from ..config import load_config
    from ..data.augment import build_augmenter

    config = Path(run_dir) / "config.yaml"
    return build_augmenter(seed=0, horizontal_flip=config.is_file() and load_config(config).train.horizontal_flip)


def qat_tflite(run_dir: str | Path, epochs: int, learning_rate: float, representative_samples: int,
               batch_size: int = 16) -> bytes:
    """Fine-tune the run's model with fake quantisation on its training split; return int8 `.tflite` bytes."""
    import keras
    import tensorflow as tf
    import tf_keras

    from ..card import read_card
    from ..data.images import ImageSpec
    from ..data.pipeline import image_dataset
    from ..conversion import run_converter
    from ..export import representative_images, train_records
    from ..models.frozen_features import split_feature_norm

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
    images = image_dataset(train, spec, batch_size=batch_size, shuffle=True, augment=distillation_augmenter(run_dir))
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
    from ..io import atomic_write_bytes

    try:
        tflite = qat_tflite(args.run_dir, args.epochs, args.learning_rate, args.representative_samples)
    except BadInputError as exc:
        print(exc, file=sys.stderr)
        return 2
    atomic_write_bytes(Path(args.out), tflite)
    return 0

