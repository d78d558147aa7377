"""One evaluator for every task and every model format (run folder, `.keras`, `.tflite`); the metrics of each
task in its own module (images.py runs a predictor over images, segmentation.py, video.py).

    fpc-keras evaluate --model PATH --data KIND:PATH [--split test] --out FILE.json

The model's card (labels, label rule, preprocessing) travels with it, so nothing else is needed. Results are
written atomically as {"model", "data", "split", "task", "n", "metrics": {name: {"value", "ci95"}}, ...}.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..card import card_path_for, provenance, read_card, write_card
from ..data.datasets import RULE_DEFAULTS, parse_data_spec, read_dataset, split_records
from ..data.records import Record, in_split, keep_classes, keep_training_fraction
from ..data.sources import data_source
from ..errors import BadInputError
from ..familiarity import seen_items
from ..io import atomic_write_json, read_json
from ..postprocess import choose_postprocessing, keep_candidates, settings
from ..predictor import PredictFn, Predictor, keras_predict_fn
from ..tasks import task_of_card, task_of_kind
from .images import predict_images

__all__ = ["Predictor", "choose_postprocessing", "class_probabilities", "evaluate", "evaluate_path", "fidelity",
           "keras_predict_fn", "load_predictor", "rechoose_postprocessing", "summary_line"]



def load_predictor(path: str | Path, threads: int = 2) -> Predictor:
    """A run folder (its model.keras), a `.keras` file or a `.tflite` file, with the card beside it."""
    path = Path(path)
    model_file = path / "model.keras" if path.is_dir() else path
    if not model_file.is_file():
        raise BadInputError(f"model not found: {model_file}",
                            "give a run folder that finished training, a .keras file or a .tflite file")
    card = read_card(model_file)
    if model_file.suffix == ".tflite":
        from ..litert import TFLiteModel

        return Predictor(str(model_file), card, TFLiteModel(model_file, threads))
    if model_file.suffix == ".keras":
        return Predictor(str(model_file), card, _keras_predict(model_file))
    raise BadInputError(f"{model_file} is neither .keras nor .tflite", "give a run folder, .keras or .tflite")


def _keras_predict(model_file: Path) -> PredictFn:
    import keras

    from .. import models  # noqa: F401  (registers custom layers)

    return keras_predict_fn(keras.saving.load_model(model_file, compile=False))


def evaluate(predictor: Predictor, records: Sequence[Record], data: str, split: str | None,
             on_bad_input: str = "error", batch_size: int = 16, progress: Callable[[str], None] = print,
             keep_probabilities: bool = False) -> dict:
    """Run the predictor over `records` and compute the metrics of its task. With `keep_probabilities`, an image
    classifier's results also carry `probabilities` (a numpy array, one row per item kept, in the records' order;
    not JSON), so that a caller comparing it with another model does not run it twice."""
    start = time.perf_counter()
    measured = task_of_card(predictor.card).load("metrics")(predictor, records, on_bad_input, batch_size, progress)
    metrics, n, skipped, items, probs = measured
    seconds = time.perf_counter() - start
    results = {"model": predictor.path, "model_name": predictor.card.get("name"), "data": data, "split": split,
               "task": predictor.task, "n": n, "n_skipped": len(skipped), "skipped": skipped, "metrics": metrics,
               "timings": {"seconds": seconds, "per_item_ms": 1000 * seconds / max(n, 1)},
               "params": predictor.card.get("params", {}), "provenance": provenance()}
    if items is not None:
        results["items"] = items
    if keep_probabilities and probs is not None:
        results["probabilities"] = probs
    return results


def class_probabilities(predictor: Predictor, records: Sequence[Record], batch_size: int = 16) -> np.ndarray:
    """A classifier's probabilities for every record (every image or video must read), in the records' order: an
    image classifier's per image, a video classifier's per video (the mean of its clips)."""
    if task_of_card(predictor.card).name == "video":
        from .video import video_probabilities

        return video_probabilities(predictor, records)
    probs, _, _ = predict_images(predictor, records, "error", batch_size, lambda message: None)
    return probs


def fidelity(reference: np.ndarray, probs: np.ndarray) -> dict:
    """How closely an exported classifier follows its float model on the same items: top-1 agreement and the
    mean absolute difference of the class probabilities (steadier than comparing two accuracies on a small
    split, where one flipped image moves top-1 by a point)."""
    return {"top1_agreement": float(np.mean(reference.argmax(axis=1) == probs.argmax(axis=1))),
            "mean_abs_prob_diff": float(np.mean(np.abs(reference - probs))), "n": len(probs)}


def _split_as_trained(records: list[Record], card: dict) -> list[Record]:
    """Data without an official split, split by the rule (fractions, seed) the model was trained with, so
    `--split test` on the training data means the test split of training."""
    rule = card.get("training", {}).get("split_rule")
    if not rule:
        raise BadInputError("this data has no split and the model card records no split rule",
                            "evaluate all items (leave out --split)")
    rule = {**RULE_DEFAULTS, **rule}
    records = split_records(records, rule["val_fraction"], rule["test_fraction"], rule["seed"], rule.get("folds", 0),
                            rule.get("fold", 0), rule["duplicates"], rule["duplicate_distance"], rule["split_quota"])
    return keep_training_fraction(records, rule["train_fraction"], rule["seed"])


def _model_classes(records: list[Record], classes: Sequence[str], progress: Callable[[str], None]) -> list[Record]:
    """The items of the classes a model was trained on (its card's `label_rule.classes`; all when it has none)."""
    kept = keep_classes(records, classes, require_all=False)
    if len(kept) < len(records):
        left = Counter(r.label for r in records if r.label not in set(classes))
        progress(f"      {len(records) - len(kept)} item(s) of classes the model was not trained on left out: "
                 f"{dict(sorted(left.items()))}")
    return kept


def summary_line(results: dict) -> str:
    parts = []
    for name in ("top1", "top2", "macro_f1", "video_top1", "dice", "iou", "hausdorff_mm", "hc_mad_mm", "sweep_dice",
                 "best_frame_within_1"):
        metric = results["metrics"].get(name)
        if isinstance(metric, dict) and "value" in metric:
            lo, hi = metric["ci95"]
            parts.append(f"{name} {metric['value']:.4f} [{lo:.4f}, {hi:.4f}]")
    skipped = f", {results['n_skipped']} skipped" if results.get("n_skipped") else ""
    return f"{results.get('model_name') or results['model']} on {results['data']} " \
           f"({results['split'] or 'all'}, n={results['n']}{skipped}): " + "; ".join(parts)


def evaluate_path(model: str, data: str, out: str | None = None, split: str | None = None,
                  aliases: dict[str, str] | None = None, on_bad_input: str = "error", threads: int = 2,
                  progress: Callable[[str], None] = print) -> dict:
    """The CLI's evaluate: model path + `KIND:PATH` (+ split) -> results (written to `out` when given)."""
    predictor = load_predictor(model, threads)
    records = _model_records(predictor, model, data, aliases, progress)
    if split is None and parse_data_spec(data)[0] == "fetal_planes":
        split = "test"
    if split is not None and not any(r.split for r in records):
        records = _split_as_trained(records, predictor.card)
    records = in_split(records, split)
    results = evaluate(predictor, records, data, split, on_bad_input, progress=progress)
    seen = None if _own_test_split(predictor.card, data, split) else seen_items(
        predictor.path, predictor.card, [r for r in records if r.source not in results["skipped"]], progress)
    if seen is not None:
        results["seen_in_training"] = seen
    if out:
        atomic_write_json(out, results)
    progress(summary_line(results))
    if seen and seen["items"]:
        progress(seen_warning(seen))
    return results


def _own_test_split(card: dict, data: str, split: str | None) -> bool:
    """The test split of the model's own training data: held out by its split rule (or the data's own split), so
    not checked against its input check's reference, which may hold every item of that data."""
    return split == "test" and data_source(data)["path"] == card.get("training", {}).get("data")


def seen_warning(seen: dict) -> str:
    return (f"warning: {seen['items']} of {seen['of']} items ({seen['copies']} exact copies) are (nearly) the "
            f"model's training data ({seen['fitted_on']}, by its input check: closer to a training item than "
            f"{seen['below']:.4f}); a score on them is not a held-out measure (the card's CV numbers are)")


def _model_records(predictor: Predictor, model: str, data: str, aliases: dict[str, str] | None,
                   progress: Callable[[str], None]) -> list[Record]:
    """`KIND:PATH`'s items that `model` can be measured on: data of its task, its label rule and classes."""
    kind, path = parse_data_spec(data)
    expected = task_of_kind(kind).name
    if expected != predictor.task:
        raise BadInputError(f"{model} is a {predictor.task} model but {kind} data is for {expected}",
                            "evaluate it on data of its own task")
    label_rule = predictor.card.get("label_rule", {})
    rule = dict(label_rule.get("aliases", {}))
    rule.update(aliases or {})
    return _model_classes(read_dataset(kind, path, rule), label_rule.get("classes", []), progress)


def rechoose_postprocessing(model: str, data: str, threads: int = 2, progress: Callable[[str], None] = print) -> dict:
    """A trained or exported segmenter's post-processing chosen again on its own validation split (split by its
    card's rule), e.g. once a new option exists, and its test split measured again under it. Rewrites the card
    beside the model (the previous settings kept in `postprocessing.previous`; `metrics.keras_test`, taken under
    them, dropped) and a run folder's results.json. Returns the new test results."""
    predictor = load_predictor(model, threads)
    if task_of_card(predictor.card).postprocessing is None:
        raise BadInputError(f"{model} is a {predictor.task} model of clips or classes: only frame segmenters have "
                            "post-processing", "give a frame segmentation run folder or exported frame segmenter")
    records = _model_records(predictor, model, data, None, progress)
    if not any(r.split for r in records):
        records = _split_as_trained(records, predictor.card)
    card = predictor.card  # the evaluator reads the post-processing from it
    previous = settings(card)
    choice = choose_postprocessing(predictor, in_split(records, "val"), progress=progress)
    card["postprocessing"] = {**keep_candidates(card_path_for(predictor.path).parent, choice), "previous": previous}
    results = evaluate(predictor, in_split(records, "test"), data, "test", progress=progress)
    metrics = {k: v for k, v in card.get("metrics", {}).items() if k != "keras_test"}
    card["metrics"] = {**metrics, "test": results["metrics"], "n_test": results["n"]}
    write_card(card_path_for(predictor.path).parent, card)
    run_results = Path(model) / "results.json"
    if run_results.is_file():
        kept = read_json(run_results)
        atomic_write_json(run_results, {**results, "timings": {**kept.get("timings", {}), **results["timings"]},
                                        "phases": kept.get("phases", {})})
    progress(summary_line(results))
    return results
