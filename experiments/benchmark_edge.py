"""Edge benchmark of one trained run: Keras, TFLite fp32 / fp16 / int8 (and qat where exported) and ONNX Runtime
fp32 at 1 and 2 threads; prints the table (median / p90 latency, size, ratios, each variant's own top-1) and
writes RUN/benchmark_edge.json for the report.

    python experiments/benchmark_edge.py --model runs/demo_busi_sample
    python experiments/benchmark_edge.py --model runs/cm_abdominal_vgg16_multiscale_fc512 --variants fp32 int8 qat
"""
from __future__ import annotations

import argparse

from fpc_keras.benchmark import benchmark, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run folder (exports missing from it are made first)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp16", "int8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime peer")
    args = parser.parse_args()
    result = benchmark(args.model, args.variants, args.threads, args.runs, onnx=not args.no_onnx)
    print(table(result))


if __name__ == "__main__":
    main()
