"""Cheng & Malhi 2017 reproduced: frozen ImageNet conv layers as a fixed feature extractor, FC layers retrained.

Protocol: images stretched to 256x256 and centre-cropped to 224 (`data.resize: stretch_crop`); training also sees
cached augmented copies (random rotation, scale/shift crops, gain, speckle); groups (studies, patients) never
straddle splits; heads compared on validation, test used once: the paper's FC 4096-4096 on unpooled conv5
features, a light 512-unit head, a linear classifier on pooled features (the floor), and ours: the same heads
on average- and max-pooled features of three depths (block3, block4, block5) of aspect-preserving (padded) images.

    python experiments/abdominal_frozen_features.py                        # abdominal organs + BUSI (../shared/data)
    python experiments/abdominal_frozen_features.py --data mine=prefix:/data/abdomen --data other=folder:/data/x
    python experiments/abdominal_frozen_features.py --fetal-planes /data/FETAL_PLANES_ZENODO.zip
    python experiments/abdominal_frozen_features.py --backbone caffenet --set model.weights=/path/caffenet.npy
    python experiments/abdominal_frozen_features.py --data busi=folder:../shared/data/BUSI --folds 5   # CV
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fpc_keras.errors import exit_code_of
from fpc_keras.experiment import (SHARED_DATA, add_common_arguments, add_folds_argument, choose, chosen_datasets,
                                  print_chosen, variant_runner, write_tables)
from fpc_keras.models.backbones import native_size

DATASETS = {"abdominal": f"prefix:{SHARED_DATA / 'abdominal_organs'}", "busi": f"folder:{SHARED_DATA / 'BUSI'}"}
# The heads compared, each a recipe file (an overlay of paper2/base.yaml): `fpc-keras train --config FILE` reruns one.
RECIPES = Path(__file__).resolve().parent / "configs" / "paper2"
HEADS = ("paper_fc4096", "light_fc512", "linear", "multiscale_fc512", "multiscale_linear")
FETAL_PLANES = ["data.test_fraction=0.0"]  # official Train split; validation patients carved from it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, DATASETS)
    parser.add_argument("--backbone", default="vgg16", choices=("vgg16", "caffenet"))
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    add_folds_argument(parser)
    args = parser.parse_args()
    datasets = chosen_datasets(args, DATASETS)
    size = native_size(args.backbone)
    tables = {}
    for name, spec in datasets.items():
        kind, path = spec.split(":", 1)
        run = variant_runner(args.folds)
        rows = [run(f"cm_{name}_{args.backbone}_{head}",
                    [f"data.kind={kind}", f"data.path={path}", f"data.image_size=[{size}, {size}]",
                     f"model.backbone={args.backbone}", f"runs_dir={args.runs}",
                     *(FETAL_PLANES if kind == "fetal_planes" else []), *args.set], RECIPES / f"{head}.yaml")
                for head in args.heads]
        tables[name] = {"rows": rows, "chosen": choose(rows)["run"]}
    print(f"\ntable: {write_tables(Path(args.runs) / '_tables', f'frozen_features_{args.backbone}', tables)}")
    print_chosen(tables)


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
