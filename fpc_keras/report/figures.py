"""Matplotlib figures for the report, returned as base64 PNG data URIs (the page stays self-contained)."""
from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def confusion_figure(confusion: dict) -> str:
    labels, matrix = confusion["labels"], np.asarray(confusion["matrix"])
    size = 1.2 + 0.55 * len(labels)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(col, row, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black")
    return _data_uri(figure)


def history_figure(history_csv: Path) -> str | None:
    if not history_csv.is_file():
        return None
    rows = list(csv.DictReader(history_csv.open()))
    if not rows:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    figure, axis = plt.subplots(figsize=(5, 3))
    for key in ("loss", "accuracy", "val_macro_f1", "val_dice"):
        if key in rows[0]:
            axis.plot(epochs, [float(r[key]) for r in rows], label=key)
    axis.set_xlabel("epoch")
    axis.legend()
    axis.grid(alpha=0.3)
    return _data_uri(figure)


def bland_altman_figure(items: list[dict]) -> str | None:
    """Head circumference: predicted against reference, and Bland-Altman (difference against mean, bias and
    95 % limits of agreement)."""
    pairs = np.array([(i["hc_mm"], i["hc_true_mm"]) for i in items if i.get("hc_mm") and i.get("hc_true_mm")])
    if len(pairs) < 2:
        return None
    predicted, truth = pairs[:, 0], pairs[:, 1]
    difference, mean = predicted - truth, (predicted + truth) / 2
    bias, spread = difference.mean(), difference.std(ddof=1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.scatter(truth, predicted, s=8)
    limits = [min(truth.min(), predicted.min()), max(truth.max(), predicted.max())]
    left.plot(limits, limits, color="gray", lw=1)
    left.set_xlabel("reference HC (mm)")
    left.set_ylabel("predicted HC (mm)")
    right.scatter(mean, difference, s=8)
    for value, style in ((bias, "-"), (bias - 1.96 * spread, "--"), (bias + 1.96 * spread, "--")):
        right.axhline(value, color="firebrick", ls=style, lw=1)
    right.set_xlabel("mean of predicted and reference (mm)")
    right.set_ylabel("predicted - reference (mm)")
    right.set_title(f"bias {bias:+.2f} mm, limits {bias - 1.96 * spread:+.2f} / {bias + 1.96 * spread:+.2f}")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    return _data_uri(figure)


def overlay_figure(items: list[dict]) -> str | None:
    """The best, median and worst test images by Dice: the reference outline (green) and the predicted
    ellipse (red) on the image."""
    from ..biometry import Ellipse, ellipse_mask
    from ..data.hc18 import read_mask
    from ..data.images import read_image

    scored = sorted((i for i in items if i.get("dice") is not None and i.get("ellipse")), key=lambda i: i["dice"])
    if not scored:
        return None
    chosen = {"worst": scored[0], "median": scored[len(scored) // 2], "best": scored[-1]}
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for axis, (name, item) in zip(axes, chosen.items()):
        image = read_image(item["source"], 1)[:, :, 0]
        axis.imshow(image, cmap="gray")
        truth = read_mask(item["mask"]) if item.get("mask") else None
        if truth is not None:
            axis.contour(truth, levels=[0.5], colors="lime", linewidths=1)
        axis.contour(ellipse_mask(image.shape, Ellipse(*item["ellipse"])), levels=[0.5], colors="red", linewidths=1)
        axis.set_title(f"{name}: Dice {item['dice']:.3f}, {Path(item['source']).name}", fontsize=8)
        axis.axis("off")
    return _data_uri(figure)


def reliability_figure(calibration: dict) -> str | None:
    """Accuracy against mean top-1 confidence per bin (the diagonal is perfect calibration), with the counts."""
    bins = calibration.get("bins") or []
    if not bins:
        return None
    confidence = [b["confidence"] for b in bins]
    accuracy = [b["accuracy"] for b in bins]
    figure, axis = plt.subplots(figsize=(3.8, 3.6))
    axis.plot([0, 1], [0, 1], color="gray", lw=1)
    axis.bar([b["lo"] for b in bins], accuracy, width=[b["hi"] - b["lo"] for b in bins], align="edge",
             alpha=0.35, edgecolor="steelblue", label="accuracy per bin")
    axis.plot(confidence, accuracy, "o-", color="steelblue", ms=4)
    for b in bins:
        axis.text((b["lo"] + b["hi"]) / 2, 0.02, str(b["count"]), ha="center", fontsize=6, color="#555")
    ece = calibration["ece"]
    axis.set_title(f"reliability: ECE {ece['value']:.3f} [{ece['ci95'][0]:.3f}, {ece['ci95'][1]:.3f}]", fontsize=9)
    axis.set_xlabel("top-1 confidence")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    return _data_uri(figure)


def latency_accuracy_figure(points: list[dict], metric: str) -> str | None:
    """One point per model and export variant: median latency (ms, log scale) against `metric`; each run's
    variants joined by a line, so the cost of each quantisation step reads off directly."""
    points = [p for p in points if p["metric"] == metric]
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5))
    markers = {"keras": "s", "fp32": "o", "fp16": "^", "dynamic": "D", "int8": "*", "mixed": "X", "qat": "P"}
    for run in sorted({p["run"] for p in points}):
        own = sorted((p for p in points if p["run"] == run), key=lambda p: p["latency_ms"])
        line, = axis.plot([p["latency_ms"] for p in own], [p["value"] for p in own], "-", lw=0.8, alpha=0.6)
        for p in own:
            axis.plot(p["latency_ms"], p["value"], markers.get(p["variant"], "o"), color=line.get_color(), ms=6)
        axis.annotate(run, (own[-1]["latency_ms"], own[-1]["value"]), fontsize=6, xytext=(3, 0),
                      textcoords="offset points", color=line.get_color())
    for variant, marker in markers.items():
        if any(p["variant"] == variant for p in points):
            axis.plot([], [], marker, color="gray", label=variant)
    axis.set_xscale("log")
    axis.set_xlabel("median latency per item (ms: an image, or one clip of a video model; TFLite at the card's "
                    "threads; log scale)")
    axis.set_ylabel(metric)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: points can lie anywhere
    axis.margins(x=0.25, y=0.08)  # room for the labels right of the last points
    axis.grid(alpha=0.3, which="both")
    figure.tight_layout()
    return _data_uri(figure)


def image_file_uri(path: Path) -> str | None:
    """A PNG already on disk (e.g. a Grad-CAM montage) as a data URI."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
