"""Video-level classification with SlowFast (TTESlowFast, Cheng et al. 2025): class- and source-balanced clip
sampling, clip-consistent video augmentation, an ImageNet frame encoder (frozen, or fine-tuned on the training
videos' clips) as the slow pathway.

Default data: the POCUS lung videos of ../shared/data/POCUS_videos (COVID-19 / bacterial pneumonia / healthy /
viral pneumonia, by file-name prefix; not echocardiography). The paper's echo view videos run the same way, in
class folders or listed in a CSV (path, label, patient id): `--data echo=videos:/data/echo/labels.csv`.

Protocol: videos split by source group (no group in two splits; `--folds K`: grouped K-fold CV, the selection and
reporting protocol); the slow pathways compared (recipe files in experiments/configs/paper4/) are chosen on
validation macro-F1 over whole videos; test videos are used once. The chosen model is exported to TFLite (fp32,
fp16; int8 attempted and its outcome recorded: TFLite has no int8 CONV_3D, Slow-only has none).

    python experiments/video_classification.py                                # ../shared/data/POCUS_videos
    python experiments/video_classification.py --slow lite0_finetune --folds 5  # grouped 5-fold CV by source
    python experiments/video_classification.py --ship DIR --ship-quant int8     # the single split's chosen model
    python experiments/benchmark_edge.py --folds 5 --config experiments/configs/paper4/vgg16_slow_only.yaml \
        --variants int8 --ship tflite/models/pocus_slowfast      # a CV'd recipe refit on every video, CV on its card
    python experiments/video_classification.py --data echo=videos:/data/echo_views/labels.csv --set data.clip_length=32
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fpc_keras.errors import BadInputError, exit_code_of
from fpc_keras.experiment import (SHARED_DATA, add_common_arguments, add_folds_argument, choose, chosen_datasets,
                                  print_chosen, variant_runner, write_tables)
from fpc_keras.export import export_run, ship

DATASETS = {"pocus": f"videos:{SHARED_DATA / 'POCUS_videos'}"}
# The slow pathways compared, each a recipe file (an overlay of paper4/base.yaml): `fpc-keras train --config FILE`.
RECIPES = Path(__file__).resolve().parent / "configs" / "paper4"
SLOW_PATHWAYS = ("lite0_imagenet", "scratch", "lite0_slow_only", "vgg16_slow_only", "vgg16_lite0_slow_only",
                 "lite0_finetune", "lite0_finetune_slowfast")  # the last starts from lite0_finetune's run on one split
VARIANTS = ("fp32", "fp16")


def run_dataset(name: str, spec: str, args: argparse.Namespace) -> dict:
    kind, path = spec.split(":", 1)
    run = variant_runner(args.folds)
    rows = [run(f"sf_{name}_{slow}", [f"data.kind={kind}", f"data.path={path}", f"runs_dir={args.runs}", *args.set],
                RECIPES / f"{slow}.yaml")
            for slow in args.slow]
    return {"rows": rows, "chosen": choose(rows)["run"]}


def export_chosen(folder: str) -> dict[str, Path]:
    """fp32 and fp16 of the chosen run; int8 attempted so that the report can say what TFLite does with it."""
    folders = export_run(folder, VARIANTS)
    try:
        folders.update(export_run(folder, ("int8",)))
    except (BadInputError, RuntimeError, ValueError) as exc:  # the converter's refusal, reported, not hidden
        print(f"int8: not exported ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, DATASETS)
    parser.add_argument("--slow", nargs="+", default=list(SLOW_PATHWAYS), choices=list(SLOW_PATHWAYS),
                        help="slow pathways to compare")
    parser.add_argument("--ship", metavar="DIR", help="copy the chosen model's export with its card to DIR")
    parser.add_argument("--ship-quant", default="fp32", choices=("fp32", "fp16", "int8"),
                        help="which export --ship copies (int8: Slow-only models, which have no CONV_3D)")
    add_folds_argument(parser)
    args = parser.parse_args()
    if args.folds and args.ship:
        parser.error("--ship takes a model trained on one split; to ship a cross-validated recipe refit on every "
                     "video: benchmark_edge.py --folds K --config RECIPE --variants int8 --ship DIR")
    tables = {name: run_dataset(name, spec, args) for name, spec in chosen_datasets(args, DATASETS).items()}
    table_name = "video_classification" + (f"_cv{args.folds}" if args.folds else "")
    print(f"\nablation table: {write_tables(Path(args.runs) / '_tables', table_name, tables)}")
    print_chosen(tables)
    if args.folds:
        return  # K models per row: nothing to export
    for name, table in tables.items():
        chosen = next(r for r in table["rows"] if r["run"] == table["chosen"])
        folders = export_chosen(chosen["folder"])
        if args.ship and name == next(iter(tables)):
            print(f"shipped {args.ship_quant} to {ship(folders[args.ship_quant], args.ship)}")


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
