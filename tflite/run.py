"""Run an exported fpc_keras model with nothing but a TFLite interpreter: no TensorFlow.

    python tflite/run.py --model tflite/models/NAME/model.tflite [--threads 2] [--json] INPUT...
    python tflite/run.py --model tflite/models/hc18_fetalnet/model.tflite --pixel-mm 0.12 scan.png
    python tflite/run.py --model tflite/models/NAME/model.tflite --csv predictions.csv FOLDER
    python tflite/run.py --model tflite/models/NAME/model.tflite --overlays maps/ scan.png
    python tflite/run.py --model tflite/models/NAME/model.tflite --threads 4 --latency 50 [--record]

The model card beside the model (`model_card.json`) gives the task, labels, preprocessing and post-processing. An
INPUT is an image, a video, a DICOM still or cine, or a folder tree of them. Classifiers print the top classes per
input (video classifiers average their clips); segmenters print the head circumference in mm and the fitted ellipse,
from --pixel-mm, a --pixel-csv or the DICOM file's pixel size. Where the model folder has an input check (`fpc-keras
familiarity`), an input unlike every training image is flagged. `--csv` writes the rows of `fpc-keras predict`
instead. `--overlays DIR` saves, per image, a classifier's occlusion map (`fpc_keras/saliency.py`: where covering
the image lowers the predicted class) or a segmenter's mask over the image. `--latency N` times N single-item runs
on the fixed input the card's latency was timed on (after 3 warm-up runs) and prints the median and p90; `--record`
writes them into the card, e.g. once timed on the target board or on a quiet machine. Needs numpy, Pillow and
ai-edge-litert (or tflite-runtime) from requirements.txt, scipy for segmenters, imageio[ffmpeg] for videos and
pydicom for DICOM; it imports the small TF-free modules of fpc_keras from this repository (or an installed
fpc_keras).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if (REPO / "fpc_keras").is_dir() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fpc_keras.card import read_card, write_card  # noqa: E402
from fpc_keras.errors import exit_code_of  # noqa: E402
from fpc_keras.litert import TFLiteModel  # noqa: E402
from fpc_keras.predict import (SEEN, UNLIKE, check_writable, collect_inputs, predict_inputs,  # noqa: E402
                               read_pixel_csv, write_csv)
from fpc_keras.predictor import Predictor  # noqa: E402


def result_of(row: dict, top: int) -> dict:
    """A CSV row as the JSON line: the top classes, or the measurement; and the input check's ratio where the model
    has one (`unlike_training`: above 1, the input is unlike every training image)."""
    check = {UNLIKE: float(row[UNLIKE])} if row.get(UNLIKE) else {}
    check.update({SEEN: row[SEEN] == "1"} if row.get(SEEN) else {})
    if "label" in row:
        probs = sorted(((float(v), k[2:]) for k, v in row.items() if k.startswith("p_")), reverse=True)[:top]
        return {"input": row["file"], "top": [{"label": label, "probability": p} for p, label in probs], **check}
    ellipse = [float(row[k]) for k in ("cx", "cy", "semi_axis_a", "semi_axis_b", "angle_deg")] if row.get("cx") else None
    return {"input": row["file"], "hc_mm": float(row["hc_mm"]) if row.get("hc_mm") else None,
            "pixel_mm": float(row["pixel_mm"]), "ellipse": ellipse, **check}


def _line(result: dict) -> str:
    warning = (f" [unlike the training data: {result[UNLIKE]:.2f}x the usual distance; the result may be "
               "meaningless]" if result.get(UNLIKE, 0) > 1 else "")
    warning += (" [(nearly) one of the model's training items: its result says nothing about new scans]"
                if result.get(SEEN) else "")
    if "top" in result:
        return (f"{result['input']}: " + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in result["top"])
                + warning)
    if result["hc_mm"] is None:
        return f"{result['input']}: no head found" + warning
    cx, cy, a, b, angle = result["ellipse"]
    return (f"{result['input']}: head circumference {result['hc_mm']} mm (ellipse centre {cx:.1f}, {cy:.1f} px, "
            f"semi-axes {a:.1f}, {b:.1f} px, angle {angle:.1f} deg)" + warning)


def timed(model: str, tflite: TFLiteModel, threads: int, runs: int, record: bool) -> dict:
    """Median and p90 ms of `runs` single-item invokes of `tflite` (the file `model`, run at `threads`); with
    `record`, also the card's `export.latency.<threads>_threads`."""
    measured = tflite.latency_ms(runs)
    if record:
        card = read_card(model)
        card.setdefault("export", {}).setdefault("latency", {})[f"{threads}_threads"] = measured
        write_card(Path(model).parent, card)
    return {"model": model, "threads": threads, **measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model.tflite with model_card.json beside it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=2, help="classes to print per input")
    parser.add_argument("--pixel-mm", type=float, help="segmenters: pixel size in mm, for the circumference")
    parser.add_argument("--pixel-csv", help="segmenters: CSV of filename and pixel size(mm)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--csv", metavar="OUT", help="write the rows of `fpc-keras predict` to OUT")
    parser.add_argument("--latency", type=int, metavar="N", help="time N single-item runs at --threads; print ms")
    parser.add_argument("--record", action="store_true", help="with --latency: write the timing into the card")
    parser.add_argument("--on-bad-input", choices=("error", "skip"), default="error",
                        help="stop at an unreadable input (default) or list it and go on with the others")
    parser.add_argument("--overlays", metavar="DIR", help="save each image's occlusion map (classifiers: where "
                        "covering the image lowers the predicted class; about 170 runs an image) or mask (segmenters)")
    parser.add_argument("inputs", nargs="*")
    args = parser.parse_args(argv)
    if not args.inputs and not args.latency:
        parser.error("give INPUT... to label, or --latency N to time the model")
    return exit_code_of(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    """Time the model, or label the inputs (printing each result, or writing the CSV): one interpreter for both."""
    tflite = TFLiteModel(args.model, args.threads)
    if args.latency:
        measured = timed(args.model, tflite, args.threads, args.latency, args.record)
        print(json.dumps(measured) if args.json else f"{args.model}: median {measured['median_ms']:.1f} ms, "
              f"p90 {measured['p90_ms']:.1f} ms at {args.threads} thread(s) on {measured['cpu']}, "
              f"{measured['runs']} runs", flush=True)
    if args.csv:
        check_writable(Path(args.csv))
    card = read_card(args.model)
    predictor = Predictor(args.model, card, tflite)
    pixel_csv = read_pixel_csv(args.pixel_csv) if args.pixel_csv else None
    paths = [p for source in args.inputs for p in collect_inputs(source, card)]
    clock = [time.perf_counter()]

    def show(path: Path, rows: list[dict]) -> None:  # each input's rows as it is done, with the time it took
        # (a skipped input has none, but its time is not counted in the next one's)
        now = time.perf_counter()
        for row in rows:
            result = {**result_of(row, args.top), "ms": round(1000 * (now - clock[0]), 1)}
            print(json.dumps(result) if args.json else _line(result), flush=True)
        clock[0] = now

    everything = predict_inputs(predictor, paths, args.on_bad_input, args.pixel_mm, pixel_csv,
                                Path(args.overlays) if args.overlays else None, progress=lambda _: None,
                                on_file=None if args.csv else show)
    everything.report_skipped()
    if args.csv:
        write_csv(everything, Path(args.csv))
        print(f"{len(everything.rows)} row(s) -> {args.csv}")
    if everything.bad:
        print(f"{len(everything.bad)} unreadable input(s) skipped", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
