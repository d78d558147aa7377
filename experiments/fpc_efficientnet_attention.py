"""Sivasubramanian et al. 2025 reproduced: ImageNet lightweight EfficientNet + attention + 3-layer MLP.

Protocol: phase 1 trains the head on cached features of the frozen backbone (plus cached augmented copies),
an ablation over backbone x attention is chosen on validation macro-F1, and the chosen model's top blocks are
fine-tuned (phase 2). Validation is carved from the training groups; each run's test split is used once.

    python experiments/fpc_efficientnet_attention.py                       # BUSI + abdominal organs (../shared/data)
    python experiments/fpc_efficientnet_attention.py --fetal-planes /data/FETAL_PLANES_ZENODO.zip
    python experiments/fpc_efficientnet_attention.py --data mine=folder:/data/scans --backbones efficientnet_lite0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fpc_keras.errors import exit_code_of
from fpc_keras.experiment import (SHARED_DATA, add_common_arguments, choose, chosen_datasets, print_chosen,
                                  run_variant, write_tables)
from fpc_keras.models.backbones import native_size
from fpc_keras.models.reference import reference_counts

DATASETS = {"busi": f"folder:{SHARED_DATA / 'BUSI'}", "abdominal": f"prefix:{SHARED_DATA / 'abdominal_organs'}"}
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # genuine ImageNet weights offline
ATTENTIONS = ("none", "se", "cbam", "mhsa")
# The recipe files (paper1/): the grid runs base.yaml under backbone / attention / size overrides; the chosen cell is
# fine-tuned under finetune.yaml. Each row reruns with `fpc-keras train --config FILE --set ...` (its `config`).
RECIPES = Path(__file__).resolve().parent / "configs" / "paper1"
FETAL_PLANES = ["data.val_fraction=0.15", "data.test_fraction=0.0"]  # official Train split; val from train patients


def dataset_overrides(spec: str) -> list[str]:
    kind, path = spec.split(":", 1)
    extra = FETAL_PLANES if kind == "fetal_planes" else []
    return [f"data.kind={kind}", f"data.path={path}", *extra]


def run_dataset(name: str, spec: str, args: argparse.Namespace) -> dict:
    rows = []
    for backbone in args.backbones:
        size = native_size(backbone)
        for attention in args.attentions:
            overrides = [*dataset_overrides(spec), f"runs_dir={args.runs}", f"model.backbone={backbone}",
                         f"model.attention={attention}", f"data.image_size=[{size}, {size}]", *args.set]
            rows.append(run_variant(f"fpc_{name}_{backbone}_{attention}", overrides, recipe=RECIPES / "base.yaml"))
    chosen = choose(rows)
    table = {"rows": rows, "chosen": chosen["run"]}
    if args.finetune:
        tuned = run_variant(chosen["run"] + "_ft", chosen["config"], recipe=RECIPES / "finetune.yaml")
        rows.append(tuned)
        table["chosen"] = choose([chosen, tuned])["run"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, DATASETS)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--attentions", nargs="+", default=list(ATTENTIONS))
    parser.add_argument("--no-finetune", dest="finetune", action="store_false", help="skip phase 2")
    args = parser.parse_args()
    tables = {name: run_dataset(name, spec, args) for name, spec in chosen_datasets(args, DATASETS).items()}
    tables["parameters"] = {"reference": reference_counts(6)}
    print(f"\nablation table: {write_tables(Path(args.runs) / '_tables', 'fpc_efficientnet_attention', tables)}")
    print_chosen(tables)
    for name, counts in tables["parameters"]["reference"].items():
        print(f"{name}: {counts['trainable']:,} trainable")


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
