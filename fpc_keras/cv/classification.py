"""Cross-validated classifiers (of images or whole videos): each fold's per-item predictions of the float model, of
its exports and of its flip-TTA twin, pooled over the folds with paired changes against float (what quantisation or
TTA costs or gains, item by item)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BadInputError
from ..io import read_json
from ..metrics import macro_f1, with_ci
from ..tasks import task_of_card
from . import check_one_split, paired_items

def quantisation_fold(run_dir: str | Path, fold: int, folds: int, variants: Sequence[str], flip: bool = False) -> dict:
    """What pooling the cost of quantisation needs from a finished fold of a classifier: each test image's label
    and the class its float model and each export predict, and which export the fold chose on validation
    (`exports/choice.json`). Predicted afresh from the model files, so a stale card cannot leak in. `flip`: also
    the float model with flip TTA in its graph (`models.tta`), as the `flip` variant."""
    from ..evaluate import class_probabilities, load_predictor
    from ..export import train_records
    from ..training.phase import kept_validation

    run_dir = Path(run_dir)
    card = read_json(run_dir / "model_card.json")
    if task_of_card(card).name not in ("classification", "video"):
        raise BadInputError(f"{run_dir} is a {card['task']} model",
                            "pool quantisation folds of image or video classifiers")
    records = [r for r in train_records(run_dir) if r.split == "test"]
    if not records:
        raise BadInputError(f"{run_dir} has no test split", "cross-validate with data.folds >= 2")
    models = {"float": run_dir}
    for variant in variants:
        models[variant] = run_dir / "exports" / variant / "model.tflite"
        if not models[variant].is_file():
            raise BadInputError(f"{models[variant]} does not exist",
                                f"fpc-keras export --model {run_dir} --quant {variant}")
    predictors = {name: load_predictor(path) for name, path in models.items()}
    if flip:
        predictors["flip"] = _flip_predictor(predictors["float"], run_dir / "model.keras")
    labels = card["labels"]
    predicted = {name: class_probabilities(predictor, records).argmax(axis=1) for name, predictor in predictors.items()}
    choice = run_dir / "exports" / "choice.json"
    val_macro_f1 = kept_validation(card["training"].get("phases", {}))[0]
    return {"run": run_dir.name, "fold": fold, "folds": folds,
            "chosen": read_json(choice)["chosen"] if choice.is_file() else None,
            "val_macro_f1": None if np.isnan(val_macro_f1) else val_macro_f1,
            "items": [{"file": Path(r.source).name, "label": r.label,
                       **{name: labels[int(p[i])] for name, p in predicted.items()}} for i, r in enumerate(records)]}


def _flip_predictor(float_model, model_file: Path):
    import keras

    from ..models.tta import build_flip_tta
    from ..predictor import Predictor, keras_predict_fn

    tta = build_flip_tta(keras.saving.load_model(model_file, compile=False))
    return Predictor(float_model.path, float_model.card, keras_predict_fn(tta))


def pooled_quantisation(folds: Sequence[dict]) -> dict:
    """Test top-1 of the float models and of each export pooled over the folds (every image tested once, by a model
    that never saw it), and each export's paired change against float: the mean over images of (export right) -
    (float right), with a bootstrap CI, and the images it lost and gained. `chosen`: each fold's export chosen on
    its validation split, which is what a user ships."""
    if not folds:
        raise BadInputError("no stored folds to pool", "run at least one fold with --folds K")
    check_one_split(folds)
    with_choice = all(f["chosen"] in f["items"][0] for f in folds if f["items"])
    items = [{**item, **({"chosen": item[f["chosen"]]} if with_choice else {})} for f in folds for item in f["items"]]
    # A variant some fold lacks (folds run with other --variants) is left out, not scored as wrong on those folds.
    variants = [name for name in items[0] if name not in ("file", "label", "float") and all(name in i for i in items)]
    right = {name: np.array([item[name] == item["label"] for item in items], np.float64)
             for name in ("float", *variants)}
    n = len(items)
    val = [f.get("val_macro_f1") for f in folds]
    out = {"folds_done": sorted(f["fold"] for f in folds), "folds": folds[0]["folds"], "n": n,
           "val_macro_f1": float(np.mean(val)) if None not in val else None,
           "float": with_ci(lambda idx: right["float"][idx].mean(), n),
           "float_macro_f1": _pooled_macro_f1(items, "float"), "float_recall": _pooled_recall(items, "float"),
           "variants": {}}
    for name in variants:
        change = right[name] - right["float"]
        out["variants"][name] = {
            "top1": with_ci(lambda idx, r=right[name]: r[idx].mean(), n), "macro_f1": _pooled_macro_f1(items, name),
            "recall": _pooled_recall(items, name),
            "change": with_ci(lambda idx, c=change: c[idx].mean(), n),
            "lost": int((change < 0).sum()), "gained": int((change > 0).sum()),
            "agreement": float(np.mean([item[name] == item["float"] for item in items]))}
    return out


def _pooled_macro_f1(items: Sequence[dict], model: str) -> dict:
    """Macro-F1 of `model`'s predictions over the pooled items, with a bootstrap CI over images. A class that is
    predicted but carried by no pooled item (a partial store) counts as a class of its own with F1 0, as sklearn's
    macro-F1 over the observed labels does, not as some other class."""
    labels = sorted({item["label"] for item in items} | {item[model] for item in items})
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index[item["label"]] for item in items])
    predicted = np.array([index[item[model]] for item in items])
    return with_ci(lambda idx: macro_f1(truth[idx], predicted[idx], len(labels)), len(items))


def _pooled_recall(items: Sequence[dict], model: str) -> dict[str, float]:
    """Recall of each class (the share of its pooled items that `model` labels as it): what a per-class target
    reads, and what a good top-1 can hide on a small class."""
    labels = sorted({item["label"] for item in items})
    return {label: float(np.mean([item[model] == label for item in items if item["label"] == label]))
            for label in labels}


def pooled_quantisation_table(pooled: dict) -> str:
    """Markdown: float, then each export (and the per-fold validation choice) with its paired change."""
    def cell(metric: dict, scale: float = 1.0, sign: str = "") -> str:
        lo, hi = (v * scale for v in metric["ci95"])
        return f"{metric['value'] * scale:{sign}.2f} [{lo:{sign}.2f}, {hi:{sign}.2f}]"

    def f1(entry: dict, key: str) -> str:  # stores pooled before macro-F1 was pooled have none
        return cell(entry[key], 100) if key in entry else "-"

    lines = [f"| model ({len(pooled['folds_done'])} of {pooled['folds']} folds, {pooled['n']} test items) "
             "| top-1 % [95 % CI] | macro-F1 % [95 % CI] | change vs float, points [95 % CI] "
             "| lost / gained items | agreement with float |", "|---|---|---|---|---|---|",
             f"| float (Keras) | {cell(pooled['float'], 100)} | {f1(pooled, 'float_macro_f1')} | - | - | - |"]
    for name, v in pooled["variants"].items():
        label = {"chosen": "chosen on each fold's validation", "flip": "float + flip TTA (in the graph)"}.get(name, name)
        lines.append(f"| {label} | {cell(v['top1'], 100)} | {f1(v, 'macro_f1')} | {cell(v['change'], 100, '+')} | "
                     f"{v['lost']} / {v['gained']} | {v['agreement']:.3f} |")
    if "float_recall" in pooled:  # stores pooled before recall was pooled have none
        recalls = {"float": pooled["float_recall"], **{k: v["recall"] for k, v in pooled["variants"].items()}}
        classes = list(pooled["float_recall"])
        lines += ["", f"| recall | {' | '.join(classes)} |", "|---" * (len(classes) + 1) + "|",
                  *(f"| {name} | {' | '.join(f'{r[c]:.3f}' for c in classes)} |" for name, r in recalls.items())]
    if pooled.get("val_macro_f1") is not None:  # what a choice among recipes reads (stores before it: none)
        lines.append(f"\nMean validation macro-F1 of the float models over the folds: {pooled['val_macro_f1']:.4f}")
    return "\n".join(lines) + "\n"


def paired_classification(folds: Sequence[dict], baseline: Sequence[dict]) -> dict:
    """This recipe against a baseline recipe, image by image, over the test images both CVs have measured: for the
    float models and for each export both have, the mean of (this right) - (baseline right) with a bootstrap CI,
    the images only this recipe gets right (`better`) and only the baseline does (`worse`), and how often the two
    predict the same class. Two runs of one recipe with different seeds give its run-to-run spread."""
    pairs = paired_items(folds, baseline)
    for mine, theirs in pairs:
        if mine["label"] != theirs["label"]:
            raise BadInputError(f"{mine['file']} is {mine['label']!r} in one CV and {theirs['label']!r} in the other",
                                "compare cross-validations of the same data under the same label rule")
    if not pairs:
        raise BadInputError("the two CVs have no test image in common", "compare cross-validations of the same data")
    models = [name for name in pairs[0][0] if name not in ("file", "label") and all(
        name in mine and name in theirs for mine, theirs in pairs)]
    out = {}
    for name in models:
        mine = np.array([a[name] == a["label"] for a, _ in pairs], np.float64)
        theirs = np.array([b[name] == b["label"] for _, b in pairs], np.float64)
        change = mine - theirs
        out[name] = {"n": len(pairs), "top1": float(mine.mean()), "baseline_top1": float(theirs.mean()),
                     "change": with_ci(lambda idx, c=change: c[idx].mean(), len(pairs)),
                     "better": int((change > 0).sum()), "worse": int((change < 0).sum()),
                     "agreement": float(np.mean([a[name] == b[name] for a, b in pairs]))}
    return out


def paired_classification_table(paired: dict, recipe: str, baseline: str) -> str:
    """Markdown: per model (float, each export), both top-1s and the paired change with its CI."""
    lines = [f"| model | n images | {recipe} top-1 % | {baseline} top-1 % | change, points [95 % CI] "
             "| better / worse images | same class predicted |", "|---|---|---|---|---|---|---|"]
    for name, v in paired.items():
        lo, hi = (100 * x for x in v["change"]["ci95"])
        lines.append(f"| {name} | {v['n']} | {100 * v['top1']:.2f} | {100 * v['baseline_top1']:.2f} | "
                     f"{100 * v['change']['value']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {v['better']} / {v['worse']} | "
                     f"{v['agreement']:.3f} |")
    return "\n".join(lines) + "\n"


def cv_card_metrics(pooled: dict, variant: str, store: str) -> dict:
    """The card metrics of a model shipped from a cross-validated recipe: the pooled figures of `variant` (an export
    the CV measured) over every fold, with the float model's beside them. The shipped weights are the recipe refit
    on every image, so no held-out split of its own is left: the CV is the estimate to quote."""
    measured = pooled["variants"][variant]
    return {"cv": {"variant": variant, "top1": measured["top1"], "macro_f1": measured.get("macro_f1"),
                   "recall": measured.get("recall"),
                   "float": {"top1": pooled["float"], "macro_f1": pooled.get("float_macro_f1"),
                             "recall": pooled.get("float_recall")},
                   "n": pooled["n"], "folds": pooled["folds"], "folds_done": pooled["folds_done"], "store": store,
                   "protocol": "K-fold cross-validation over subject, source or near-duplicate groups: every item "
                               "(image or video) tested once, by a model that never saw it nor its group; the "
                               "shipped weights are the recipe refit on every item"}}
