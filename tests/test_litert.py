"""The TF-free runtime: its CPU label (what a card's latency was measured on) and its choice of interpreter."""
import platform

import pytest

from fpc_keras.litert import cpu_name

INTEL = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_bf16 amx_int8 amx_tile
"""
PI = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_the_cpu_is_named_with_its_int8_matrix_extensions(tmp_path):
    (tmp_path / "intel").write_text(INTEL)
    (tmp_path / "pi").write_text(PI)
    assert cpu_name(tmp_path / "intel") == "Intel(R) Xeon(R) Platinum 8480+ (avx512_vnni, amx_int8)"
    assert cpu_name(tmp_path / "pi") == "Raspberry Pi 4 Model B Rev 1.4"
    assert cpu_name(tmp_path / "missing") == (platform.processor() or platform.machine())


def test_tflite_runtime_is_the_fallback_interpreter(monkeypatch):
    """Where ai-edge-litert is not installed, the tflite-runtime interpreter is used; with neither, one clear error."""
    import sys
    import types

    from fpc_keras import litert

    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = object
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    assert litert.interpreter_class() is object
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(litert.BadInputError, match="no TFLite interpreter"):
        litert.interpreter_class()
