"""Edge benchmark of one trained run: Keras, TFLite fp32 / fp16 / int8 (and qat where exported) and ONNX Runtime
fp32 at 1 and 2 threads; prints the table (median / p90 latency, size, ratios, each variant's own top-1) and
writes RUN/benchmark_edge.json for the report.

    python experiments/benchmark_edge.py --model runs/demo_busi_sample
    python experiments/benchmark_edge.py --model runs/cm_abdominal_vgg16_multiscale_fc512 --variants fp32 int8 qat

With `--folds K --config CFG` it measures what quantisation costs a classifier instead, cross-validated: fold i's
model (CFG trained on the other folds, its validation split carved from them) and its exports are measured on fold
i, so every image is tested once, and the table pools the folds with a paired CI per export (a single test split
of a hundred images moves a point per image). Each finished fold's per-image predictions are kept in `--cv-store`
(small JSON), so folds may run in different sessions.

    python experiments/benchmark_edge.py --folds 5 --config runs/fpc_busi_efficientnet_lite2_se/config.yaml \\
        --variants int8 mixed --set train.seed=1

Several `--config` recipes cross-validate their ensemble (`fpc-keras ensemble`: the members' probabilities averaged
in one model, exported as one .tflite): each fold trains every recipe on its split and measures the ensemble.

    python experiments/benchmark_edge.py --folds 5 --config A.yaml B.yaml --variants int8

`--against STORE` compares the recipe with another recipe's CV on the same images, image by image (a repeat with
another `train.seed` on the same folds, `data.split_seed` fixed, measures the recipe's run-to-run spread):

    python experiments/benchmark_edge.py --folds 5 --config B.yaml --variants int8 \\
        --against reports/cv/A_cv5_quantisation
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fpc_keras.experiment  # noqa: F401  (first: starts TensorFlow without its C++ start-up lines)
from fpc_keras import cv
from fpc_keras.benchmark import benchmark, table
from fpc_keras.config import RunConfig, load_config
from fpc_keras.cv.classification import (cv_card_metrics, paired_classification, paired_classification_table,
                                         pooled_quantisation, pooled_quantisation_table, quantisation_fold)
from fpc_keras.ensemble import ensemble_run
from fpc_keras.errors import exit_code_of
from fpc_keras.export import export_as_configured, ship, shipped_variant
from fpc_keras.io import atomic_write_json, atomic_write_text
from fpc_keras.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="run folder (exports missing from it are made first)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp16", "int8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime peer")
    parser.add_argument("--folds", type=int, default=0, metavar="K", help="cross-validate the cost of quantisation "
                        "of the classifier --config trains, over K folds (no latency)")
    parser.add_argument("--config", nargs="+", help="with --folds: the run config to cross-validate (e.g. a run's "
                        "config.yaml); several: their ensemble")
    parser.add_argument("--name", help="with --folds: the CV's name (default: the recipe's; an ensemble's: its "
                        "recipes' names joined by __)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --folds: overrides")
    parser.add_argument("--cv-store", default="reports/cv", metavar="DIR",
                        help="with --folds: where finished folds' predictions are kept and pooled from")
    parser.add_argument("--flip", action="store_true",
                        help="with --folds: also measure the float model with flip TTA in its graph")
    parser.add_argument("--against", metavar="DIR", help="with --folds: another recipe's CV store; compare the two "
                        "image by image")
    parser.add_argument("--ship", metavar="DIR", help="with --folds: once every fold is stored, refit the recipe on "
                        "every image, export it and copy the variant chosen on validation to DIR, with the CV figures "
                        "on its card")
    args = parser.parse_args()
    if args.folds:
        if not args.config:
            parser.error("--folds needs --config")
        if args.against and not cv.stored_folds(args.against):
            parser.error(f"--against {args.against}: no fold<i>.json there; give another recipe's CV store")
        cross_validate(args)
    elif args.model:
        print(table(benchmark(args.model, args.variants, args.threads, args.runs, onnx=not args.no_onnx)))
    else:
        parser.error("give --model RUN, or --folds K --config CFG")


def cross_validate(args: argparse.Namespace) -> None:
    """Train and export every fold not yet stored, store its test predictions, pool every stored fold."""
    names = [load_config(config, args.set).name for config in args.config]
    name = args.name or "__".join(names)  # an ensemble's default starts as its first recipe's (the report's paper)
    store = Path(args.cv_store) / f"{name}_cv{args.folds}_quantisation"

    def configs(fold: int) -> list[RunConfig]:
        return [cv.fold_config(config, args.set, fold, args.folds, f"{member}_cv{args.folds}")
                for config, member in zip(args.config, names)]

    def record(fold: int) -> dict:
        run_dir = trained_and_exported(configs(fold), args.variants, f"{name}_cv{args.folds}_fold{fold}")
        return quantisation_fold(run_dir, fold, args.folds, args.variants, flip=args.flip)

    folds = cv.run_folds(store, args.folds, record, recipe=cv.fold_recipe(configs(0)))
    pooled = pooled_quantisation(folds)
    text = pooled_quantisation_table(pooled)
    atomic_write_json(store / "pooled.json", pooled)
    atomic_write_text(store / "pooled.md", text)
    print(f"\n{name}: test top-1 of float and quantised exports, {args.folds}-fold cross-validation ({store}):"
          f"\n\n{text}")
    if args.against:
        text = cv.write_paired(store, folds, args.against, paired_classification, paired_classification_table)
        print(f"paired, on the test images both have measured:\n\n{text}")
    if args.ship:
        if len(pooled["folds_done"]) < args.folds:
            raise SystemExit(f"--ship: {len(pooled['folds_done'])} of {args.folds} folds stored; run every fold first")
        print(f"shipped to {ship_refit(args, name, names, pooled, store)}")


def trained_and_exported(configs: list[RunConfig], variants: list[str], ensemble_name: str) -> Path:
    """The run of the one config (trained, or resumed), or the ensemble of the runs of several (in RUNS/
    `ensemble_name`), with each of `variants` exported as the first config says."""
    run_dirs = [train(config) for config in configs]
    run_dir = run_dirs[0]
    if len(run_dirs) > 1:
        run_dir = Path(configs[0].runs_dir) / ensemble_name
        if not (run_dir / "results.json").is_file():
            ensemble_run(run_dirs, run_dir)
    missing = [v for v in variants if not (run_dir / "exports" / v / "model.tflite").is_file()]
    if missing:
        export_as_configured(run_dir, configs[0].export, missing)
    return run_dir


def ship_refit(args: argparse.Namespace, name: str, names: list[str], pooled: dict, store: Path) -> Path:
    """The recipe(s) refit on every image (no test split; the validation split still stops phase 1 and chooses the
    quantised variant), exported (an ensemble as one model), shipped with the CV figures of the shipped variant on
    its card."""
    configs = [load_config(config, [*args.set, "data.test_fraction=0", "data.folds=0", f"name={member}_refit"])
               for config, member in zip(args.config, names)]
    run_dir = trained_and_exported(configs, args.variants, f"{name}_refit")
    variant = shipped_variant(run_dir, args.variants)
    return ship(run_dir / "exports" / variant, args.ship, cv_card_metrics(pooled, variant, store.as_posix()))


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
