"""How close int8 stays to float: bias correction (fpc_keras.bias_correction: the rounding model matches TFLite's,
the correction shrinks the int8 model's error where weight rounding biases it, the Keras model is never changed)
and the mixed export (fpc_keras.export: the ops that stray most stay in float)."""
import numpy as np
import pytest

from fpc_keras.bias_correction import bias_corrected, int8_rounding_error
from fpc_keras.errors import BadInputError
from fpc_keras.conversion import convert, float_ops_of, layers_of, worst_int8_ops


def test_rounding_error_is_per_output_channel_and_depthwise_channels_span_the_last_two_axes():
    kernel = np.zeros((1, 1, 2, 3))
    kernel[0, 0, :, 0] = [127.0, 0.4]  # scale 1: 0.4 rounds to 0
    kernel[0, 0, :, 1] = [2.54, 1.0]   # scale 0.02: 1.0 is exactly 50 steps
    error = int8_rounding_error(kernel)
    np.testing.assert_allclose(error[0, 0, :, 0], [0.0, -0.4], atol=1e-12)
    np.testing.assert_allclose(error[0, 0, :, 1], [0.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(error[..., 2], 0.0)  # an all-zero channel stays zero
    depthwise = np.zeros((2, 1, 2, 1))  # (h, w, in, multiplier): input channel i is output channel i
    depthwise[:, 0, 0, 0] = [127.0, 0.4]
    depthwise[:, 0, 1, 0] = [0.6, 0.0]  # its own scale 0.6 / 127: 0.6 is exact
    error = int8_rounding_error(depthwise, depthwise=True)
    np.testing.assert_allclose(error[:, 0, 0, 0], [0.0, -0.4], atol=1e-12)
    np.testing.assert_allclose(error[:, 0, 1, 0], [0.0, 0.0], atol=1e-12)


def _coarse_depthwise_model(seed: int = 0):
    """Conv + BN, then three depthwise convolutions + BN whose channels have one large weight each: the small ones
    round coarsely and, per channel, the same way, so the int8 outputs drift."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(name="stem_bn")(x))
    for i in range(3):
        x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(name=f"dw{i}_bn")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    for i in range(3):
        kernel = rng.uniform(0.02, 0.06, (3, 3, 8, 1))
        kernel[1, 1] = 1.0
        model.get_layer(f"dw{i}").kernel.assign(kernel.astype("float32"))
    return model


def _int8_error(model, representative, held_out, corrected: bool, path, variant: str = "int8",
                float_ops: list[str] = ()) -> float:
    from fpc_keras.litert import TFLiteModel

    path.write_bytes(convert(model, variant, representative, bias_correction=corrected, float_ops=float_ops))
    return float(np.abs(TFLiteModel(path)(held_out) - np.asarray(model(held_out))).mean())


def test_bias_correction_shrinks_the_int8_error_on_held_out_inputs(tmp_path):
    rng = np.random.default_rng(1)
    representative = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    held_out = rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32")
    ratios = []
    for seed in range(4):  # four random models: measured ratios 0.93, 0.55, 0.51, 0.27 (logits' std about 0.6)
        model = _coarse_depthwise_model(seed)
        before = [w.copy() for w in model.get_weights()]
        plain, corrected = (_int8_error(model, representative, held_out, c, tmp_path / "m.tflite") for c in (0, 1))
        assert corrected < plain, (seed, corrected, plain)
        ratios.append(corrected / plain)
        for weight, kept in zip(model.get_weights(), before):
            np.testing.assert_array_equal(weight, kept)  # the Keras model is not changed
    assert np.mean(ratios) < 0.75, ratios


def test_the_corrected_copy_shifts_only_the_folded_biases():
    model = _coarse_depthwise_model()
    representative = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    copy, count = bias_corrected(model, representative)
    assert count == 4  # the stem and three depthwise convolutions, each with its BatchNormalization
    for name in ("stem_bn", "dw0_bn", "dw1_bn", "dw2_bn"):
        assert not np.array_equal(copy.get_layer(name).beta.numpy(), model.get_layer(name).beta.numpy()), name
        np.testing.assert_array_equal(copy.get_layer(name).gamma.numpy(), model.get_layer(name).gamma.numpy())
    np.testing.assert_array_equal(copy.get_layer("logits").kernel.numpy(), model.get_layer("logits").kernel.numpy())


def test_a_convolution_named_in_skip_keeps_its_bias():
    model = _coarse_depthwise_model()
    representative = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    copy, count = bias_corrected(model, representative, skip={"dw1"})
    assert count == 3
    np.testing.assert_array_equal(copy.get_layer("dw1_bn").beta.numpy(), model.get_layer("dw1_bn").beta.numpy())
    assert not np.array_equal(copy.get_layer("dw2_bn").beta.numpy(), model.get_layer("dw2_bn").beta.numpy())


def test_mixed_export_keeps_the_coarsely_rounded_depthwise_ops_in_float_and_stays_closer_to_float(tmp_path):
    rng = np.random.default_rng(1)
    representative = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    held_out = rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32")
    model = _coarse_depthwise_model()
    worst = worst_int8_ops(model, representative, 4)
    assert layers_of(model, worst) >= {"dw0", "dw1", "dw2"}, worst  # one large weight a channel: coarse steps
    mixed = convert(model, "mixed", representative, float_ops=worst)
    kept = float_ops_of(mixed)
    assert len(kept) == 4 and sum(op.startswith("DEPTHWISE_CONV_2D") for op in kept) == 3, kept
    assert float_ops_of(convert(model, "int8", representative)) == []
    int8 = _int8_error(model, representative, held_out, True, tmp_path / "int8.tflite")
    kept_float = _int8_error(model, representative, held_out, True, tmp_path / "mixed.tflite", "mixed", worst)
    assert kept_float < 0.5 * int8, (kept_float, int8)


def test_mixed_export_refuses_ops_it_cannot_find():
    representative = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    with pytest.raises(BadInputError, match="1 of the 1 ops chosen to stay in float were not found"):
        convert(_coarse_depthwise_model(), "mixed", representative, float_ops=["no_such_model/no_such_layer/op"])
