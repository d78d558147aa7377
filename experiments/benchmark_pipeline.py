"""Input pipeline versus model: images/s the tf.data pipeline delivers (12,400 generated images streamed from disk,
as many as FETAL_PLANES_DB) against images/s the model trains on, and peak memory.

    python experiments/benchmark_pipeline.py                         # 12,400 images in /tmp/fpc_pipeline_images
    python experiments/benchmark_pipeline.py --count 2000 --size 800 600 --backbone efficientnet_lite2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fpc_keras.experiment  # noqa: F401  (first: starts TensorFlow without its C++ start-up lines)
from fpc_keras.config import load_config
from fpc_keras.errors import exit_code_of
from fpc_keras.models import build_model
from fpc_keras.models.backbones import set_backbone_trainable
from fpc_keras.throughput import model_rate, peak_rss_mb, pipeline_rate, write_images
from fpc_keras.training.averaging import compile_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="/tmp/fpc_pipeline_images")
    parser.add_argument("--count", type=int, default=12400)
    parser.add_argument("--size", type=int, nargs=2, default=[400, 300], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per model (after a warm-up)")
    args = parser.parse_args()

    records = write_images(Path(args.folder), args.count, tuple(args.size))
    print(f"{len(records)} images of {args.size[0]}x{args.size[1]} in {args.folder}; peak memory so far "
          f"{peak_rss_mb():.0f} MB")
    piped = pipeline_rate(records, args.image_size, args.batch_size, augment=True)
    print(f"pipeline (decode, resize to {args.image_size}, shuffle, augment, batch {args.batch_size}), all "
          f"{piped['images']} images streamed: {piped['images_per_s']:.0f} images/s ({piped['seconds']:.0f} s); "
          f"peak memory {peak_rss_mb():.0f} MB")
    config = load_config(None, [f"model.backbone={args.backbone}", "model.attention=se",
                                f"data.image_size=[{args.image_size}, {args.image_size}]"])
    config.model.num_classes = 6
    rows = []
    for name, blocks in (("head only (backbone frozen, from images)", 0), ("whole network", None)):
        model = build_model(config)
        set_backbone_trainable(model, blocks)
        rate = model_rate(compile_classifier(model, 1e-3, 0.0), args.image_size, args.batch_size, args.steps)
        rows.append((name, rate["images_per_s"]))
        print(f"model {args.backbone} + SE training, {name}: {rate['images_per_s']:.1f} images/s")
    for name, rate in rows:
        print(f"pipeline / model ({name}): {piped['images_per_s'] / rate:.1f}x (target >= 3x)")
    print(f"peak memory of the whole benchmark: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
