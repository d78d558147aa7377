"""One evaluator for every task and every model format (run folder, `.keras`, `.tflite`).

    fpc-keras evaluate --model PATH --data KIND:PATH [--split test] --out FILE.json

The model's card (labels, label rule, preprocessing) travels with it, so nothing else is needed. Results are
written atomically as {"model", "data", "split", "task", "n", "metrics": {name: {"value", "ci95"}}, ...}.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from . import postprocess
from .card import card_path_for, provenance, read_card, write_card
from .data.datasets import TASK_OF_KIND, parse_data_spec, read_dataset, split_records
from .data.duplicates import RULE_BEFORE_DUPLICATES
from .data.hc18 import read_mask
from .data.images import image_size_of
from .data.records import Record, in_split, keep_classes
from .data.video import model_clips, read_video
from .errors import BadInputError
from .io import atomic_write_json, read_json
from .metrics import classification_metrics, dice_iou, mean_metrics
from .predictor import PredictFn, Predictor, keras_predict_fn

if TYPE_CHECKING:
    from .biometry import Ellipse

def load_predictor(path: str | Path, threads: int = 2) -> Predictor:
    """A run folder (its model.keras), a `.keras` file or a `.tflite` file, with the card beside it."""
    path = Path(path)
    model_file = path / "model.keras" if path.is_dir() else path
    if not model_file.is_file():
        raise BadInputError(f"model not found: {model_file}",
                            "give a run folder that finished training, a .keras file or a .tflite file")
    card = read_card(model_file)
    if model_file.suffix == ".tflite":
        from .litert import TFLiteModel

        return Predictor(str(model_file), card, TFLiteModel(model_file, threads))
    if model_file.suffix == ".keras":
        return Predictor(str(model_file), card, _keras_predict(model_file))
    raise BadInputError(f"{model_file} is neither .keras nor .tflite", "give a run folder, .keras or .tflite")


def _keras_predict(model_file: Path) -> PredictFn:
    import keras

    from . import models  # noqa: F401  (registers custom layers)

    return keras_predict_fn(keras.saving.load_model(model_file, compile=False))


def evaluate(predictor: Predictor, records: Sequence[Record], data: str, split: str | None,
             on_bad_input: str = "error", batch_size: int = 16, progress: Callable[[str], None] = print,
             keep_probabilities: bool = False) -> dict:
    """Run the predictor over `records` and compute the metrics of its task. With `keep_probabilities`, an image
    classifier's results also carry `probabilities` (a numpy array, one row per item kept, in the records' order;
    not JSON), so that a caller comparing it with another model does not run it twice."""
    start = time.perf_counter()
    items = probs = None
    if predictor.task == "classification":
        metrics, n, skipped, probs = _classification(predictor, records, on_bad_input, batch_size, progress)
    elif predictor.task == "segmentation" and int(predictor.card["preprocessing"].get("clip_length", 1)) > 1:
        metrics, n, skipped = _sweep_segmentation(predictor, records, progress)
    elif predictor.task == "segmentation":
        metrics, n, skipped, items = _segmentation(predictor, records, on_bad_input, batch_size, progress)
    elif predictor.task == "video":
        metrics, n, skipped = _video(predictor, records, on_bad_input, progress)
    else:
        raise BadInputError(f"model card task {predictor.task!r} unknown", "re-export the model")
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


def _predict_images(predictor: Predictor, records: Sequence[Record], on_bad_input: str, batch_size: int,
                    progress: Callable[[str], None], predict: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """`predict` (default: the predictor's own) over the records' images -> outputs, indices kept, skips."""
    from .data.pipeline import SkipLog, image_dataset

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


def _classification(predictor: Predictor, records: Sequence[Record], on_bad_input: str, batch_size: int,
                    progress: Callable[[str], None]):
    _check_labels(records, predictor.labels)
    probs, kept, skipped = _predict_images(predictor, records, on_bad_input, batch_size, progress)
    index = {label: i for i, label in enumerate(predictor.labels)}
    y_true = np.array([index[records[i].label] for i in kept])
    return classification_metrics(y_true, probs, predictor.labels), len(kept), skipped, probs


def class_probabilities(predictor: Predictor, records: Sequence[Record], batch_size: int = 16) -> np.ndarray:
    """An image classifier's probabilities for every record (every image must read), in the records' order."""
    probs, _, _ = _predict_images(predictor, records, "error", batch_size, lambda message: None)
    return probs


def fidelity(reference: np.ndarray, probs: np.ndarray) -> dict:
    """How closely an exported classifier follows its float model on the same items: top-1 agreement and the
    mean absolute difference of the class probabilities (steadier than comparing two accuracies on a small
    split, where one flipped image moves top-1 by a point)."""
    return {"top1_agreement": float(np.mean(reference.argmax(axis=1) == probs.argmax(axis=1))),
            "mean_abs_prob_diff": float(np.mean(np.abs(reference - probs))), "n": len(probs)}


def _check_labels(records: Sequence[Record], labels: Sequence[str]) -> None:
    unknown = sorted({str(r.label) for r in records} - set(labels))
    if unknown:
        example = next(r.source for r in records if str(r.label) == unknown[0])
        raise BadInputError(f"class(es) {unknown} (e.g. {example}) are not among the model's classes {list(labels)}",
                            "map them with --alias OLD=NEW, or evaluate only data of the model's classes")


def _segmentation(predictor: Predictor, records: Sequence[Record], on_bad_input: str, batch_size: int,
                  progress: Callable[[str], None]):
    """Dice, IoU, Hausdorff (mm) and head-circumference error (mm) on annotated items; every item (annotated or
    not, e.g. HC18's test_set) gets its fitted ellipse in `items` (Bland-Altman data, the challenge CSV). Masks
    follow the card's post-processing (mirrored averaging, threshold, shape)."""
    post = postprocess.settings(predictor.card)
    probs, kept, skipped = _predict_images(predictor, records, on_bad_input, batch_size, progress,
                                           _mask_predict(predictor, post["flip"]))
    resize = predictor.card["preprocessing"]["resize"]
    per_item: dict[str, list[float]] = {"dice": [], "iou": [], "hausdorff_mm": [], "hc_mad_mm": []}
    items = []
    for prob, i in zip(probs, kept):
        item = _measure(records[i], prob, resize, post["threshold"], post["shape"])
        items.append(item)
        if "dice" in item:
            for name in per_item:
                per_item[name].append(item[name])
    metrics = mean_metrics(per_item)
    if items and not per_item["dice"]:
        progress("      no annotated item: ellipses only (no Dice / HC error)")
    errors = [item["hc_mm"] - item["hc_true_mm"] for item in items if item.get("hc_true_mm") and item["hc_mm"]]
    if errors:
        bias, spread = float(np.mean(errors)), float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0
        metrics["bland_altman"] = {"bias_mm": bias, "limits_mm": [bias - 1.96 * spread, bias + 1.96 * spread],
                                   "n": len(errors)}
    return metrics, len(kept), skipped, items


def _mask_predict(predictor: Predictor, flip: bool) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: postprocess.mask_probabilities(predictor.predict, batch, flip)


def _measure(record: Record, probs: np.ndarray, resize: str, threshold: float, shape: str = "mask",
             truth: np.ndarray | None = None) -> dict:
    """One item's delivered mask on the original pixel grid, scored (`truth`: the annotation's mask when already
    read)."""
    if truth is None and record.extras.get("mask"):
        truth = read_mask(record.extras["mask"])
    original = truth.shape if truth is not None else image_size_of(record.source)
    return _scored(record, *postprocess.segment(probs, original, resize, threshold, shape), truth)


def _scored(record: Record, predicted: np.ndarray, ellipse: Ellipse | None, truth: np.ndarray | None,
            hausdorff: bool = True) -> dict:
    """One item: its ellipse and HC, and the errors of the delivered mask against the annotation where there is
    one."""
    from .biometry import hausdorff_mm

    pixel_mm = record.extras.get("pixel_mm")
    hc = ellipse.circumference * pixel_mm if ellipse is not None and pixel_mm else None
    item = {"source": record.source, "mask": record.extras.get("mask"), "pixel_mm": pixel_mm, "hc_mm": hc,
            "hc_true_mm": record.extras.get("hc_mm"),
            "ellipse": None if ellipse is None else [ellipse.cx, ellipse.cy, ellipse.a, ellipse.b, ellipse.angle]}
    if truth is not None:
        item["dice"], item["iou"] = dice_iou(predicted, truth)
        if hausdorff:
            item["hausdorff_mm"] = hausdorff_mm(predicted, truth, pixel_mm or 1.0)
        item["hc_mad_mm"] = abs(hc - item["hc_true_mm"]) if hc is not None and item["hc_true_mm"] else np.nan
    return item


POSTPROCESS_THRESHOLDS = tuple(np.round(np.arange(0.3, 0.701, 0.05), 2))


def choose_postprocessing(predictor: Predictor, records: Sequence[Record], batch_size: int = 16,
                          progress: Callable[[str], None] = print) -> dict:
    """Mirrored averaging on or off, the mask threshold and the delivered shape (mask or fitted ellipse), chosen on
    annotated `records` (the validation split, never test): the lowest mean HC error where the items carry a true
    HC, then (the HC being the same for both shapes) the highest Dice; else the highest Dice."""
    records = [r for r in records if r.extras.get("mask")]
    if not records:
        raise BadInputError("no annotated validation item to choose the mask threshold on",
                            "keep a validation split with annotations (data.val_fraction > 0)")
    truths = {r.source: read_mask(r.extras["mask"]) for r in records}
    resize = predictor.card["preprocessing"]["resize"]
    rows, by_hc = [], all(r.extras.get("hc_mm") for r in records)
    pairs, kept, _ = _predict_images(predictor, records, "error", batch_size, lambda m: None,
                                     lambda batch: postprocess.with_mirrored(predictor.predict, batch))
    for flip in (False, True):  # one pass over the images serves every candidate
        probs = pairs.mean(axis=1) if flip else pairs[:, 0]
        for threshold in POSTPROCESS_THRESHOLDS:  # one ellipse fit per item serves both shapes
            fits = [(records[i], truths[records[i].source],
                     *postprocess.mask_and_ellipse(p, truths[records[i].source].shape, resize, float(threshold)))
                    for p, i in zip(probs, kept)]
            for shape in postprocess.SHAPES:
                items = [_scored(record, postprocess.delivered(mask, ellipse, shape), ellipse, truth, hausdorff=False)
                         for record, truth, mask, ellipse in fits]
                rows.append(_candidate(items, flip, float(threshold), shape, by_hc))

    def rank(row: dict) -> tuple[int, float, float]:  # fewest items without an ellipse, HC error, Dice
        hc = (math.inf if row["hc_mad_mm"] is None else row["hc_mad_mm"]) if by_hc else 0.0
        return row["no_ellipse"], hc, -row["dice"]
    best = min(rows, key=rank)
    progress(f"      post-processing chosen on validation (n={len(records)}, by {'HC error' if by_hc else 'Dice'}): "
             f"threshold {best['threshold']}, mirrored averaging {'on' if best['flip'] else 'off'}, "
             f"{best['shape']} (Dice {best['dice']:.4f}" +
             (f", HC error {best['hc_mad_mm']:.3f} mm)" if by_hc else ")"))
    return {"threshold": best["threshold"], "flip": best["flip"], "shape": best["shape"], "chosen_on": "val",
            "n": len(records), "criterion": "hc_mad_mm" if by_hc else "dice", "candidates": rows}


def _candidate(items: list[dict], flip: bool, threshold: float, shape: str, by_hc: bool) -> dict:
    """One post-processing candidate's validation scores (the HC error over the items with an ellipse)."""
    hc = np.array([item["hc_mad_mm"] for item in items if item["ellipse"] is not None], dtype=float)
    return {"flip": flip, "threshold": threshold, "shape": shape,
            "dice": float(np.mean([item["dice"] for item in items])),
            "hc_mad_mm": float(np.nanmean(hc)) if by_hc and len(hc) else None,
            "no_ellipse": sum(item["ellipse"] is None for item in items)}


def _sweep_segmentation(predictor: Predictor, records: Sequence[Record], progress: Callable[[str], None]):
    """Video segmenters on sweeps built from annotated images (fpc_keras.data.sweeps; item i always gives the same
    sweep): per-frame Dice on the model's grid, per-frame plane accuracy, and best-frame detection (the frame the
    plane head rates most likely standard, within one frame of the sweep's true standard plane)."""
    from .data.pipeline import segmentation_arrays, sweep_arrays

    frames = int(predictor.card["preprocessing"]["clip_length"])
    images, masks = segmentation_arrays([r for r in records if "mask" in r.extras], predictor.image_spec(), progress)
    clips, clip_masks, labels, best = sweep_arrays(images, masks, frames)
    per_item: dict[str, list[float]] = {"sweep_dice": [], "plane_accuracy": [], "best_frame_within_1": [],
                                        "best_frame_error": []}
    for clip, truth, label, centre in zip(clips, clip_masks, labels, best):
        batch = clip[None].astype(np.float32)
        predicted, plane = (output[0] for output in predictor.predict(batch, None))  # one inference, both outputs
        per_item["sweep_dice"].append(float(np.mean([dice_iou(p[..., 0] > 0.5, t[..., 0] > 127)[0]
                                                     for p, t in zip(predicted, truth)])))
        per_item["plane_accuracy"].append(float((plane.argmax(axis=-1) == label).mean()))
        error = abs(int(plane[:, 0].argmax()) - int(centre))
        per_item["best_frame_within_1"].append(float(error <= 1))
        per_item["best_frame_error"].append(float(error))
    return mean_metrics(per_item), len(clips), {}


def _video(predictor: Predictor, records: Sequence[Record], on_bad_input: str, progress: Callable[[str], None]):
    """Mean of the softmax outputs over evenly spaced clips (clip models) or frames (frame models)."""
    _check_labels(records, predictor.labels)
    pre = predictor.card["preprocessing"]
    clip_length = int(pre.get("clip_length", 1))
    clips = int(pre.get("clips_per_video", 4))
    spec = predictor.image_spec()
    probs, y_true, skipped, decode_ms, infer_ms = [], [], {}, [], []
    index = {label: i for i, label in enumerate(predictor.labels)}
    for n, record in enumerate(records, start=1):
        start = time.perf_counter()
        try:
            frames = read_video(record.source, spec.size, spec.channels, spec.resize).astype(np.float32)
        except BadInputError as exc:
            if on_bad_input != "skip":
                raise
            skipped[record.source] = exc.what
            continue
        decoded = time.perf_counter()
        probs.append(predictor.predict(model_clips(frames, clip_length, clips)).mean(axis=0))
        decode_ms.append(1000 * (decoded - start))
        infer_ms.append(1000 * (time.perf_counter() - decoded))
        y_true.append(index[record.label])
        if n % 10 == 0:
            progress(f"  videos: {n}/{len(records)}")
    if not probs:
        raise BadInputError("no readable video to evaluate", "check the data; every file was skipped")
    metrics = classification_metrics(np.array(y_true), np.stack(probs), predictor.labels)
    metrics["video_top1"] = metrics["top1"]
    metrics["latency_ms"] = _video_latency(decode_ms, infer_ms, clips)
    return metrics, len(y_true), skipped


def _video_latency(decode_ms: list[float], infer_ms: list[float], clips: int) -> dict:
    """Per video: decoding (all frames, resized) and inference (`clips` clips), median and p90, in this process."""
    def summary(values) -> dict:
        return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90))}
    return {"decode": summary(decode_ms), "inference": summary(infer_ms),
            "total": summary(np.add(decode_ms, infer_ms)), "clips_per_video": clips}


def _split_as_trained(records: list[Record], card: dict) -> list[Record]:
    """Data without an official split, split by the rule (fractions, seed) the model was trained with, so
    `--split test` on the training data means the test split of training."""
    rule = card.get("training", {}).get("split_rule")
    if not rule:
        raise BadInputError("this data has no split and the model card records no split rule",
                            "evaluate all items (leave out --split)")
    rule = {**RULE_BEFORE_DUPLICATES, **rule}
    return split_records(records, rule["val_fraction"], rule["test_fraction"], rule["seed"], rule.get("folds", 0),
                         rule.get("fold", 0), rule["duplicates"], rule["duplicate_distance"])


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
    if out:
        atomic_write_json(out, results)
    progress(summary_line(results))
    return results


def _model_records(predictor: Predictor, model: str, data: str, aliases: dict[str, str] | None,
                   progress: Callable[[str], None]) -> list[Record]:
    """`KIND:PATH`'s items that `model` can be measured on: data of its task, its label rule and classes."""
    kind, path = parse_data_spec(data)
    expected = TASK_OF_KIND[kind]
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
    if predictor.task != "segmentation" or int(predictor.card["preprocessing"].get("clip_length", 1)) > 1:
        raise BadInputError(f"{model} is a {predictor.task} model of clips or classes: only frame segmenters have "
                            "post-processing", "give a frame segmentation run folder or exported frame segmenter")
    records = _model_records(predictor, model, data, None, progress)
    if not any(r.split for r in records):
        records = _split_as_trained(records, predictor.card)
    card = predictor.card  # the evaluator reads the post-processing from it
    previous = postprocess.settings(card)
    card["postprocessing"] = {**choose_postprocessing(predictor, in_split(records, "val"), progress=progress),
                              "previous": previous}
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

