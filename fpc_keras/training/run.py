"""`train()`: read and split the data, run the task's session under the distribution strategy, select on
validation, write the model, its card and the test results."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import keras
import tensorflow as tf

from ..card import make_card, typed_outputs, write_card
from ..config import RunConfig, model_section_dict, save_config
from ..data.datasets import read_records, split_records
from ..data.duplicates import resolve_mode
from ..data.records import Record, in_split, keep_training_fraction, labels_of, split_counts
from ..errors import BadInputError
from ..evaluate import Predictor, evaluate, keras_predict_fn, summary_line
from ..io import atomic_path, atomic_write_json, atomic_write_text
from ..models import parameter_counts
from ..postprocess import keep_candidates
from ..tasks import task_of_card, task_of_kind
from .phase import Progress
from .resume import check_resumable, final_fit_epochs, final_fit_records, read_refit_source, split_rule
from .segmentation import SegmentationSession


def _check_task_options(config: RunConfig, task: str) -> None:
    """Options that one task implements are refused for the others before any data is read."""
    t = config.train
    if t.mixup and task != "classification":
        raise BadInputError(f"train.mixup is {t.mixup} for a {task} run",
                            "mixup is implemented for image classifiers; set train.mixup=0")
    if t.horizontal_flip and task != "classification":
        raise BadInputError(f"train.horizontal_flip is set for a {task} run",
                            "mirroring is implemented for image classifiers; set train.horizontal_flip=false")
    if t.refit_from and (task != "segmentation" or config.model.temporal != "none"):
        raise BadInputError(f"train.refit_from is set for a {task} run (temporal {config.model.temporal})",
                            "a final fit is implemented for segmentation frame models (fetalnet, temporal none)")


def train(config: RunConfig, progress: Progress = print) -> Path:
    """Train (or resume, or skip when finished), select on validation, evaluate on test, write the run."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.train.seed)
    task = task_of_kind(config.data.kind)
    _check_task_options(config, task.name)
    progress(f"[1/4] reading {config.data.kind}:{config.data.path}")
    records = read_records(config.data.kind, config.data.path, config.data.aliases, config.data.classes)
    config.data.duplicates = resolve_mode(config.data.duplicates, config.data.kind, records)
    source = read_refit_source(config) if config.train.refit_from else None
    final_epochs = final_fit_epochs(source) if source is not None else None
    records = split_records(records, config.data.val_fraction, config.data.test_fraction, config.split_seed,
                            config.data.folds, config.data.fold, config.data.duplicates,
                            config.data.duplicate_distance, config.data.split_quota)
    records = keep_training_fraction(records, config.data.train_fraction, config.split_seed)
    if source is not None:
        records = final_fit_records(records)
    labels = list(task.load("labels") or labels_of(records))
    if len(labels) < 2:
        raise BadInputError(f"{config.data.path} holds {len(labels)} class(es): {labels}", "give at least two classes")
    config.model.num_classes = len(labels)
    counts = split_counts(records)
    progress(f"      {len(records)} items, classes {labels}, splits {counts}")
    check_resumable(config)
    _write_run_files(config, records)
    if source is not None:
        session = SegmentationSession(config, records, labels, progress, final_epochs)
    else:
        session = task.load("session")(config, records, labels, progress)
    strategy = distribution_strategy(config.train.strategy)
    if strategy.num_replicas_in_sync > 1:
        progress(f"      {config.train.strategy} strategy over {strategy.num_replicas_in_sync} replicas; a batch of "
                 f"{config.train.batch_size} is split between them")
    with strategy.scope():  # variables (model, optimizer) are created, restored and trained under it
        model = session.run()
    with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    card = make_card(config.name, task.name, labels, config.data.image_size,
                     config.data.channels, config.data.resize,
                     {"kind": config.data.kind, "aliases": dict(config.data.aliases),
                      **({"classes": list(config.data.classes)} if config.data.classes else {})},
                     model_section_dict(config.model), parameter_counts(model),
                     {"data": f"{config.data.kind}:{config.data.path}", "splits": counts,
                      "split_rule": split_rule(config), "seed": config.train.seed, "phases": session.summary(),
                      **({"init_from": config.train.init_from} if config.train.init_from else {}),
                      **({"refit_from": {"source": config.train.refit_from, "name": source["name"],
                                         "epochs": final_epochs}} if source is not None else {})},
                     typed_outputs([tuple(o.shape) for o in model.outputs], labels, task.labels is not None))
    if len(model.inputs[0].shape) == 5:  # a clip model (fetalnet video, slowfast): T frames per input
        card["preprocessing"]["clip_length"] = config.data.clip_length
        card["preprocessing"]["clips_per_video"] = config.data.clips_per_video
        card["input"]["shape"].insert(1, config.data.clip_length)
    predictor = Predictor(str(run_dir / "model.keras"), card, keras_predict_fn(model))
    if source is not None:
        card["postprocessing"] = {**source["postprocessing"], "source": config.train.refit_from}
    elif chooser := task_of_card(card).load("postprocessing"):  # a frame segmenter's, chosen on validation
        choice = chooser(predictor, in_split(records, "val"), config.train.batch_size, progress)
        card["postprocessing"] = keep_candidates(run_dir, choice)
    write_card(run_dir, card)
    test = [r for r in records if r.split == "test"]
    data = f"{config.data.kind}:{config.data.path}"
    if test:
        progress("[4/4] evaluating the selected model on the test split")
        results = evaluate(predictor, test, data, "test", config.data.on_bad_input, config.train.batch_size, progress)
        card["metrics"] = {"test": results["metrics"], "n_test": results["n"]}
    else:  # every item trained or selected on (a final fit after cross-validation): nothing left to measure
        progress("[4/4] no test split (data.test_fraction=0): the model is not measured here")
        results = {"model": str(run_dir / "model.keras"), "data": data, "split": "test", "task": task.name, "n": 0,
                   "metrics": {}, "timings": {}}
    results["timings"]["train_seconds"] = sum(p["seconds"] for p in session.summary().values())
    results["phases"] = session.summary()
    atomic_write_json(run_dir / "results.json", results)
    write_card(run_dir, card)
    if test:
        progress("      " + summary_line(results))
    return run_dir


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """`default`: the current (single-device) strategy; `mirrored`: synchronous data parallelism over the local
    GPUs (or logical CPU devices where there are none); `multi_worker`: the same across the nodes in TF_CONFIG."""
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _write_run_files(config: RunConfig, records: Sequence[Record]) -> None:
    save_config(config, config.run_dir / "config.yaml")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "label", "group", "split", "extras"])
    writer.writerows([r.source, r.label, r.group, r.split, json.dumps(r.extras) if r.extras else ""]
                     for r in records)
    atomic_write_text(config.run_dir / "splits.csv", buffer.getvalue())
