"""The one Keras-versus-TFLite check that every model family's tests use. fp32 must equal Keras to 1e-4. fp16
and the quantised exports (int8, mixed, qat) must follow their float model image by image: the correlation of
their outputs' deviations from the float model's mean output with the float model's own deviations must reach
MIN_CORRELATION (an export that ignored its input, or was calibrated on other data, scores about 0), and a
classifier's top-1 must agree with Keras' on more than half the inputs (chance: 1 / classes).

The models are random-weight test models, which quantise far worse than trained ones (int8 correlations of
0.66-0.99 here); fidelity on real data is measured by `fpc-keras export` and the shipped models' slow tests."""
from __future__ import annotations

import numpy as np

FP32_TOLERANCE = 1e-4
# probabilities: float16 weights, float32 arithmetic. Measured on the random-weight test models (2-core AMD EPYC,
# AVX-512): max |difference| 0.042 (Lite SE), 0.050 (MHSA), 0.062 (CBAM), 0.002 (VGG16), each with correlation
# >= 0.994 and top-1 agreement 1.0; the correlation below is the check that catches a broken export.
FP16_MAX_ERROR = 0.08
MIN_CORRELATION = {"fp16": 0.99, "quantised": 0.6}
MIN_AGREEMENT = 0.5


def assert_parity(variant: str, output: np.ndarray, reference: np.ndarray, task: str = "classification") -> dict:
    """Assert that `output` (the .tflite's) follows `reference` (Keras', same inputs) as `variant` must; returns
    the figures. `task`: "classification" (rows of class probabilities) or "segmentation" (masks)."""
    output, reference = np.asarray(output, np.float64), np.asarray(reference, np.float64)
    assert output.shape == reference.shape, (output.shape, reference.shape)
    error = float(np.abs(output - reference).max())
    if variant == "fp32":
        assert error <= FP32_TOLERANCE, f"fp32: max |difference| {error:.2e}"
        return {"max_abs": error}
    deviation = reference - reference.mean(axis=0)
    assert np.abs(deviation).mean() > 1e-3, "the float outputs hardly differ between inputs: nothing to compare"
    correlation = float(np.corrcoef((output - reference.mean(axis=0)).ravel(), deviation.ravel())[0, 1])
    figures = {"correlation": correlation, "mean_abs": float(np.abs(output - reference).mean()), "max_abs": error}
    if variant == "fp16":
        assert error <= FP16_MAX_ERROR, f"fp16: max |difference| {error:.3f}"
    assert correlation >= MIN_CORRELATION.get(variant, MIN_CORRELATION["quantised"]), f"{variant}: {figures}"
    if task == "classification":
        figures["top1_agreement"] = float((output.argmax(-1) == reference.argmax(-1)).mean())
        assert figures["top1_agreement"] > MIN_AGREEMENT, f"{variant}: {figures}"
    return figures
