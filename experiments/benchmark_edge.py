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
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fpc_keras.benchmark import benchmark, table
from fpc_keras.config import RunConfig, load_config
from fpc_keras import cv
from fpc_keras.card import read_card, write_card
from fpc_keras.cv.classification import (cv_card_metrics, pooled_quantisation, pooled_quantisation_table,
                                         quantisation_fold)
from fpc_keras.export import export_as_configured, ship, shipped_variant
from fpc_keras.io import atomic_write_json, atomic_write_text
from fpc_keras.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run folder (exports missing from it are made first)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp16", "int8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime peer")
    parser.add_argument("--folds", type=int, default=0, metavar="K", help="cross-validate the cost of quantisation "
                        "of the classifier --config trains, over K folds (no latency)")
    parser.add_argument("--config", help="with --folds: the run config to cross-validate (e.g. a run's config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --folds: overrides")
    parser.add_argument("--cv-store", default="reports/cv", metavar="DIR",
                        help="with --folds: where finished folds' predictions are kept and pooled from")
    parser.add_argument("--flip", action="store_true",
                        help="with --folds: also measure the float model with flip TTA in its graph")
    parser.add_argument("--ship", metavar="DIR", help="with --folds: once every fold is stored, refit the recipe on "
                        "every image, export it and copy the variant chosen on validation to DIR, with the CV figures "
                        "on its card")
    args = parser.parse_args()
    if args.folds:
        if not args.config:
            parser.error("--folds needs --config")
        cross_validate(args)
    elif args.model:
        print(table(benchmark(args.model, args.variants, args.threads, args.runs, onnx=not args.no_onnx)))
    else:
        parser.error("give --model RUN, or --folds K --config CFG")


def cross_validate(args: argparse.Namespace) -> None:
    """Train and export every fold not yet stored, store its test predictions, pool every stored fold."""
    name = load_config(args.config, args.set).name
    store = Path(args.cv_store) / f"{name}_cv{args.folds}_quantisation"

    def record(fold: int) -> dict:
        config = cv.fold_config(args.config, args.set, fold, args.folds, f"{name}_cv{args.folds}")
        return quantisation_fold(trained_and_exported(config, args.variants), fold, args.folds, args.variants,
                                 flip=args.flip)

    pooled = pooled_quantisation(cv.run_folds(store, args.folds, record))
    text = pooled_quantisation_table(pooled)
    atomic_write_json(store / "pooled.json", pooled)
    atomic_write_text(store / "pooled.md", text)
    print(f"\n{name}: test top-1 of float and quantised exports, {args.folds}-fold cross-validation ({store}):"
          f"\n\n{text}")
    if args.ship:
        if len(pooled["folds_done"]) < args.folds:
            raise SystemExit(f"--ship: {len(pooled['folds_done'])} of {args.folds} folds stored; run every fold first")
        print(f"shipped to {ship_refit(args, name, pooled, store)}")


def trained_and_exported(config: RunConfig, variants: list[str]) -> Path:
    """The run of `config` (trained, or resumed), with each of `variants` exported as the config says."""
    run_dir = train(config)
    missing = [v for v in variants if not (run_dir / "exports" / v / "model.tflite").is_file()]
    if missing:
        export_as_configured(run_dir, config.export, missing)
    return run_dir


def ship_refit(args: argparse.Namespace, name: str, pooled: dict, store: Path) -> Path:
    """The recipe refit on every image (no test split; its validation split still stops phase 1 and chooses the
    quantised variant), exported, shipped with the CV figures of the shipped variant on its card."""
    config = load_config(args.config, [*args.set, "data.test_fraction=0", "data.folds=0", f"name={name}_refit"])
    run_dir = trained_and_exported(config, args.variants)
    variant = shipped_variant(run_dir, args.variants)
    destination = ship(run_dir / "exports" / variant, args.ship)
    card = read_card(destination / "model.tflite")
    card["metrics"] = {**card.get("metrics", {}), **cv_card_metrics(pooled, variant, store.as_posix())}
    write_card(destination, card)
    return destination


if __name__ == "__main__":
    main()
