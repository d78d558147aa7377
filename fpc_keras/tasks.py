"""The task registry: everything that differs between the suite's tasks, in one table. Training, evaluation,
export, `predict` and the edge runner look a task up here instead of testing strings and shapes; a fifth paper
adds a builder (`models/`), a recipe (`experiments/configs/`) and, for a new task, one entry here.

No TensorFlow here (the edge runner reads it): sessions, evaluators and post-processing choosers are named as
"module:attribute" and imported when first used.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from .errors import BadInputError


@dataclass(frozen=True)
class Task:
    name: str
    kinds: tuple[str, ...]  # the data kinds (`fpc_keras.data.datasets.KINDS`) that hold data of this task
    session: str  # the training session (`fpc_keras.training`)
    metrics: str  # (predictor, records, on_bad_input, batch_size, progress) -> evaluate.Measured
    inputs: str  # what one item is: "image" or "video" (what `predict` collects)
    postprocessing: str | None = None  # (predictor, val records, batch_size, progress) -> card["postprocessing"]
    labels: str | None = None  # fixed class list (a segmenter's plane classes); None: the data's classes

    def load(self, field: str) -> Any:
        """The object a "module:attribute" field names (None where the task has none)."""
        reference = getattr(self, field)
        if reference is None:
            return None
        module, attribute = reference.split(":")
        return getattr(importlib.import_module(module, __package__), attribute)


TASKS = {task.name: task for task in (
    Task("classification", ("fetal_planes", "folder", "prefix", "csv"),
         ".training.classification:ClassificationSession", ".evaluate.images:classification_metrics_of", "image"),
    Task("segmentation", ("hc18",), ".training.segmentation:SegmentationSession",
         ".evaluate.segmentation:segmentation_metrics", "image", postprocessing=".postprocess:choose_postprocessing",
         labels=".data.sweeps:PLANE_LABELS"),
    # FetalNet's video model: a segmenter of clips (probe sweeps); its card says task "segmentation" and a clip length.
    Task("clip_segmentation", (), ".training.segmentation:SegmentationSession",
         ".evaluate.segmentation:sweep_metrics", "video", labels=".data.sweeps:PLANE_LABELS"),
    Task("video", ("videos",), ".training.video:VideoSession", ".evaluate.video:video_metrics", "video"),
)}


def task_of_kind(kind: str) -> Task:
    """The task that data of `kind` trains."""
    for task in TASKS.values():
        if kind in task.kinds:
            return task
    raise BadInputError(f"unknown data kind {kind!r}",
                        f"use one of: {', '.join(k for t in TASKS.values() for k in t.kinds)}")


def task_of_card(card: dict) -> Task:
    """The task of a trained or exported model, from its card (a segmenter with a clip length segments clips)."""
    name = card.get("task")
    if name == "segmentation" and int(card.get("preprocessing", {}).get("clip_length", 1)) > 1:
        name = "clip_segmentation"
    if name not in TASKS:
        raise BadInputError(f"model card task {name!r} unknown", f"re-export the model; tasks: {', '.join(TASKS)}")
    return TASKS[name]
