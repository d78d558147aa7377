"""FetalNet (Płotka et al. 2021) on HC18: segmentation + plane classification + head circumference in mm, on frames
and on probe sweeps built from HC18 images.

    python experiments/fetalnet_multitask.py                              # ../shared/data/HC18
    python experiments/fetalnet_multitask.py --data hc18:/data/HC18 --ship tflite/models/hc18_fetalnet
    python experiments/fetalnet_multitask.py --no-video --set train.epochs=2    # a quick look
    python experiments/fetalnet_multitask.py --folds 5 --fold 0 --fold 1         # two folds of a 5-fold CV
    python experiments/fetalnet_multitask.py --folds 5 --set train.ema_momentum=0.995 --set name=NAME \
        --against reports/cv/mask_only/fetalnet_hc18_lite0_256x384_cv5          # a recipe against another, per image

1. the frame model (experiments/configs/paper3/fetalnet_hc18.yaml): trained, selected on validation Dice, evaluated once
   on the test subjects (Dice, IoU, Hausdorff mm, HC error mm, Bland-Altman), the HC18 challenge CSV of the test
   images written beside the run;
2. its TFLite exports (fp32, fp16, int8), each with its own Dice / HC error and latency;
3. the video model (fetalnet_hc18_video.yaml): the same network with a ConvLSTM over the bottleneck, trained on
   random sweeps of the training images, evaluated on fixed sweeps of the test images (per-frame Dice, plane
   accuracy, best-frame detection).

With `--folds K` the frame model's recipe is cross-validated by subject instead: fold i's model is trained on the
other folds (its validation split, for selection and post-processing, carved from them) and measured on fold i,
so every image is measured once by a model that never saw it. Each finished fold's test items are kept in
`--cv-store` (small JSON, meant to be committed: a fold costs about half an hour on 2 CPU cores, so the folds of one
CV may run in different sessions), and the table pools every fold found there. No exports, no video model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fpc_keras.experiment import SHARED_DATA, segmentation_table  # first: starts TensorFlow quietly
from fpc_keras import cv
from fpc_keras.config import RunConfig, load_config
from fpc_keras.cv.segmentation import (paired_segmentation, paired_segmentation_table, pooled_segmentation,
                                       pooled_segmentation_table, segmentation_fold)
from fpc_keras.data.hc18 import write_challenge_csv
from fpc_keras.errors import exit_code_of
from fpc_keras.export import export_run, ship, shipped_variant
from fpc_keras.io import atomic_write_text, read_json
from fpc_keras.training import train

CONFIGS = Path(__file__).resolve().parent / "configs" / "paper3"
VARIANTS = ("fp32", "fp16", "int8")


def config_of(config_name: str, data: str, runs: str, overrides: list[str]) -> RunConfig:
    kind, path = data.split(":", 1)
    return load_config(CONFIGS / config_name, [f"data.kind={kind}", f"data.path={path}", f"runs_dir={runs}",
                                               *overrides])


def run(config_name: str, data: str, runs: str, overrides: list[str]) -> Path:
    return train(config_of(config_name, data, runs, overrides))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=f"hc18:{SHARED_DATA / 'HC18'}", metavar="hc18:PATH")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override both runs")
    parser.add_argument("--no-video", dest="video", action="store_false", help="skip the video (sweep) model")
    parser.add_argument("--ship", metavar="DIR", help="copy the quantised export chosen on validation "
                        "(exports/choice.json; int8, the only one exported here) with its card to DIR")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="K-fold cross-validation of the frame model by subject (pooled test measures)")
    parser.add_argument("--fold", type=int, action="append", metavar="I",
                        help="with --folds: run only fold I (repeatable; default: every fold not yet stored)")
    parser.add_argument("--cv-store", default="reports/cv", metavar="DIR",
                        help="where finished folds' test items are kept and pooled from")
    parser.add_argument("--against", metavar="DIR",
                        help="with --folds: another recipe's stored folds (same K) to compare with, image by image")
    args = parser.parse_args()
    if args.folds:
        cross_validate(args)
        return

    frame_run = run("fetalnet_hc18.yaml", args.data, args.runs, args.set)
    results = read_json(frame_run / "results.json")
    print(f"HC18 challenge CSV (test split): {write_challenge_csv(frame_run / 'hc18_test_ellipses.csv', results['items'])}")
    folders = export_run(frame_run, VARIANTS)
    rows = [{"run": frame_run.name, "variant": "keras", "card": read_json(frame_run / "model_card.json")}]
    rows += [{"run": frame_run.name, "variant": v, "card": read_json(folders[v] / "model_card.json")} for v in VARIANTS]
    if args.video:
        video_run = run("fetalnet_hc18_video.yaml", args.data, args.runs, args.set)
        rows.append({"run": video_run.name, "variant": "keras", "card": read_json(video_run / "model_card.json")})
    table = segmentation_table(rows)
    atomic_write_text(Path(args.runs) / "_tables" / "fetalnet_hc18.md", table)
    print("\n" + table)
    if args.ship:
        variant = shipped_variant(frame_run, VARIANTS)
        print(f"shipped {variant} to {ship(frame_run / 'exports' / variant, args.ship)}")


def cross_validate(args: argparse.Namespace) -> None:
    """Run the requested folds of the frame model (skipping those already stored), store each, pool all stored."""
    name = load_config(CONFIGS / "fetalnet_hc18.yaml", args.set).name
    store = Path(args.cv_store) / f"{name}_cv{args.folds}"

    def overrides(fold: int) -> list[str]:
        return [*args.set, *cv.fold_overrides(fold, args.folds, store.name)]

    def record(fold: int) -> dict:
        return segmentation_fold(run("fetalnet_hc18.yaml", args.data, args.runs, overrides(fold)), fold, args.folds)

    recipe = cv.fold_recipe([config_of("fetalnet_hc18.yaml", args.data, args.runs, overrides(0))])
    folds = cv.run_folds(store, args.folds, record, args.fold, recipe=recipe)
    table = pooled_segmentation_table(folds, pooled_segmentation(folds))
    atomic_write_text(store / "pooled.md", table)
    print(f"\n{name}, {args.folds}-fold cross-validation by subject ({store}):\n\n{table}")
    if args.against:
        table = cv.write_paired(store, folds, args.against, paired_segmentation, paired_segmentation_table)
        print(f"paired, on the test images both have measured:\n\n{table}")


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
