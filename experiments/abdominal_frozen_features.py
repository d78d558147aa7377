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
from pathlib import Path

from fpc_keras.experiment import (SHARED_DATA, add_common_arguments, add_folds_argument, choose, chosen_datasets,
                                  print_chosen, variant_runner, write_tables)
from fpc_keras.models.backbones import native_size

DATASETS = {"abdominal": f"prefix:{SHARED_DATA / 'abdominal_organs'}", "busi": f"folder:{SHARED_DATA / 'BUSI'}"}
HEADS = {
    "paper_fc4096": ["model.pooling=flatten", "model.head_units=[4096, 4096]", "model.dropout=0.5",
                     "train.learning_rate=0.0001"],
    "light_fc512": ["model.pooling=avg", "model.head_units=[512]", "model.dropout=0.5", "train.learning_rate=0.001"],
    "linear": ["model.pooling=avg", "model.head_units=[]", "model.dropout=0.2", "train.learning_rate=0.003"],
    # Ours: pooled features of three depths (block3/4/5), aspect kept (pad) — beyond the paper's conv5-only head.
    "multiscale_fc512": ["model.pooling=multiscale", "model.head_units=[512]", "model.dropout=0.5",
                         "train.learning_rate=0.001", "data.resize=pad"],
    "multiscale_linear": ["model.pooling=multiscale", "model.head_units=[]", "model.dropout=0.2",
                          "train.learning_rate=0.003", "data.resize=pad"],
}
BASE = ["model.name=frozen_features", "model.weights=imagenet", "data.resize=stretch_crop",
        "data.val_fraction=0.15", "data.test_fraction=0.2", "train.epochs=40", "train.batch_size=32",
        "train.balance=class_weights", "train.feature_copies=2", "train.early_stopping_patience=8", "train.seed=0"]
FETAL_PLANES = ["data.test_fraction=0.0"]  # official Train split; validation patients carved from it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
                    [*BASE, f"data.kind={kind}", f"data.path={path}", f"data.image_size=[{size}, {size}]",
                     f"model.backbone={args.backbone}", f"runs_dir={args.runs}", *HEADS[head],
                     *(FETAL_PLANES if kind == "fetal_planes" else []), *args.set])
                for head in args.heads]
        tables[name] = {"rows": rows, "chosen": choose(rows)["run"]}
    print(f"\ntable: {write_tables(Path(args.runs) / '_tables', f'frozen_features_{args.backbone}', tables)}")
    print_chosen(tables)


if __name__ == "__main__":
    main()
