"""What every task's training session shares: the base class (config, classes, splits, phases), the model it
starts from (warm start), class weights, a head fitted on precomputed features in an order a resume repeats, and
the validation score of a classifier."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from ..config import RunConfig, TrainConfig
from ..data.pipeline import balanced_order, epoch_batches, shuffled_order
from ..data.records import Record, in_split
from ..errors import BadInputError
from ..metrics import macro_f1
from ..models import build_model
from ..models.backbones import set_backbone_trainable
from .averaging import compile_classifier, finetune_rate
from .phase import Phase, Progress, Validate, phase_summary
from .resume import init_source


class TaskSession:
    """One run's training for a task: its config, classes and splits, and its phases (a checkpoint folder each,
    in `checkpoints/<phase>/`, one shared history.csv). `run()` returns the selected model."""

    def __init__(self, config: RunConfig, records: Sequence[Record], labels: list[str], progress: Progress,
                 validation: bool = True):
        self.config, self.labels, self.progress = config, labels, progress
        self.train_records = in_split(records, "train")
        self.val_records = in_split(records, "val") if validation else []
        self.phases: list[Phase] = []

    def new_phase(self, name: str) -> Phase:
        run_dir = self.config.run_dir
        phase = Phase(name, run_dir / "checkpoints" / name, self.config.train.early_stopping_patience,
                      run_dir / "history.csv", self.progress)
        self.phases.append(phase)
        return phase

    def run(self) -> keras.Model:
        raise NotImplementedError

    def summary(self) -> dict:
        return phase_summary(*self.phases)

    def finetune(self, model: keras.Model, phase: Phase, train_items: int,
                 fit: Callable[[keras.Model], None]) -> keras.Model:
        """Phase 2: unfreeze the top `train.finetune_blocks` blocks of the backbone and `fit` a copy; keep the
        phase-1 `model` unless validation macro-F1 improves, or (with `train.finetune_keep: last`) keep phase 2's
        last epoch. `train_items`: the items an epoch draws (the cosine schedule's steps)."""
        t = self.config.train
        if t.finetune_keep == "last":
            phase.keep_last = True
        else:
            first = self.phases[0].state
            phase.floor = (first["best_score"], -first["best_loss"])
        fitted = phase.resume()
        if fitted is None:
            # A copy trains, so that `model` keeps phase 1's best weights should phase 2 never beat them.
            fitted = keras.models.clone_model(model)
            fitted.set_weights(model.get_weights())
            unfrozen = set_backbone_trainable(fitted, t.finetune_blocks, t.finetune_batchnorm)
            self.progress(f"      {phase.name}: fine-tuning the top {t.finetune_blocks} blocks ({unfrozen} layers"
                          + (", batch norm included)" if t.finetune_batchnorm else ")"))
            fitted = compile_classifier(fitted, finetune_rate(t, train_items), t.label_smoothing, t.ema_momentum,
                                        t.finetune_weight_decay)
        if not phase.state["done"]:
            fit(fitted)
        return phase.best() or model


def fresh_model(config: RunConfig, progress: Progress) -> keras.Model:
    """The configured model, warm-started from `train.init_from` when one is given (`resume.init_source`: in
    cross-validation each fold starts from its own fold's run)."""
    model = build_model(config)
    if config.train.init_from:
        warm_start(model, init_source(config), progress)
    return model


def warm_start(model: keras.Model, source: str | Path, progress: Progress) -> None:
    """Copy into `model` the weights of every layer of `source` (a run folder or a `.keras` file) with the same name
    and weight shapes: progressive resizing (a fully convolutional model trained at a smaller input size, refined
    at a larger one) or a new head on a trained network. Says what was copied and what was left as built."""
    path = Path(source)
    path = path / "model.keras" if path.is_dir() else path
    if not path.is_file():
        raise BadInputError(f"train.init_from: {path} does not exist",
                            "give a run folder that finished training or a .keras file")
    donor = {layer.name: layer for layer in keras.saving.load_model(path, compile=False).layers}
    copied, kept = [], []
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        source_weights = donor[layer.name].get_weights() if layer.name in donor else []
        if [w.shape for w in source_weights] == [w.shape for w in weights]:
            layer.set_weights(source_weights)
            copied.append(layer.name)
        else:
            kept.append(layer.name)
    if not copied:
        raise BadInputError(f"train.init_from: no layer of {path} matches the configured model by name and shape",
                            "warm-start from a run of the same architecture")
    progress(f"      warm start from {path}: {len(copied)} layer(s) copied"
             + (f", {len(kept)} left as built: {', '.join(kept)}" if kept else ""))


def class_weights(y: np.ndarray, classes: int, balance: str) -> dict[int, float] | None:
    """Loss weights inversely proportional to the class counts (`train.balance: class_weights`), else None."""
    if balance != "class_weights":
        return None
    counts = np.bincount(y, minlength=classes)
    return {c: float(len(y) / (classes * n)) if n else 0.0 for c, n in enumerate(counts)}


def fit_head_on_features(head: keras.Model, phase: "Phase", x_train, y_train: np.ndarray, validate: Validate,
                         t: TrainConfig, classes: int) -> None:
    """Phase `phase` of a head on precomputed features (rows of `x_train`), in an order that a resume repeats."""
    if phase.state["epoch"] < 0:
        start_feature_norm(head, x_train)
    order = balanced_order(y_train, t.seed) if t.balance == "sampling" else shuffled_order(len(y_train), t.seed)
    batches = epoch_batches(order, phase.state["epoch"] + 1, t.epochs, t.batch_size)
    data = array_batches(batches, x_train, y_train, classes)
    phase.fit(head, data, t.epochs, validate, class_weights(y_train, classes, t.balance),
              steps_per_epoch=-(-len(y_train) // t.batch_size))


def classification_score(predict_val: Callable[[], np.ndarray], y_val: np.ndarray) -> Validate:
    """Validation macro-F1 and log-loss of the predicted probabilities."""
    def validate() -> tuple[float, float, str]:
        probs = predict_val()
        y = y_val[: len(probs)]
        score = macro_f1(y, probs.argmax(axis=1), probs.shape[1])
        return score, float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean()), "macro_f1"
    return validate


def start_feature_norm(head: keras.Model, x_train, chunk: int = 4096) -> None:
    """Start the head's per-feature standardisation (`feature_norm`, if any) at the training features' mean and
    variance. Its moving averages would otherwise start at 0 and 1 and take hundreds of steps to reach raw
    features in the thousands (VGG16's), so the first epochs' validation would read unstandardised features."""
    if "feature_norm" not in {layer.name for layer in head.layers} or len(x_train.shape) != 2:
        return
    sums, squares = np.zeros(x_train.shape[1]), np.zeros(x_train.shape[1])
    for start in range(0, len(x_train), chunk):
        rows = np.asarray(x_train[np.arange(start, min(start + chunk, len(x_train)))], np.float64)
        sums += rows.sum(axis=0)
        squares += (rows ** 2).sum(axis=0)
    mean = sums / len(x_train)
    norm = head.get_layer("feature_norm")
    gamma, beta = norm.get_weights()[:2]
    norm.set_weights([gamma, beta, mean, np.maximum(squares / len(x_train) - mean ** 2, 0.0)])


def array_batches(indices: tf.data.Dataset, x: np.ndarray, y: np.ndarray, classes: int) -> tf.data.Dataset:
    """(features, one-hot) batches gathered in numpy by index: the arrays never become graph constants, which
    TensorFlow caps at 2 GB (a FETAL_PLANES_DB-sized feature cache is several GB)."""
    eye = np.eye(classes, dtype=np.float32)

    def gather(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(x[batch], dtype=np.float32), eye[y[batch]]

    def load(batch):
        features, labels = tf.numpy_function(gather, [batch], (tf.float32, tf.float32))
        return tf.ensure_shape(features, (None, *x.shape[1:])), tf.ensure_shape(labels, (None, classes))

    return indices.map(load).prefetch(tf.data.AUTOTUNE)


def head_input(model: keras.Model) -> str:
    """The layer whose output feeds the nested `head` model: what the feature cache stores."""
    entry = next(e for e in model.get_config()["layers"] if e["config"]["name"] == "head")
    return entry["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0]
