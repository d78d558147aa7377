"""The optimiser (Adam or AdamW, a constant rate or phase 2's cosine decay) and Polyak weight averaging: the
moving average swapped in for validation and checkpoints, the raw weights kept training."""
from __future__ import annotations

import contextlib

import keras

from ..config import TrainConfig


def make_optimizer(learning_rate, ema_momentum: float = 0.0, weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """Adam (AdamW with `weight_decay` > 0) at a rate or a schedule; with `ema_momentum` > 0 it also keeps an
    exponential moving average of the weights, which `averaged_weights` swaps in for validation and checkpoints of
    the best epoch."""
    averaging = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    if weight_decay:
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **averaging)
    return keras.optimizers.Adam(learning_rate, **averaging)


def finetune_rate(t: TrainConfig, train_items: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Phase 2's learning rate: constant, or cosine decay to zero over its steps."""
    if t.finetune_schedule == "constant":
        return t.finetune_learning_rate
    steps = t.finetune_epochs * -(-train_items // t.phase2_batch_size)
    return keras.optimizers.schedules.CosineDecay(t.finetune_learning_rate, decay_steps=max(steps, 1))


def _averaging(model: keras.Model) -> keras.optimizers.Optimizer | None:
    optimizer = getattr(model, "optimizer", None)
    return optimizer if getattr(optimizer, "use_ema", False) and optimizer.built else None


def _averaged_pairs(optimizer: keras.optimizers.Optimizer) -> list[tuple]:
    # Keras keeps the averages in a private list aligned with the trained variables (its own SwapEMAWeights
    # callback reads the same two lists); tests/test_train.py pins what this relies on.
    return [(var, average) for var, average in zip(optimizer._trainable_variables,
                                                   optimizer._model_variables_moving_average) if average is not None]


@contextlib.contextmanager
def averaged_weights(model: keras.Model):
    """Inside: the model holds its optimizer's moving average of the weights (where it keeps one); after: the
    raw weights again, the average unchanged."""
    optimizer = _averaging(model)
    if optimizer is not None:
        _swap_average(optimizer)
    try:
        yield
    finally:
        if optimizer is not None:
            _swap_average(optimizer)


def _swap_average(optimizer: keras.optimizers.Optimizer) -> None:
    for var, average in _averaged_pairs(optimizer):
        raw = var.numpy()
        var.assign(average)
        average.assign(raw)


def restart_average(model: keras.Model) -> None:
    """The moving average starts again from the current weights (a phase continuing from another phase's best
    model, whose checkpoint holds the average as its weights)."""
    optimizer = _averaging(model)
    for var, average in _averaged_pairs(optimizer) if optimizer is not None else []:
        average.assign(var)


def compile_classifier(model: keras.Model, learning_rate, label_smoothing: float, ema_momentum: float = 0.0,
                       weight_decay: float = 0.0) -> keras.Model:
    model.compile(optimizer=make_optimizer(learning_rate, ema_momentum, weight_decay),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"])
    return model
