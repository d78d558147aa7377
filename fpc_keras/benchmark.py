"""Edge benchmark: latency (median, p90) at 1 and 2 threads and size of one model as Keras, TFLite fp32 / fp16 /
int8 (/ qat) and ONNX Runtime fp32 (a peer runtime, through tf2onnx), with the ratios, and each TFLite variant's
own accuracy beside the Keras model's where `fpc-keras export` measured it. Single-item batches, as on a device; the
runtimes are timed interleaved (`litert.measure_interleaved`), so their ratios survive a noisy CPU.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import keras
import tensorflow as tf

from .card import read_card
from .errors import BadInputError
from .export import export_run
from .io import atomic_write_json
from .litert import TFLiteModel, cpu_name, measure_interleaved, measure_latency, timing_input

Progress = Callable[[str], None]


def onnx_session_factory(model: keras.Model, shape: tuple[int, ...]) -> tuple[Callable[[int], Callable], int]:
    """(threads -> a callable running one item in ONNX Runtime fp32, the ONNX file's size in bytes)."""
    try:
        import onnxruntime as ort
        import tf2onnx
    except ImportError:
        raise BadInputError("the ONNX Runtime comparison needs tf2onnx and onnxruntime",
                            "pip install -e '.[bench]' (tf2onnx==1.17.0, onnxruntime==1.31.1)") from None
    function = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[tf.TensorSpec((1, *shape), tf.float32,
                                                                                      name="image")], opset=17)
    data = proto.SerializeToString()
    item = timing_input((1, *shape))

    def session(threads: int) -> Callable:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        runner = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        name = runner.get_inputs()[0].name
        return lambda: runner.run(None, {name: item})

    return session, len(data)


def benchmark(run_dir: str | Path, variants: Sequence[str] = ("fp32", "fp16", "int8"),
              threads: Sequence[int] = (1, 2), runs: int = 50, onnx: bool = True,
              progress: Progress = print) -> dict:
    """Measure every variant; exports missing from `run_dir/exports` are made first (with their accuracy)."""
    run_dir = Path(run_dir)
    missing = [v for v in variants if not (run_dir / "exports" / v / "model.tflite").is_file()]
    if missing:
        export_run(run_dir, missing, progress=progress)
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    shape = tuple(model.inputs[0].shape[1:])
    item = timing_input((1, *shape))
    step = tf.function(lambda x: model(x, training=False))
    rows = {"keras": {"size_bytes": _keras_size(model), "latency": {
        f"{os.cpu_count()}_threads (TF default)": measure_latency(lambda: step(item), runs)}}}
    paths = {f"tflite_{variant}": run_dir / "exports" / variant / "model.tflite" for variant in variants}
    for name, path in paths.items():
        rows[name] = {"size_bytes": path.stat().st_size, "latency": {}, "accuracy": _accuracy(read_card(path))}
    session = None
    if onnx:
        progress("      converting to ONNX (tf2onnx) for ONNX Runtime fp32")
        session, size = onnx_session_factory(model, shape)
        rows["onnxruntime_fp32"] = {"size_bytes": size, "latency": {}}
    for n in threads:
        progress(f"      timing {', '.join(name for name in rows if name != 'keras')} at {n} threads, interleaved")
        calls = {name: TFLiteModel(path, n).timing_call() for name, path in paths.items()}
        if session is not None:
            calls["onnxruntime_fp32"] = session(n)
        for name, latency in measure_interleaved(calls, runs).items():
            rows[name]["latency"][f"{n}_threads"] = latency
    result = {"model": str(run_dir), "input_shape": [1, *shape], "runs": runs, "cpu": cpu_name(), "rows": rows,
              "ratios": _ratios(rows, threads)}
    atomic_write_json(run_dir / "benchmark_edge.json", result)
    return result


def _keras_size(model: keras.Model) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.weights.h5"
        model.save_weights(path)
        return path.stat().st_size


def _accuracy(card: dict) -> dict | None:
    metrics = card.get("metrics", {})
    split = next((k for k in metrics if k.startswith("keras_")), None)
    if split is None or not metrics.get(split):
        return None
    own, keras_metrics = metrics[split[len("keras_"):]], metrics[split]
    return {"split": split[len("keras_"):], "top1": own["top1"]["value"], "keras_top1": keras_metrics["top1"]["value"],
            "drop_points": 100 * (keras_metrics["top1"]["value"] - own["top1"]["value"])}


def _ratios(rows: dict, threads: Sequence[int]) -> dict:
    """Each TFLite variant's median latency over ONNX Runtime fp32's, per thread count (< 1: faster)."""
    peer = rows.get("onnxruntime_fp32")
    if peer is None:
        return {}
    return {f"{name}/onnxruntime_fp32": {f"{n}_threads": row["latency"][f"{n}_threads"]["median_ms"]
                                         / peer["latency"][f"{n}_threads"]["median_ms"] for n in threads}
            for name, row in rows.items() if name.startswith("tflite_")}


def table(result: dict) -> str:
    """The benchmark as a markdown table, under the CPU it was timed on (results from before it was recorded: none)."""
    lines = [*([f"Timed on {result['cpu']}, {result['runs']} runs each.", ""] if "cpu" in result else []),
             "| runtime | size MB | latency median / p90 ms | vs ORT fp32 (median) | top-1 (Keras) |",
             "|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        latency = "; ".join(f"{k.split('_')[0]} thr {v['median_ms']:.2f} / {v['p90_ms']:.2f}"
                            if "TF default" not in k else f"{k}: {v['median_ms']:.2f} / {v['p90_ms']:.2f}"
                            for k, v in row["latency"].items())
        ratio = result["ratios"].get(f"{name}/onnxruntime_fp32", {})
        accuracy = row.get("accuracy")
        lines.append(f"| {name} | {row['size_bytes'] / 1e6:.2f} | {latency} | "
                     + ("; ".join(f"{k.split('_')[0]} thr {v:.2f}x" for k, v in ratio.items()) or "-") + " | "
                     + (f"{accuracy['top1']:.4f} ({accuracy['keras_top1']:.4f}, drop {accuracy['drop_points']:+.2f} pt)"
                        if accuracy else "-") + " |")
    return "\n".join(lines)
