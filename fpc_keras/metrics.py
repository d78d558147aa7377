"""Metrics with bootstrap 95 % confidence intervals (numpy only).

Every scalar metric is reported as {"value": v, "ci95": [lo, hi]}; the interval is the 2.5th and 97.5th
percentile over `n_boot` resamples of the evaluated items (images or videos), with a fixed seed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

N_BOOT = 1000


def headline_metric(split_metrics: dict) -> str:
    """The metric a split's results are ranked and tabled by: a classifier's top-1, a segmenter's Dice."""
    return "top1" if "top1" in split_metrics else "dice"


def bootstrap(values_fn: Callable[[np.ndarray], float], n: int, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    stats = [values_fn(rng.integers(0, n, size=n)) for _ in range(n_boot)]
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def with_ci(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = N_BOOT) -> dict:
    everything = np.arange(n)
    return {"value": float(statistic(everything)), "ci95": bootstrap(statistic, n, n_boot)}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """Mean F1 over the classes present in y_true or y_pred (sklearn's `macro` on the observed labels)."""
    matrix = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(matrix).astype(np.float64)
    precision_den, recall_den = matrix.sum(axis=0), matrix.sum(axis=1)
    present = (precision_den + recall_den) > 0
    f1 = np.divide(2 * tp, precision_den + recall_den, out=np.zeros(k), where=present)
    return float(f1[present].mean()) if present.any() else 0.0


def top_k(y_true: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Per item: 1 where the true class is among the k most probable."""
    k = min(k, probs.shape[1])
    best = np.argsort(-probs, axis=1)[:, :k]
    return (best == y_true[:, None]).any(axis=1).astype(np.float64)


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str],
                           n_boot: int = N_BOOT) -> dict:
    """top1, top2, macro_f1 (with CIs), per_class precision / recall / F1 / support, confusion matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(labels)
    y_pred = probs.argmax(axis=1)
    hit1, hit2 = top_k(y_true, probs, 1), top_k(y_true, probs, 2)
    n = len(y_true)
    matrix = confusion_matrix(y_true, y_pred, k)
    return {
        "top1": with_ci(lambda i: hit1[i].mean(), n, n_boot),
        "top2": with_ci(lambda i: hit2[i].mean(), n, n_boot),
        "macro_f1": with_ci(lambda i: macro_f1(y_true[i], y_pred[i], k), n, n_boot),
        "per_class": per_class(matrix, labels),
        "confusion": {"labels": list(labels), "matrix": matrix.tolist()},
        "calibration": calibration(y_true, probs, n_boot=n_boot),
    }


def metrics_from_confusion(matrix: np.ndarray, n_boot: int = N_BOOT) -> dict:
    """top1 and macro_f1 (with CIs) of the items a confusion matrix counts (rows true, columns predicted): what
    the test folds of a cross-validation give when their matrices are summed."""
    matrix = np.asarray(matrix, dtype=np.int64)
    k = len(matrix)
    y_true = np.repeat(np.arange(k), matrix.sum(axis=1))
    y_pred = np.concatenate([np.repeat(np.arange(k), row) for row in matrix])
    hit = (y_true == y_pred).astype(np.float64)
    return {"top1": with_ci(lambda i: hit[i].mean(), len(hit), n_boot),
            "macro_f1": with_ci(lambda i: macro_f1(y_true[i], y_pred[i], k), len(hit), n_boot)}


def calibration(y_true: np.ndarray, probs: np.ndarray, bins: int = 10, n_boot: int = N_BOOT) -> dict:
    """Reliability of the top-1 probability: per confidence bin (equal width) its count, mean confidence and
    accuracy, and the expected calibration error (count-weighted |accuracy - confidence|) with its CI."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    index = np.clip((confidence * bins).astype(np.int64), 0, bins - 1)

    def ece(items: np.ndarray) -> float:
        counts = np.bincount(index[items], minlength=bins)
        gap = np.bincount(index[items], correct[items] - confidence[items], minlength=bins)
        return float(np.abs(gap).sum() / max(counts.sum(), 1))

    rows = [{"lo": b / bins, "hi": (b + 1) / bins, "count": int((index == b).sum()),
             "confidence": float(confidence[index == b].mean()), "accuracy": float(correct[index == b].mean())}
            for b in range(bins) if (index == b).any()]
    return {"ece": with_ci(ece, len(y_true), n_boot), "bins": rows}


def per_class(matrix: np.ndarray, labels: Sequence[str]) -> dict:
    out = {}
    for c, label in enumerate(labels):
        tp = int(matrix[c, c])
        predicted, actual = int(matrix[:, c].sum()), int(matrix[c, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return out


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    union = np.logical_or(pred, truth).sum()
    dice = 2 * inter / total if total else 1.0
    iou = inter / union if union else 1.0
    return float(dice), float(iou)


def mean_metrics(per_item: dict[str, Sequence[float]], n_boot: int = N_BOOT) -> dict:
    """Mean of per-item values (dice, iou, absolute errors) with bootstrap CIs; NaNs (failed items) excluded."""
    out = {}
    for name, values in per_item.items():
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size:
            out[name] = with_ci(lambda i, v=values: v[i].mean(), values.size, n_boot)
    return out
