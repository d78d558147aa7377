"""The `fpc-keras` command: argument parsing only; the work is in the library.

Errors in the user's data, config or files print one message naming the file and the fix (exit code 2),
never a TensorFlow traceback. Heavy modules are imported inside the commands, so `--help` is instant.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .config import QUANT_VARIANTS, ExportConfig
from .errors import BadInputError, exit_code_of

DESCRIPTION = ("Train, evaluate, export and report the fpc_keras ultrasound models (one subcommand each; "
               "`fpc-keras COMMAND --help`). Bad input stops with one line naming the file and the fix (exit 2).")


def _aliases(pairs: Sequence[str]) -> dict[str, str]:
    from .errors import BadInputError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise BadInputError(f"alias {pair!r} is not OLD=NEW", "write e.g. --alias pneu=pne")
        old, new = pair.split("=", 1)
        out[old.strip()] = new.strip()
    return out


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .training import train

    config = load_config(args.config, args.set)
    run_dir = train(config)
    if args.export:
        from .export import export_as_configured

        export_as_configured(run_dir, config.export)
    print(f"run folder: {run_dir}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_path

    results = evaluate_path(args.model, args.data, args.out, args.split, _aliases(args.alias), args.on_bad_input,
                            args.threads)
    if args.hc18_csv:
        from .data.hc18 import write_challenge_csv

        if "items" not in results:
            raise BadInputError("--hc18-csv needs a segmentation model", "evaluate a HC18 segmenter on hc18: data")
        print(f"HC18 challenge CSV: {write_challenge_csv(args.hc18_csv, results['items'])}")


def cmd_familiarity(args: argparse.Namespace) -> None:
    from .familiarity import fit_beside

    entry = fit_beside(args.model, args.data, false_alarm=args.false_alarm)
    print(f"input check beside {args.model}: {entry['items']} items in {entry['groups']} groups, threshold "
          f"{entry['threshold']:.4f} (median distance of a held-out group {entry['held_out_median']:.4f})")


def cmd_ensemble(args: argparse.Namespace) -> None:
    from .ensemble import ensemble_run

    print(f"run folder: {ensemble_run(args.runs, args.out)}")


def cmd_postprocess(args: argparse.Namespace) -> None:
    from .evaluate import rechoose_postprocessing

    rechoose_postprocessing(args.model, args.data, args.threads)


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_run, ship, shipped_variant

    folders = export_run(args.model, args.quant, args.representative_samples, threads=args.threads,
                         int8_io=args.int8_io, qat=(args.qat_epochs, args.qat_learning_rate),
                         bias_correction=not args.no_bias_correction, float_ops=args.float_ops)
    for variant, folder in folders.items():
        print(f"{variant}: {folder / 'model.tflite'}")
    if args.ship:
        variant = shipped_variant(args.model, args.quant)
        print(f"shipped {variant} to {ship(Path(args.model) / 'exports' / variant, args.ship)}")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import build_report

    print(f"report: {build_report(args.runs, args.out, models_dir=args.models)}")


def cmd_gradcam(args: argparse.Namespace) -> None:
    from .explain import explain_file

    info = explain_file(args.model, args.image, args.out, args.method, args.class_name)
    print(f"{info['method']} for class {info['class']} (p={info['probability']:.3f}, predicted {info['predicted']})"
          f" -> {info['out']}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .evaluate import load_predictor
    from .predict import check_writable, collect_inputs, predict_inputs, read_pixel_csv, write_csv

    out = Path(args.out)
    check_writable(out)
    predictor = load_predictor(args.model, args.threads)
    files = collect_inputs(args.input, predictor.card)
    pixel_csv = read_pixel_csv(args.pixel_csv) if args.pixel_csv else None
    print(f"predicting {len(files)} input(s) with {predictor.card.get('name', args.model)} ({predictor.task})")
    prediction = predict_inputs(predictor, files, args.on_bad_input, args.pixel_mm, pixel_csv,
                                Path(args.overlays) if args.overlays else None,
                                lambda line: print(line, file=sys.stderr))
    prediction.report_skipped()
    write_csv(prediction, out)
    print(f"{len(prediction.rows)} row(s) -> {out}" + (f"; {len(prediction.bad)} unreadable file(s) skipped"
                                                        if prediction.bad else ""))


def cmd_datasets(args: argparse.Namespace) -> None:
    from .data.datasets import KINDS, parse_data_spec, prepare_records, read_records
    from .data.records import split_counts

    if not args.data:
        for kind, description in KINDS.items():
            print(f"{kind:14s} {description}")
        return
    kind, path = parse_data_spec(args.data)
    if args.duplicates:
        _list_duplicates(read_records(kind, path, _aliases(args.alias)), path, args)
        return
    records = prepare_records(kind, path, args.val_fraction, args.test_fraction, args.seed, _aliases(args.alias),
                              duplicates=args.group_duplicates, distance=args.distance)
    groups = len({r.group for r in records})
    print(f"{args.data}: {len(records)} items in {groups} groups; no group in two splits")
    for split, counts in split_counts(records).items():
        print(f"  {split:6s} {sum(counts.values()):6d}  {counts}")


def _list_duplicates(records: list, root: str, args: argparse.Namespace) -> None:
    """Print the near-duplicate clusters of a dataset (and store them with --out, for the report)."""
    from .data.duplicates import find_duplicates, summarise
    from .io import atomic_write_json

    found = find_duplicates(records, args.distance, lambda line: print(line, file=sys.stderr))
    summary = {"data": args.data, **summarise(records, found, args.distance, root)}
    if args.out:
        atomic_write_json(Path(args.out), summary)
    print(f"{args.data}: {summary['items']} items; {summary['clusters']} near-duplicate clusters (hash distance <= "
          f"{args.distance} bits) hold {summary['items_in_clusters']} items -> {summary['groups_after']} groups; "
          f"largest {summary['largest']}; {len(summary['exact_pairs'])} exact copy pair(s); "
          f"{len(summary['mixed_label_clusters'])} cluster(s) with more than one label")
    for cluster in summary["mixed_label_clusters"]:
        print(f"  labels {'/'.join(cluster['labels'])}: " + ", ".join(cluster["items"]))
    for cluster in summary["top_clusters"]:
        print(f"  {len(cluster['items']):3d} items ({'/'.join(cluster['labels'])}): " + ", ".join(
            Path(item).name for item in cluster["items"][:6]) + (" ..." if len(cluster["items"]) > 6 else ""))
    if args.out:
        print(f"-> {args.out}")


def version() -> str:
    """The package version and, in a git checkout, the commit ("-dirty" with uncommitted changes)."""
    from . import __version__
    from .card import git_commit

    commit = git_commit()
    return f"fpc-keras {__version__}" + (f" (commit {commit})" if commit != "unknown" else "")


class _Version(argparse.Action):
    """`--version`: computed only when asked (it runs git)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and git commit, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpc-keras", description=DESCRIPTION)
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up messages (hidden by default)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config (resumes an interrupted run)")
    p.add_argument("--config", required=True, help="YAML config, e.g. experiments/configs/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--export", action="store_true", help="export the TFLite variants of export.quant afterwards")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run folder, .keras or .tflite model on a dataset")
    p.add_argument("--model", required=True, help="run folder, .keras file or .tflite file (model card beside it)")
    p.add_argument("--data", required=True, metavar="KIND:PATH",
                   help="fetal_planes:, folder:, prefix:, csv:, hc18: or videos: followed by the path "
                   "(`fpc-keras datasets` says what each kind reads)")
    p.add_argument("--split", choices=("train", "val", "test"), help="evaluate one split (default: all items; "
                   "FETAL_PLANES_DB: its official test split)")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--alias", action="append", default=[], metavar="OLD=NEW", help="map a data label (repeatable)")
    p.add_argument("--on-bad-input", choices=("error", "skip"), default="error",
                   help="stop at an unreadable file (default) or count and skip it")
    p.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    p.add_argument("--hc18-csv", metavar="FILE", help="segmenters: also write the HC18 challenge result CSV "
                   "(filename, center_x_mm, center_y_mm, semi_axes_a_mm, semi_axes_b_mm, angle_rad)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("postprocess", help="choose a segmenter's post-processing again on its validation split "
                       "and re-measure its test split (rewrites its card)")
    p.add_argument("--model", required=True, help="run folder, .keras or .tflite segmenter (model card beside it)")
    p.add_argument("--data", required=True, metavar="KIND:PATH", help="its training data, e.g. hc18:PATH")
    p.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    p.set_defaults(func=cmd_postprocess)

    p = sub.add_parser("export", help="export a run's model to TFLite (fp32, fp16, dynamic, int8, mixed, qat)")
    p.add_argument("--model", required=True, help="run folder")
    p.add_argument("--quant", nargs="+", default=["fp32", "int8"], choices=QUANT_VARIANTS,
                   help="int8: post-training full-integer; mixed: int8 but for the --float-ops ops that stray most "
                   "from float; qat: quantisation-aware fine-tuning, then full-integer")
    p.add_argument("--float-ops", type=int, default=ExportConfig.float_ops,
                   help="mixed: how many ops stay in float (ranked by TFLite's quantisation debugger)")
    p.add_argument("--qat-epochs", type=int, default=ExportConfig.qat_epochs)
    p.add_argument("--qat-learning-rate", type=float, default=ExportConfig.qat_learning_rate)
    p.add_argument("--int8-io", action="store_true", help="int8 inputs and outputs (default: float I/O)")
    p.add_argument("--no-bias-correction", action="store_true",
                   help="int8 / mixed without bias correction (default: corrected on the representative images)")
    p.add_argument("--representative-samples", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ship", metavar="DIR", help="copy a variant with its card to DIR (e.g. tflite/models/x): the "
                   "quantised one chosen on validation when --quant has one (exports/choice.json), else the last")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ensemble", help="average the class probabilities of finished runs (same classes, same "
                       "split) in one model: a run folder of its own, measured on their test split, exported as one")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", required=True, help="the ensemble's run folder (its name is the folder's)")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("familiarity", help="fit the input check beside a model: flags inputs unlike every "
                       "training image (an ImageNet encoder's embeddings; fpc-keras predict and tflite/run.py use it)")
    p.add_argument("--model", required=True, help="a shipped model folder, run folder or model file")
    p.add_argument("--data", required=True, metavar="KIND:PATH", help="the data the model was trained on")
    p.add_argument("--false-alarm", type=float, default=0.01,
                   help="share of new images like the training ones that the threshold may flag (default 0.01)")
    p.set_defaults(func=cmd_familiarity)

    p = sub.add_parser("report", help="write the HTML report from the shipped models and runs/*/results.json")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default="reports/index.html")
    p.add_argument("--models", default="tflite/models", help="the shipped models, shown beside the runs")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("gradcam", help="save a Grad-CAM / Grad-CAM++ / Score-CAM / occlusion overlay for one image")
    p.add_argument("--model", required=True, help="run folder or .keras file (--method occlusion: also .tflite)")
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--method", choices=("gradcam", "gradcam++", "scorecam", "occlusion"), default="gradcam",
                   help="occlusion: forward passes only (about 170 at 224 px), so it explains a .tflite model too")
    p.add_argument("--class", dest="class_name", help="class to explain (default: the predicted one)")
    p.set_defaults(func=cmd_gradcam)

    p = sub.add_parser("predict", help="label new, unlabelled scans (images, videos, DICOM) into a CSV")
    p.add_argument("--model", required=True, help="run folder, .keras file or .tflite file (model card beside it)")
    p.add_argument("--input", required=True, help="an image, video or DICOM file, or a folder tree of them")
    p.add_argument("--out", required=True, help="the CSV to write, e.g. predictions.csv")
    p.add_argument("--pixel-mm", type=float, help="segmenters: mm per pixel for every input without its own")
    p.add_argument("--pixel-csv", help="segmenters: CSV of filename and pixel size(mm) (e.g. HC18's)")
    p.add_argument("--overlays", metavar="DIR", help="save mask overlays (segmenters), Grad-CAM (Keras image "
                   "classifiers) or occlusion maps (.tflite image classifiers)")
    p.add_argument("--on-bad-input", choices=("error", "skip"), default="error",
                   help="skip: list and count unreadable files instead of stopping")
    p.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("datasets", help="list dataset kinds, or read one and show its splits and classes")
    p.add_argument("data", nargs="?", metavar="KIND:PATH")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alias", action="append", default=[], metavar="OLD=NEW")
    p.add_argument("--duplicates", action="store_true",
                   help="list the near-duplicate clusters (perceptual hash) instead of the splits")
    p.add_argument("--distance", type=int, default=10, help="hash bits (of 64) within which images are near-twins")
    p.add_argument("--group-duplicates", choices=("auto", "phash", "off"), default="auto",
                   help="join near-duplicates into one group before splitting (auto: for data without subject ids)")
    p.add_argument("--out", help="with --duplicates: write the clusters as JSON (the report shows reports/duplicates/)")
    p.set_defaults(func=cmd_datasets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not cmd_datasets:  # reading a dataset needs no TensorFlow
        from .quiet import start_tensorflow

        start_tensorflow(args.verbose)
    return exit_code_of(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
