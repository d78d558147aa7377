"""FetalNet (Płotka et al. 2021) on HC18: segmentation + plane classification + head circumference in mm, on frames
and on probe sweeps built from HC18 images.

    python experiments/fetalnet_multitask.py                              # ../shared/data/HC18
    python experiments/fetalnet_multitask.py --data hc18:/data/HC18 --ship tflite/models/hc18_fetalnet
    python experiments/fetalnet_multitask.py --no-video --set train.epochs=2    # a quick look

1. the frame model (experiments/configs/fetalnet_hc18.yaml): trained, selected on validation Dice, evaluated once
   on the test subjects (Dice, IoU, Hausdorff mm, HC error mm, Bland-Altman), the HC18 challenge CSV of the test
   images written beside the run;
2. its TFLite exports (fp32, fp16, int8), each with its own Dice / HC error and latency;
3. the video model (fetalnet_hc18_video.yaml): the same network with a ConvLSTM over the bottleneck, trained on
   random sweeps of the training images, evaluated on fixed sweeps of the test images (per-frame Dice, plane
   accuracy, best-frame detection).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fpc_keras.config import load_config
from fpc_keras.data.hc18 import write_challenge_csv
from fpc_keras.experiment import SHARED_DATA, segmentation_table
from fpc_keras.export import export_run, ship
from fpc_keras.io import atomic_write_text, read_json
from fpc_keras.train import train

CONFIGS = Path(__file__).resolve().parent / "configs"
VARIANTS = ("fp32", "fp16", "int8")


def run(config_name: str, data: str, runs: str, overrides: list[str]) -> Path:
    kind, path = data.split(":", 1)
    config = load_config(CONFIGS / config_name, [f"data.kind={kind}", f"data.path={path}", f"runs_dir={runs}",
                                                 *overrides])
    return train(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=f"hc18:{SHARED_DATA / 'HC18'}", metavar="hc18:PATH")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override both runs")
    parser.add_argument("--no-video", dest="video", action="store_false", help="skip the video (sweep) model")
    parser.add_argument("--ship", metavar="DIR", help="copy the int8 export with its card to DIR")
    args = parser.parse_args()

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
        print(f"shipped int8 to {ship(folders['int8'], args.ship)}")


if __name__ == "__main__":
    main()
