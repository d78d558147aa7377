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
