"""A predictor over image records, batch by batch, with the bad-input policy: what every image task's metrics
are computed from."""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from ..data.records import Record
from ..errors import BadInputError
from ..metrics import classification_metrics
from ..predictor import Predictor


class Measured(NamedTuple):
    """What a task's evaluator returns (`tasks.Task.metrics`): metrics, items measured, files skipped, and per
    item either measures (`items`: segmenters) or class probabilities (`probabilities`: image classifiers)."""
    metrics: dict
    n: int
    skipped: dict
    items: list | None = None
    probabilities: np.ndarray | None = None


def predict_images(predictor: Predictor, records: Sequence[Record], on_bad_input: str, batch_size: int,
                    progress: Callable[[str], None], predict: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """`predict` (default: the predictor's own) over the records' images -> outputs, indices kept, skips."""
    from ..data.pipeline import SkipLog, image_dataset

    predict = predict or predictor.predict
    log = SkipLog() if on_bad_input == "skip" else None
    ds = image_dataset(records, predictor.image_spec(), None, batch_size, skip_log=log)
    outputs, kept, done, report_every = [], [], 0, max(500, len(records) // 10)
    for images, indices in ds:
        outputs.append(predict(images.numpy()))
        kept.append(indices.numpy())
        done += len(indices)
        if done // report_every > (done - len(indices)) // report_every:
            progress(f"      evaluated {done}/{len(records)}")
    if not outputs:
        raise BadInputError("no readable item to evaluate", "check the data; every file was skipped")
    return np.concatenate(outputs), np.concatenate(kept), dict(log.skipped) if log else {}


def check_labels(records: Sequence[Record], labels: Sequence[str]) -> None:
    unknown = sorted({str(r.label) for r in records} - set(labels))
    if unknown:
        example = next(r.source for r in records if str(r.label) == unknown[0])
        raise BadInputError(f"class(es) {unknown} (e.g. {example}) are not among the model's classes {list(labels)}",
                            "map them with --alias OLD=NEW, or evaluate only data of the model's classes")


def classification_metrics_of(predictor: Predictor, records: Sequence[Record], on_bad_input: str, batch_size: int,
                              progress: Callable[[str], None]) -> Measured:
    """Top-1, top-2, macro-F1, per-class figures and the confusion matrix of an image classifier."""
    check_labels(records, predictor.labels)
    probs, kept, skipped = predict_images(predictor, records, on_bad_input, batch_size, progress)
    index = {label: i for i, label in enumerate(predictor.labels)}
    y_true = np.array([index[records[i].label] for i in kept])
    return Measured(classification_metrics(y_true, probs, predictor.labels), len(kept), skipped,
                    probabilities=probs)
