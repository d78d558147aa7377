"""An ensemble of finished runs as a run folder of its own: one Keras model averaging the members' class
probabilities (`models.ensemble`), its card, the members' common split and its test metrics, so that `fpc-keras
export`, `evaluate`, `predict` and the edge runner treat it as any run (one `.tflite`).

    fpc-keras ensemble runs/busi_lite0 runs/busi_lite1 --out runs/busi_lite0_lite1

The members must be classifiers (of images or videos) of the same classes, trained on the same split: their
`splits.csv` must agree item by item, so that no member saw the ensemble's test items.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Callable, Sequence

from .errors import BadInputError
from .io import atomic_path, atomic_write_json, read_json

Progress = Callable[[str], None]
ENSEMBLE_TASKS = ("classification", "video")


def ensemble_run(run_dirs: Sequence[str | Path], out: str | Path, progress: Progress = print) -> Path:
    """Build, save and measure the ensemble of `run_dirs` in `out` (its name: the folder's)."""
    import keras

    from .card import write_card
    from .evaluate import evaluate, summary_line
    from .export import train_records
    from .models import parameter_counts
    from .models.ensemble import build_ensemble
    from .predictor import Predictor, keras_predict_fn

    runs, out = [Path(r) for r in run_dirs], Path(out)
    cards = [member_card(run) for run in runs]
    _check_members(runs, cards)
    progress(f"[1/2] ensemble of {len(runs)} runs: {', '.join(r.name for r in runs)}")
    model = build_ensemble([keras.saving.load_model(r / "model.keras", compile=False) for r in runs], out.name)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    shutil.copyfile(runs[0] / "splits.csv", out / "splits.csv")
    card = {**cards[0], "name": out.name, "params": parameter_counts(model), "metrics": {},
            "ensemble": {"members": [{"run": r.name, "model": c["model"], "params": c["params"],
                                      "image_size": c["preprocessing"]["image_size"]} for r, c in zip(runs, cards)]}}
    predictor, records = Predictor(str(out / "model.keras"), card, keras_predict_fn(model)), train_records(out)
    card["training"] = {**cards[0]["training"], "phases": _validated(predictor, records, progress)}
    write_card(out, card)
    test = [r for r in records if r.split == "test"]
    results = {"model": str(out / "model.keras"), "data": card["training"]["data"], "split": "test",
               "task": card["task"], "n": 0, "metrics": {}, "timings": {}}
    if test:
        progress(f"[2/2] evaluating the ensemble on the members' test split ({len(test)} items)")
        results = evaluate(predictor, test, card["training"]["data"], "test", progress=progress)
        card["metrics"] = {"test": results["metrics"], "n_test": results["n"]}
        progress("      " + summary_line(results))
    results["timings"]["train_seconds"] = 0.0
    atomic_write_json(out / "results.json", results)
    write_card(out, card)
    return out


def _validated(predictor, records: list, progress: Progress) -> dict:
    """The card's `phases` of an ensemble: nothing trains, but its validation macro-F1 and log-loss on the members'
    validation split are recorded as a phase's best, so that it can be chosen among recipes as they are."""
    from .data.pipeline import label_ids
    from .evaluate import class_probabilities
    from .training.session import classification_score

    val = [r for r in records if r.split == "val"]
    if not val:
        return {}
    progress(f"      validating the ensemble on the members' validation split ({len(val)} items)")
    score, loss, _ = classification_score(lambda: class_probabilities(predictor, val),
                                          label_ids(val, predictor.labels))()
    return {"ensemble": {"epoch": 0, "best_epoch": 0, "best_score": float(score), "best_loss": loss, "seconds": 0.0}}


def member_card(run: Path) -> dict:
    if not (run / "model.keras").is_file() or not (run / "model_card.json").is_file():
        raise BadInputError(f"{run} is not a finished run (no model.keras and model_card.json)",
                            "name run folders that `fpc-keras train` finished")
    return read_json(run / "model_card.json")


def _check_members(runs: list[Path], cards: list[dict]) -> None:
    """Same task (a classifier), same classes in the same order, same input kind, same split item by item."""
    if len(runs) < 2:
        raise BadInputError(f"an ensemble needs 2 or more runs, got {len(runs)}", "name two runs or more")
    split = _split_of(runs[0])
    for run, card in zip(runs, cards):
        if card["task"] not in ENSEMBLE_TASKS:
            raise BadInputError(f"{run} is a {card['task']} model",
                                f"ensemble classifiers ({', '.join(ENSEMBLE_TASKS)})")
        if card["labels"] != cards[0]["labels"]:
            raise BadInputError(f"{run} has classes {card['labels']}, {runs[0]} {cards[0]['labels']}",
                                "ensemble runs trained on the same classes")
        clip = card["preprocessing"].get("clip_length"), card["preprocessing"].get("clips_per_video")
        if card["task"] != cards[0]["task"] or clip != (cards[0]["preprocessing"].get("clip_length"),
                                                        cards[0]["preprocessing"].get("clips_per_video")):
            raise BadInputError(f"{run} takes other inputs ({card['task']}, clips {clip}) than {runs[0]}",
                                "ensemble models of one task and one clip shape")
        if _split_of(run) != split:
            raise BadInputError(f"{run} was trained on another split than {runs[0]} (their splits.csv differ)",
                                "ensemble runs of one split (same data, data.folds / data.fold and data.split_seed, "
                                "else train.seed), so that no member saw the ensemble's test items")


def _split_of(run: Path) -> dict[str, str]:
    with (run / "splits.csv").open() as handle:
        return {row["source"]: f"{row['label']}/{row['split']}" for row in csv.DictReader(handle)}
