"""Keras versus TFLite for every exported model family (tests/parity.py's check; random weights, batch-norm
statistics set on the inputs so that the outputs differ per image; agreement on real data is measured by
`fpc-keras export`)."""
import numpy as np
import pytest

from conftest import FAMILIES, family_inputs, family_model
from fpc_keras.conversion import convert, worst_int8_ops
from fpc_keras.litert import TFLiteModel, measure_interleaved
from parity import assert_parity


# Every family converts in about 13 s per variant even at 32x32 (the converter's cost follows the graph, not the
# input): the default run checks fp32 for every family and the fp32 / fp16 / int8 / mixed matrix for one Lite family
# and VGG16; `pytest -m slow` runs the matrix for all of them.
FULL_MATRIX = {"lite_se", "vgg16_multiscale"}
CASES = [pytest.param(family, variants, marks=[] if family in FULL_MATRIX or variants == ("fp32",) else
                      [pytest.mark.slow], id=f"{family}-{'-'.join(variants)}")
         for family in FAMILIES for variants in ((("fp32", "fp16", "int8", "mixed"),) if family in FULL_MATRIX
                                                 else (("fp32",), ("fp16", "int8", "mixed")))]


@pytest.mark.parametrize("family, variants", CASES)
def test_keras_tflite_parity(family, variants, tmp_path):
    model = family_model(family)
    x = family_inputs(16)
    reference = np.asarray(model(x, training=False))
    for variant in variants:
        path = tmp_path / f"{variant}.tflite"
        quantised = variant in ("int8", "mixed")
        kept = worst_int8_ops(model, x, 3) if variant == "mixed" else []
        path.write_bytes(convert(model, variant, x if quantised else None, float_ops=kept))
        print(family, variant, assert_parity(variant, TFLiteModel(path)(x), reference))


def test_squeeze_and_excitation_converts_for_a_batch_of_one_without_shape_arithmetic():
    """The export traces a batch of exactly one: with a free batch the SE block's Dense on a 4-D tensor converts with
    SHAPE / GATHER / REDUCE_PROD / PACK ops that the XNNPACK delegate does not take."""
    from collections import Counter

    from fpc_keras.litert import interpreter_class

    content = convert(family_model("lite_se"), "int8", family_inputs(8))
    interpreter = interpreter_class()(model_content=content)
    ops = Counter(op["op_name"] for op in interpreter._get_ops_details())
    assert ops["CONV_2D"] and not {"SHAPE", "GATHER", "REDUCE_PROD", "PACK"} & set(ops), ops
    assert [tuple(d["shape"]) for d in interpreter.get_input_details()] == [(1, 32, 32, 3)]


def test_runtimes_are_timed_in_interleaved_rounds():
    """Each round calls every runtime once, in turn, so a slow spell of the CPU hits them alike."""
    order = []
    result = measure_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, runs=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert result.keys() == {"a", "b"} and all(r["runs"] == 3 and r["p90_ms"] >= r["median_ms"] >= 0
                                               for r in result.values())


def test_flip_tta_averages_the_image_and_its_mirror_and_exports_to_int8(tmp_path):
    """`models.tta.build_flip_tta`: the probabilities of the image and of its left-right mirror, averaged, in one
    graph that converts to a full-int8 .tflite following its Keras model (the mirror is a GATHER, which keeps its
    input's int8 scale)."""
    from fpc_keras.conversion import float_ops_of
    from fpc_keras.models.tta import build_flip_tta

    model = family_model("lite_se")
    tta = build_flip_tta(model)
    x = family_inputs(16)
    reference = (np.asarray(model(x, training=False)) + np.asarray(model(x[:, :, ::-1], training=False))) / 2
    np.testing.assert_allclose(np.asarray(tta(x, training=False)), reference, atol=1e-6)
    assert not np.allclose(reference, np.asarray(model(x, training=False)), atol=1e-3)  # the mirror changes it
    path = tmp_path / "int8.tflite"
    path.write_bytes(convert(tta, "int8", x))
    assert float_ops_of(path.read_bytes()) == []
    print(assert_parity("int8", TFLiteModel(path)(x), reference))
