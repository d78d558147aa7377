"""A TFLite model behind one call, on ai-edge-litert only (no TensorFlow): float or int8 input and output."""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BadInputError
from .quiet import native_output_silenced


def interpreter_class() -> type:
    """ai-edge-litert's interpreter, or tflite-runtime's where a board has that instead."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise BadInputError("no TFLite interpreter installed",
                                "pip install ai-edge-litert (or tflite-runtime)") from None
    return Interpreter


class TFLiteModel:
    """`model(batch)` runs the interpreter one item at a time and returns float outputs (dequantised)."""

    def __init__(self, path: str | Path, threads: int = 2):
        Interpreter = interpreter_class()
        try:
            with native_output_silenced():  # the runtime prints a line per delegate, on the first invoke
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
                self.interpreter.invoke()
        except (ValueError, RuntimeError) as exc:
            raise BadInputError(f"{path} is not a valid TFLite model ({exc})", "export it again") from None
        self.input = self.interpreter.get_input_details()[0]
        # Multi-task models (fetalnet: mask, plane): outputs ranked as `ranked_outputs` does; the first is primary.
        self.outputs = sorted(self.interpreter.get_output_details(), key=lambda detail: -len(detail["shape"]))

    @property
    def output(self) -> dict:
        """The primary output's details."""
        return self.outputs[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"])

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    @staticmethod
    def _dequantise(y: np.ndarray, detail: dict) -> np.ndarray:
        if detail["dtype"] in (np.int8, np.uint8):
            scale, zero = detail["quantization"]
            return (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def run_one(self, item: np.ndarray, output: int | None = 0):
        expected = self.input_shape[1:]
        if tuple(item.shape) != expected:
            raise BadInputError(f"input of shape {item.shape} does not fit the model's {expected}",
                                "resize inputs as the model card's preprocessing says")
        self.interpreter.set_tensor(self.input["index"], self._quantise(item[None]))
        self.interpreter.invoke()
        read = lambda d: self._dequantise(self.interpreter.get_tensor(d["index"]), d)[0]  # noqa: E731
        return [read(d) for d in self.outputs] if output is None else read(self.outputs[output])

    def __call__(self, batch: np.ndarray, output: int | None = 0):
        """Output `output` (0: the primary one; None: all of them, ranked) for each item of the batch."""
        if output is None:
            per_item = [self.run_one(item, None) for item in batch]
            return [np.stack(outputs) for outputs in zip(*per_item)]
        return np.stack([self.run_one(item, output) for item in batch])

    def timing_call(self) -> Callable[[], object]:
        """One single-item run on the fixed timing input: what `latency_ms` times."""
        item = timing_input(self.input_shape[1:])
        return lambda: self.run_one(item)

    def latency_ms(self, runs: int = 30, warmup: int = 3) -> dict[str, float | str]:
        """Median and p90 of single-item invoke times on a fixed random input, and the CPU they were timed on."""
        return {**measure_latency(self.timing_call(), runs, warmup), "cpu": cpu_name()}


def ranked_outputs(outputs) -> list[np.ndarray]:
    """A model's outputs as numpy, highest rank first: a multi-task model's primary output (fetalnet's mask) is
    the first, whatever order the runtime lists them in."""
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    return sorted((np.asarray(o) for o in outputs), key=lambda o: -o.ndim)


def primary_output(outputs) -> np.ndarray:
    return ranked_outputs(outputs)[0]


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its int8 matrix extensions: int8 latency of large convolutions (VGG16) differs
    about 3x between an Intel host with AMX and an AMD EPYC with AVX-512 VNNI at the same thread count, so a card's
    latency means little without it."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    extensions = [name for name in ("avx512_vnni", "avx_vnni", "amx_int8") if name in flags]
    name = fields.get("model name") or fields.get("Model") or platform.machine()
    return f"{name} ({', '.join(extensions)})" if extensions else name


def timing_input(shape: tuple[int, ...]) -> np.ndarray:
    """The fixed random 0-255 image every runtime is timed on, so that their latencies compare."""
    return np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)


def measure_latency(call: Callable[[], object], runs: int = 30, warmup: int = 3) -> dict[str, float]:
    """Median and p90 wall time of `call()` in ms, after `warmup` untimed calls (any runtime: TFLite, Keras, ONNX)."""
    return measure_interleaved({"call": call}, runs, warmup)["call"]


def measure_interleaved(calls: dict[str, Callable[[], object]], runs: int = 30, warmup: int = 3,
                        settle_s: float = 0.05) -> dict[str, dict[str, float]]:
    """`measure_latency` of several runtimes at once, in rounds that call each of them once in turn.

    On a shared or throttled CPU (seen here: the same model 26.7 ms in one minute, 100 ms in the next), runtimes
    timed one after another meet different slow spells and their ratios mean little; interleaved, a slow spell
    hits them all alike. Before each call the others' worker threads get `settle_s` to stop spinning: without
    it, a 2-thread runtime timed right after another ran 1.6x slower than alone."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + runs):
        for name, call in calls.items():
            if len(calls) > 1:
                time.sleep(settle_s)
            start = time.perf_counter()
            call()
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "runs": runs}
            for name, t in times.items()}
