"""Shared by the experiment scripts: run a grid of configs (each a resumable run), choose on validation,
and write the comparison table that the report and the closing notes quote."""
from __future__ import annotations

import argparse
import os
from math import nan
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: its start-up chatter hides progress

import numpy as np  # noqa: E402

from . import postprocess  # noqa: E402
from .config import load_config  # noqa: E402
from .errors import BadInputError  # noqa: E402
from .io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from .metrics import macro_f1, mean_metrics, metrics_from_confusion, with_ci  # noqa: E402
from .training import train  # noqa: E402

Progress = Callable[[str], None]
SHOWN = ("top1", "top2", "macro_f1")
# The real datasets beside the repository (../shared/data), or wherever FPC_SHARED_DATA points.
SHARED_DATA = Path(os.environ.get("FPC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def add_common_arguments(parser: argparse.ArgumentParser, defaults: dict[str, str]) -> None:
    """--data NAME=KIND:PATH (repeatable), --fetal-planes PATH, --set KEY=VALUE, --runs DIR."""
    parser.add_argument("--data", action="append", default=[], metavar="NAME=KIND:PATH",
                        help=f"datasets to run (default: {', '.join(defaults)} from {SHARED_DATA}, "
                             "unless --fetal-planes is given)")
    parser.add_argument("--fetal-planes", metavar="PATH", help="FETAL_PLANES_DB zip or folder (the Zenodo archive)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every run")
    parser.add_argument("--runs", default="runs")


def add_folds_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="K-fold cross-validation by group: choose on the folds' mean validation macro-F1, "
                             "report test pooled over the folds (default: one train/val/test split)")


def variant_runner(folds: int) -> Callable[[str, Sequence[str]], dict]:
    """`run_variant` on one split, or `run_folds` over K group folds (runs named NAME_cvK_fold<i>)."""
    if not folds:
        return run_variant
    return lambda name, overrides: run_folds(f"{name}_cv{folds}", overrides, folds)


def chosen_datasets(args: argparse.Namespace, defaults: dict[str, str]) -> dict[str, str]:
    datasets = dict(item.split("=", 1) for item in args.data) or ({} if args.fetal_planes else dict(defaults))
    if args.fetal_planes:
        datasets["fetal_planes"] = f"fetal_planes:{args.fetal_planes}"
    return datasets


def print_chosen(tables: dict) -> None:
    for name, table in tables.items():
        if table.get("rows"):
            chosen = next(r for r in table["rows"] if r["run"] == table["chosen"])
            t = chosen["test"]
            print(f"{name}: chosen on val {chosen['run']}: test top-1 {t['top1']['value']:.4f}, top-2 "
                  f"{t['top2']['value']:.4f}, macro-F1 {t['macro_f1']['value']:.4f} (n={chosen['n_test']}), "
                  f"{chosen['params']['trainable']:,} trainable parameters")


def run_variant(name: str, overrides: Sequence[str], progress: Progress = print) -> dict:
    """Train (or reuse) one run and summarise it: validation score, test metrics, parameters, time."""
    config = load_config(None, [*overrides, f"name={name}"])
    run_dir = train(config, progress)
    results = read_json(run_dir / "results.json")
    phases = results.get("phases", {})
    return {"run": name, "folder": str(run_dir), "data": results["data"], "n_test": results["n"],
            "val_macro_f1": max((p["best_score"] for p in phases.values()), default=float("nan")),
            "val_log_loss": min((p["best_loss"] for p in phases.values()), default=float("nan")),
            "test": {k: results["metrics"][k] for k in SHOWN if k in results["metrics"]},
            "params": results.get("params", {}), "train_seconds": results["timings"].get("train_seconds", 0.0),
            "config": list(overrides)}


def run_folds(name: str, overrides: Sequence[str], folds: int, progress: Progress = print) -> dict:
    """K-fold cross-validation of one config: run NAME_fold<i> tests on fold i (its validation carved from the
    other folds' groups), so every item is tested once. The row holds the mean validation macro-F1 and log-loss
    over the folds (what `choose` reads: K validation splits instead of one) and test metrics pooled over the
    folds (summed confusion matrices; top-2 as the item-weighted mean)."""
    rows = [run_variant(f"{name}_fold{i}", [*overrides, f"data.folds={folds}", f"data.fold={i}"], progress)
            for i in range(folds)]
    confusions = [read_json(Path(r["folder"]) / "results.json")["metrics"]["confusion"] for r in rows]
    if any(c["labels"] != confusions[0]["labels"] for c in confusions):
        raise BadInputError(f"the folds of {name} hold different classes: {[c['labels'] for c in confusions]}",
                            "use fewer folds, so that every class appears in every fold")
    n = sum(r["n_test"] for r in rows)
    test = metrics_from_confusion(np.sum([c["matrix"] for c in confusions], axis=0))
    test["top2"] = {"value": sum(r["test"]["top2"]["value"] * r["n_test"] for r in rows) / n, "ci95": [nan, nan]}
    return {**rows[0], "run": name, "folder": str(Path(rows[0]["folder"]).parent), "n_test": n, "folds": folds,
            "val_macro_f1": float(np.mean([r["val_macro_f1"] for r in rows])),
            "val_log_loss": float(np.mean([r["val_log_loss"] for r in rows])), "test": test,
            "train_seconds": sum(r["train_seconds"] for r in rows), "config": list(overrides)}


def choose(rows: Sequence[dict]) -> dict:
    """The best validation macro-F1, ties to the lower validation log-loss, then to fewer trainable parameters.
    The test split plays no part."""
    return max(rows, key=lambda r: (r["val_macro_f1"], -r["val_log_loss"], -r["params"].get("trainable", 0)))


def markdown_table(rows: Sequence[dict], chosen: str | None = None) -> str:
    lines = ["| run | val macro-F1 | val log-loss | test top-1 [95 % CI] | test top-2 | test macro-F1 "
             "| trainable / total params | train s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test"]
        mark = " **(chosen on val)**" if r["run"] == chosen else ""
        lines.append(f"| {r['run']}{mark} | {r['val_macro_f1']:.4f} | {r['val_log_loss']:.4f} | {t['top1']['value']:.4f} "
                     f"[{t['top1']['ci95'][0]:.3f}, {t['top1']['ci95'][1]:.3f}] | {t['top2']['value']:.4f} | "
                     f"{t['macro_f1']['value']:.4f} | {r['params'].get('trainable', 0):,} / "
                     f"{r['params'].get('total', 0):,} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def write_tables(folder: str | Path, experiment: str, tables: dict) -> Path:
    """`tables`: name -> {"rows": [...], "chosen": run name, ...}; JSON for the report, markdown for people."""
    folder = Path(folder)
    atomic_write_json(folder / f"{experiment}.json", tables)
    text = "".join(f"## {name}\n\n{markdown_table(t['rows'], t.get('chosen'))}\n" for name, t in tables.items()
                   if t.get("rows"))
    atomic_write_text(folder / f"{experiment}.md", text)
    return folder / f"{experiment}.md"


def segmentation_table(rows: Sequence[dict]) -> str:
    """Markdown for segmenters: rows of {"run", "variant", "card"} (a run's card or an export's card)."""
    def cell(metrics: dict, name: str, digits: int = 4) -> str:
        metric = metrics.get(name)
        if not isinstance(metric, dict) or "value" not in metric:
            return "-"
        lo, hi = metric["ci95"]
        return f"{metric['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    lines = ["| run | variant | n test | Dice | IoU | Hausdorff mm | HC abs. error mm | HC bias mm (95 % limits) "
             "| sweep Dice | best frame +-1 | size MB | ms / input (2 threads) | trainable / total params | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        card = row["card"]
        metrics = card.get("metrics", {}).get("test", {})
        ba = metrics.get("bland_altman")
        agreement = f"{ba['bias_mm']:+.2f} ({ba['limits_mm'][0]:+.2f}, {ba['limits_mm'][1]:+.2f})" if ba else "-"
        export = card.get("export", {})
        latency = export.get("latency", {}).get("2_threads", {}).get("median_ms")
        runs_per_frame = postprocess.invokes_per_item(card)
        size = f"{export['size_bytes'] / 1e6:.1f}" if export else "-"
        params = card.get("params", {})
        seconds = sum(p.get("seconds", 0.0) for p in card.get("training", {}).get("phases", {}).values())
        cells = [row["run"], row["variant"], str(card.get("metrics", {}).get("n_test", "-")), cell(metrics, "dice"),
                 cell(metrics, "iou"), cell(metrics, "hausdorff_mm", 2), cell(metrics, "hc_mad_mm", 2), agreement,
                 cell(metrics, "sweep_dice"), cell(metrics, "best_frame_within_1", 3), size,
                 _per_item_ms(latency, runs_per_frame), f"{params.get('trainable', 0):,} / {params.get('total', 0):,}",
                 f"{seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _per_item_ms(latency: float | None, runs: int) -> str:
    if not latency:
        return "-"
    return f"{latency * runs:.1f}" + (f" ({runs} x {latency:.1f}, mirrored)" if runs > 1 else "")


SEGMENTATION_MEASURES = ("dice", "iou", "hausdorff_mm", "hc_mad_mm")
DIGITS = {name: 2 if name.endswith("_mm") else 4 for name in SEGMENTATION_MEASURES}  # mm to 0.01, overlaps to 1e-4


def segmentation_fold(run_dir: str | Path, fold: int, folds: int) -> dict:
    """What pooling needs from a finished fold of a segmenter: each test item's measures (file name, not path),
    the split counts, the post-processing chosen on the fold's validation split and the training time. Small
    enough to keep in the repository, so that folds run in different sessions pool."""
    run_dir = Path(run_dir)
    results, card = read_json(run_dir / "results.json"), read_json(run_dir / "model_card.json")
    items = [{"file": Path(item["source"]).name, **{k: item.get(k) for k in
                                                    (*SEGMENTATION_MEASURES, "hc_mm", "hc_true_mm", "ellipse")}}
             for item in results["items"]]
    return {"run": run_dir.name, "fold": fold, "folds": folds, "items": items,
            "splits": card["training"]["splits"], "postprocessing": postprocess.settings(card),
            "train_seconds": results["timings"].get("train_seconds", 0.0)}


def check_one_split(folds: Sequence[dict]) -> None:
    """Refuse folds of different K, or the same fold twice: pooling them would test some items twice."""
    if len({f["folds"] for f in folds}) > 1 or len({f["fold"] for f in folds}) < len(folds):
        raise BadInputError(f"folds {[(f['fold'], f['folds']) for f in folds]} do not belong to one K-fold split",
                            "pool the folds of one --folds K run, each once")


def pooled_segmentation(folds: Sequence[dict]) -> dict:
    """Per-item measures pooled over folds (each item tested once, by a model that never saw it), with bootstrap
    CIs; refuses folds of different K or the same fold twice."""
    check_one_split(folds)
    per_item = {name: [item[name] for f in folds for item in f["items"] if item.get(name) is not None]
                for name in SEGMENTATION_MEASURES}
    return {"folds_done": sorted(f["fold"] for f in folds), "folds": folds[0]["folds"] if folds else 0,
            "n": sum(len(f["items"]) for f in folds), "metrics": mean_metrics(per_item)}


def pooled_segmentation_table(folds: Sequence[dict], pooled: dict) -> str:
    """Markdown: one row per fold (means), then the pooled row (means with bootstrap CIs)."""

    def mean(values: list, d: int) -> str:
        values = [v for v in values if v is not None and not np.isnan(v)]
        return f"{np.mean(values):.{d}f}" if values else "-"

    lines = ["| fold | n test | Dice | IoU | Hausdorff mm | HC abs. error mm | threshold, mirrored, shape | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for f in sorted(folds, key=lambda f: f["fold"]):
        cells = [mean([item.get(name) for item in f["items"]], DIGITS[name]) for name in SEGMENTATION_MEASURES]
        post = {**postprocess.DEFAULT, **f["postprocessing"]}  # folds stored before `shape`: the mask
        lines.append(f"| {f['fold']} | {len(f['items'])} | {' | '.join(cells)} | {post['threshold']}, "
                     f"{'yes' if post['flip'] else 'no'}, {post['shape']} | {f['train_seconds']:.0f} |")
    cells = []
    for name in SEGMENTATION_MEASURES:
        metric, d = pooled["metrics"].get(name), DIGITS[name]
        cells.append(f"{metric['value']:.{d}f} [{metric['ci95'][0]:.{d}f}, {metric['ci95'][1]:.{d}f}]" if metric
                     else "-")
    lines.append(f"| pooled ({len(folds)} of {pooled['folds']} folds) | {pooled['n']} | {' | '.join(cells)} | | "
                 f"{sum(f['train_seconds'] for f in folds):.0f} |")
    return "\n".join(lines) + "\n"


def paired_segmentation(folds: Sequence[dict], baseline: Sequence[dict]) -> dict:
    """This recipe's per-item measures minus a baseline recipe's, over the test items both have measured. Folds of
    the same K-fold split test the same images, each once, by one model of each recipe that never saw it, so the
    per-image differences compare the recipes with the spread between images taken out: mean difference with a
    bootstrap CI, and on how many images this recipe did better (higher Dice / IoU, lower errors in mm)."""
    if not folds or not baseline:
        raise BadInputError("no stored folds to compare", "point --against at a CV store holding fold<i>.json files")
    if len({f["folds"] for f in [*folds, *baseline]}) > 1:
        raise BadInputError("the two recipes' folds come from different K-fold splits",
                            "compare cross-validations run with the same --folds K")
    mine = {item["file"]: item for f in folds for item in f["items"]}
    theirs = {item["file"]: item for f in baseline for item in f["items"]}
    out = {}
    for name in SEGMENTATION_MEASURES:
        pairs = [(mine[file].get(name), theirs[file].get(name)) for file in sorted(mine.keys() & theirs.keys())]
        diffs = np.array([a - b for a, b in pairs if a is not None and b is not None], np.float64)
        diffs = diffs[~np.isnan(diffs)]
        if diffs.size:
            better = diffs < 0 if name.endswith("_mm") else diffs > 0
            out[name] = {**mean_metrics({name: diffs})[name], "n": int(diffs.size), "better": int(better.sum())}
    return out


def paired_segmentation_table(paired: dict, recipe: str, baseline: str) -> str:
    """Markdown: per measure, the mean paired difference (recipe - baseline) with its CI and the images it won."""
    lines = [f"| measure | n images | {recipe} - {baseline}, mean [95 % CI] | {recipe} better on |", "|---|---|---|---|"]
    for name, metric in paired.items():
        d = DIGITS[name]
        lines.append(f"| {name} | {metric['n']} | {metric['value']:+.{d}f} [{metric['ci95'][0]:+.{d}f}, "
                     f"{metric['ci95'][1]:+.{d}f}] | {metric['better']} |")
    return "\n".join(lines) + "\n"


def quantisation_fold(run_dir: str | Path, fold: int, folds: int, variants: Sequence[str]) -> dict:
    """What pooling the cost of quantisation needs from a finished fold of a classifier: each test image's label
    and the class its float model and each export predict, and which export the fold chose on validation
    (`exports/choice.json`). Predicted afresh from the model files, so a stale card cannot leak in."""
    from .evaluate import class_probabilities, load_predictor
    from .export import train_records

    run_dir = Path(run_dir)
    card = read_json(run_dir / "model_card.json")
    if card["task"] != "classification":
        raise BadInputError(f"{run_dir} is a {card['task']} model", "pool quantisation folds of image classifiers")
    records = [r for r in train_records(run_dir) if r.split == "test"]
    if not records:
        raise BadInputError(f"{run_dir} has no test split", "cross-validate with data.folds >= 2")
    models = {"float": run_dir}
    for variant in variants:
        models[variant] = run_dir / "exports" / variant / "model.tflite"
        if not models[variant].is_file():
            raise BadInputError(f"{models[variant]} does not exist",
                                f"fpc-keras export --model {run_dir} --quant {variant}")
    labels = card["labels"]
    predicted = {name: class_probabilities(load_predictor(path), records).argmax(axis=1)
                 for name, path in models.items()}
    choice = run_dir / "exports" / "choice.json"
    return {"run": run_dir.name, "fold": fold, "folds": folds,
            "chosen": read_json(choice)["chosen"] if choice.is_file() else None,
            "items": [{"file": Path(r.source).name, "label": r.label,
                       **{name: labels[int(p[i])] for name, p in predicted.items()}} for i, r in enumerate(records)]}


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
    variants = [name for name in items[0] if name not in ("file", "label", "float")]
    right = {name: np.array([item.get(name) == item["label"] for item in items], np.float64)
             for name in ("float", *variants)}
    n = len(items)
    out = {"folds_done": sorted(f["fold"] for f in folds), "folds": folds[0]["folds"], "n": n,
           "float": with_ci(lambda idx: right["float"][idx].mean(), n),
           "float_macro_f1": _pooled_macro_f1(items, "float"), "variants": {}}
    for name in variants:
        change = right[name] - right["float"]
        out["variants"][name] = {
            "top1": with_ci(lambda idx, r=right[name]: r[idx].mean(), n), "macro_f1": _pooled_macro_f1(items, name),
            "change": with_ci(lambda idx, c=change: c[idx].mean(), n),
            "lost": int((change < 0).sum()), "gained": int((change > 0).sum()),
            "agreement": float(np.mean([item.get(name) == item["float"] for item in items]))}
    return out


def _pooled_macro_f1(items: Sequence[dict], model: str) -> dict:
    """Macro-F1 of `model`'s predictions over the pooled items, with a bootstrap CI over images."""
    labels = sorted({item["label"] for item in items})
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index[item["label"]] for item in items])
    predicted = np.array([index.get(item.get(model), -1) for item in items])
    return with_ci(lambda idx: macro_f1(truth[idx], predicted[idx], len(labels)), len(items))


def pooled_quantisation_table(pooled: dict) -> str:
    """Markdown: float, then each export (and the per-fold validation choice) with its paired change."""
    def cell(metric: dict, scale: float = 1.0, sign: str = "") -> str:
        lo, hi = (v * scale for v in metric["ci95"])
        return f"{metric['value'] * scale:{sign}.2f} [{lo:{sign}.2f}, {hi:{sign}.2f}]"

    def f1(entry: dict, key: str) -> str:  # stores pooled before macro-F1 was pooled have none
        return cell(entry[key], 100) if key in entry else "-"

    lines = [f"| model ({len(pooled['folds_done'])} of {pooled['folds']} folds, {pooled['n']} test images) "
             "| top-1 % [95 % CI] | macro-F1 % [95 % CI] | change vs float, points [95 % CI] | lost / gained images "
             "| agreement with float |", "|---|---|---|---|---|---|",
             f"| float (Keras) | {cell(pooled['float'], 100)} | {f1(pooled, 'float_macro_f1')} | - | - | - |"]
    for name, v in pooled["variants"].items():
        label = "chosen on each fold's validation" if name == "chosen" else name
        lines.append(f"| {label} | {cell(v['top1'], 100)} | {f1(v, 'macro_f1')} | {cell(v['change'], 100, '+')} | "
                     f"{v['lost']} / {v['gained']} | {v['agreement']:.3f} |")
    return "\n".join(lines) + "\n"
