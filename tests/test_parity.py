"""Keras versus TFLite for every exported model family: fp32 within 1e-4, fp16 within 1e-2, int8 top-1 agreement
reported (random weights and inputs: agreement on real data is measured by `fpc-keras export`)."""
import numpy as np
import pytest

from conftest import FAMILIES, family_model
from fpc_keras.export import convert
from fpc_keras.litert import TFLiteModel


@pytest.mark.parametrize("family", FAMILIES)
def test_keras_tflite_parity(family, tmp_path):
    model = family_model(family)
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    reference = np.asarray(model(x, training=False))
    assert reference.std() > 1e-3
    outputs = {}
    for variant in ("fp32", "fp16", "int8"):
        path = tmp_path / f"{variant}.tflite"
        path.write_bytes(convert(model, variant, x if variant == "int8" else None))
        outputs[variant] = TFLiteModel(path)(x)
    assert np.abs(outputs["fp32"] - reference).max() <= 1e-4
    assert np.abs(outputs["fp16"] - reference).max() <= 1e-2
    agreement = float((outputs["int8"].argmax(1) == reference.argmax(1)).mean())
    print(f"{family}: int8 top-1 agreement with Keras {agreement:.2f}")
    assert outputs["int8"].shape == reference.shape
