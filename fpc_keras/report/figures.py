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
    for key in ("loss", "accuracy", "val_macro_f1"):
        if key in rows[0]:
            axis.plot(epochs, [float(r[key]) for r in rows], label=key)
    axis.set_xlabel("epoch")
    axis.legend()
    axis.grid(alpha=0.3)
    return _data_uri(figure)
