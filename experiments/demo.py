"""The main job on the data the repository ships (samples/busi_small, CC0): train, evaluate, export to
TFLite (fp32 + int8, each re-evaluated), a Grad-CAM overlay of the Keras model and an occlusion map of the int8
one, and the HTML report.

    python experiments/demo.py [--set train.epochs=5 ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fpc_keras.cli import main as cli_main

CONFIG = Path(__file__).with_name("configs") / "demo.yaml"
IMAGE = "samples/busi_small/malignant/malignant (111).png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--report", default="reports/index.html")
    args = parser.parse_args()
    start = time.perf_counter()
    overrides = [f"--set={o}" for o in [f"runs_dir={args.runs}", *args.set]]
    steps = [
        ["train", "--config", str(CONFIG), "--export", *overrides],
        ["gradcam", "--model", f"{args.runs}/demo_busi_sample", "--image", IMAGE,
         "--out", f"{args.runs}/demo_busi_sample/gradcam.png"],
        ["gradcam", "--model", f"{args.runs}/demo_busi_sample/exports/int8/model.tflite", "--method", "occlusion",
         "--image", IMAGE, "--out", f"{args.runs}/demo_busi_sample/occlusion_int8.png"],  # the edge model explained
        ["report", "--runs", args.runs, "--out", args.report],
    ]
    for step in steps:
        print(f"\n== fpc-keras {' '.join(step[:1])}", flush=True)
        code = cli_main(step)
        if code:
            return code
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s: open {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
