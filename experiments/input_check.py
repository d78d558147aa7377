"""How well the input check (`fpc-keras familiarity`) tells a model's training data from other images: the share of
*new* images of the training data it flags (grouped K-fold: the reference and its threshold fitted on K-1 folds'
groups, the held-out fold's images checked; the target is the check's false-alarm rate) and the share of each other
dataset's images it flags (reference on all of the training data). Prints a markdown table.

    python experiments/input_check.py --data folder:../shared/data/BUSI --other hc18:../shared/data/HC18 \\
        prefix:../shared/data/abdominal_organs ../shared/data/FETAL_PLANES_DB/Images ../shared/data/echo_views

An --other is KIND:PATH, or a folder whose images (any depth) are all taken.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import fpc_keras.experiment  # noqa: F401  (first: starts TensorFlow without its C++ start-up lines)
from fpc_keras.data.folders import IMAGE_EXTENSIONS, files_under
from fpc_keras.data.records import Record
from fpc_keras.errors import BadInputError, exit_code_of
from fpc_keras.familiarity import FALSE_ALARM, distances, embed_records, fit_reference, grouped_records, int8_encoder
from fpc_keras.litert import TFLiteModel


def other_records(spec: str) -> list[Record]:
    if Path(spec).is_dir():
        files = files_under(Path(spec), IMAGE_EXTENSIONS)
        if not files:
            raise BadInputError(f"{spec} holds no image", "give a folder of images or KIND:PATH")
        return [Record(str(p), None, p.stem) for p in files]
    return grouped_records(spec)


def held_out_flags(embeddings: np.ndarray, groups: np.ndarray, folds: int, false_alarm: float) -> np.ndarray:
    """Per image: flagged by a reference fitted on the other folds' groups."""
    names = np.unique(groups)
    fold_of = dict(zip(names, np.random.default_rng(0).permutation(len(names)) % folds))
    fold = np.array([fold_of[g] for g in groups])
    flagged = np.zeros(len(groups), bool)
    for k in range(folds):
        reference, _ = fit_reference(embeddings[fold != k], groups[fold != k], false_alarm)
        flagged[fold == k] = distances(reference, embeddings[fold == k]) > reference.threshold
    return flagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, metavar="KIND:PATH", help="the training data")
    parser.add_argument("--other", nargs="+", default=[], help="other data: KIND:PATH or a folder of images")
    parser.add_argument("--resize", default="pad", help="the model's resize mode (its card's preprocessing)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--false-alarm", type=float, default=FALSE_ALARM)
    args = parser.parse_args(argv)
    return exit_code_of(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    records = grouped_records(args.data)
    quiet = lambda _: None  # noqa: E731
    with tempfile.TemporaryDirectory() as folder:
        encoder_file = Path(folder) / "encoder.tflite"
        encoder_file.write_bytes(int8_encoder(records, args.resize, progress=print))
        encoder = TFLiteModel(encoder_file)
        embeddings = embed_records(encoder, records, args.resize, print)
        groups = np.array([r.group for r in records])
        flagged = held_out_flags(embeddings, groups, args.folds, args.false_alarm)
        reference, _ = fit_reference(embeddings, groups, args.false_alarm)
        rows = [(f"{args.data}, held-out groups ({args.folds} folds)", len(records), flagged.mean())]
        for spec in args.other:
            other = other_records(spec)
            rows.append((spec, len(other), np.mean(distances(reference, embed_records(encoder, other, args.resize,
                                                                                     quiet)) > reference.threshold)))
    print(f"\nInput check fitted on {args.data} ({len(records)} items, {len(set(groups))} groups), false-alarm "
          f"target {args.false_alarm}, threshold on all of it {reference.threshold:.4f}:\n")
    print("| data | n | flagged |\n|---|---|---|")
    for name, n, share in rows:
        print(f"| {name} | {n} | {100 * share:.1f} % |")


if __name__ == "__main__":
    sys.exit(main())
