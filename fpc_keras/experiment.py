"""Shared by the experiment scripts: run a grid of configs (each a resumable run), choose on validation,
and write the comparison table that the report and the closing notes quote."""
from __future__ import annotations

import argparse
from math import nan
from pathlib import Path
from typing import Callable, Sequence

from .quiet import start_tensorflow

# An experiment script imports this module before anything that loads TensorFlow: TensorFlow's C++ start-up lines
# (absl, oneDNN, "Could not find cuda drivers") would otherwise come before the script's own progress.
start_tensorflow()

import numpy as np  # noqa: E402

from . import postprocess  # noqa: E402
from .config import load_config  # noqa: E402
from .cv import fold_config, fold_overrides, fold_recipe  # noqa: E402
from .cv import run_folds as run_folds_of  # noqa: E402
from .data.sources import SHARED_DATA  # noqa: E402,F401  (the experiment scripts' default data)
from .errors import BadInputError  # noqa: E402
from .io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from .metrics import metrics_from_confusion, per_class  # noqa: E402
from .training import train  # noqa: E402
from .training.phase import kept_validation  # noqa: E402

Progress = Callable[[str], None]
SHOWN = ("top1", "top2", "macro_f1")


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


def variant_runner(folds: int) -> Callable[..., dict]:
    """`run_variant` on one split, or `run_folds` over K group folds (runs named NAME_cvK_fold<i>); both take
    (name, overrides, recipe file)."""
    if not folds:
        return lambda name, overrides, recipe=None: run_variant(name, overrides, recipe=recipe)
    return lambda name, overrides, recipe=None: run_folds(f"{name}_cv{folds}", overrides, folds, recipe=recipe)


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


def run_variant(name: str, overrides: Sequence[str], progress: Progress = print, recipe: Path | None = None) -> dict:
    """Train (or reuse) one run of a recipe file (or the defaults) under overrides, and summarise it: validation
    score, test metrics, parameters, time. The row's `config` reproduces it: `fpc-keras train --config RECIPE
    --set ...`."""
    config = load_config(recipe, [*overrides, f"name={name}"])
    run_dir = train(config, progress)
    results = read_json(run_dir / "results.json")
    phases = results.get("phases", {})
    return {"run": name, "folder": str(run_dir), "data": results["data"], "n_test": results["n"],
            "val_macro_f1": kept_validation(phases)[0], "val_log_loss": kept_validation(phases)[1],
            "test": {k: results["metrics"][k] for k in SHOWN if k in results["metrics"]},
            "params": results.get("params", {}), "train_seconds": results["timings"].get("train_seconds", 0.0),
            "recipe": str(recipe) if recipe else None, "config": list(overrides)}


def run_folds(name: str, overrides: Sequence[str], folds: int, progress: Progress = print,
              recipe: Path | None = None) -> dict:
    """K-fold cross-validation of one config (`fpc_keras.cv`; fold records in RUNS/_cv/NAME): run NAME_fold<i>
    tests on fold i, so every item is tested once. The row holds the mean validation macro-F1 and log-loss over
    the folds (what `choose` reads: K validation splits instead of one) and test metrics pooled over the folds
    (summed confusion matrices; top-2 as the item-weighted mean)."""
    store = Path(load_config(recipe, overrides).runs_dir) / "_cv" / name

    def record(fold: int) -> dict:
        row = run_variant(f"{name}_fold{fold}", [*overrides, *fold_overrides(fold, folds, name)], progress, recipe)
        return {**row, "confusion": read_json(Path(row["folder"]) / "results.json")["metrics"]["confusion"]}

    measured_as = fold_recipe([fold_config(recipe, overrides, 0, folds, name)])
    rows = run_folds_of(store, folds, record, progress=progress, recipe=measured_as)
    confusions = [r["confusion"] for r in rows]
    if any(c["labels"] != confusions[0]["labels"] for c in confusions):
        raise BadInputError(f"the folds of {name} hold different classes: {[c['labels'] for c in confusions]}",
                            "use fewer folds, so that every class appears in every fold")
    n = sum(r["n_test"] for r in rows)
    matrix = np.sum([c["matrix"] for c in confusions], axis=0)
    test = metrics_from_confusion(matrix)
    test["top2"] = {"value": sum(r["test"]["top2"]["value"] * r["n_test"] for r in rows) / n, "ci95": [nan, nan]}
    return {**rows[0], "run": name, "folder": str(Path(rows[0]["folder"]).parent), "n_test": n, "folds": folds,
            "val_macro_f1": float(np.mean([r["val_macro_f1"] for r in rows])),
            "val_log_loss": float(np.mean([r["val_log_loss"] for r in rows])), "test": test,
            "train_seconds": sum(r["train_seconds"] for r in rows), "config": list(overrides),
            "confusion": {"labels": confusions[0]["labels"], "matrix": matrix.tolist()},
            "recall": {k: v["recall"] for k, v in per_class(matrix, confusions[0]["labels"]).items()},
            "right_per_fold": [int(np.trace(c["matrix"])) for c in confusions],
            "n_per_fold": [r["n_test"] for r in rows]}


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
    text = "".join(f"## {name}\n\n{markdown_table(t['rows'], t.get('chosen'))}\n{pooled_details(t['rows'])}"
                   for name, t in tables.items() if t.get("rows"))
    atomic_write_text(folder / f"{experiment}.md", text)
    return folder / f"{experiment}.md"


def pooled_details(rows: Sequence[dict]) -> str:
    """Under a table of cross-validated rows: each row's pooled recall per class, confusion matrix (rows true,
    columns predicted) and items right per fold."""
    lines = []
    for r in rows:
        if "recall" not in r:
            continue
        labels = r["confusion"]["labels"]
        recall = ", ".join(f"{label} {r['recall'][label]:.3f}" for label in labels)
        folds = ", ".join(f"{right}/{n}" for right, n in zip(r["right_per_fold"], r["n_per_fold"]))
        lines.append(f"- {r['run']}: recall {recall}; confusion (rows true {' / '.join(labels)}): "
                     f"{r['confusion']['matrix']}; right per fold {folds}")
    return "\n".join(lines) + "\n\n" if lines else ""


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
