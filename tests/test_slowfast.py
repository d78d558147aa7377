"""SlowFast (models/slowfast.py): pathways, lateral connections, presets, the ImageNet frame-encoder slow pathway,
and Keras-versus-TFLite parity (float: TFLite has no int8 CONV_3D)."""
import numpy as np
import pytest

from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.models import build_model, parameter_counts


def _slowfast(*overrides: str, classes: int = 3):
    config = load_config(None, ["model.name=slowfast", "data.clip_length=8", "data.image_size=[32, 32]",
                                "model.alpha=4", "model.weights=none", *overrides])
    config.model.num_classes = classes
    return build_model(config)


def _clip(batch: int = 2, frames: int = 8, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (batch, frames, size, size, 3)).astype("float32")


def test_scratch_pathways_and_laterals():
    model = _slowfast("model.backbone=none")
    assert model.output.shape[-1] == 3 and model.input.shape[1:] == (8, 32, 32, 3)
    names = {layer.name for layer in model.layers}
    assert {"slow_frames", "lateral1", "lateral4", "slow_pool", "fast_pool", "classifier"} <= names
    # the slow pathway sees T / alpha frames, the fast pathway all T, with beta x the channels
    assert model.get_layer("slow_frames").output.shape[1] == 2
    assert model.get_layer("fast_res5_block1_out").output.shape[1] == 8
    assert model.get_layer("lateral2").output.shape[1] == 2
    slow, fast = model.get_layer("slow_res2_block1_out").output, model.get_layer("fast_res2_block1_out").output
    assert (slow.shape[-1], fast.shape[-1]) == (4 * 16, 4 * 4)  # light: width 16; beta 1/8, at least 4 channels
    probs = np.asarray(model(_clip(), training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_paper_preset_is_resnet50_sized():
    params = parameter_counts(_slowfast("model.backbone=none", "model.preset=paper"))["total"]
    assert 30e6 < params < 40e6  # SlowFast R50: about 34 M


def test_imagenet_frame_encoder_as_the_slow_pathway():
    model = _slowfast("model.backbone=efficientnet_lite0")
    names = {layer.name for layer in model.layers}
    assert {"backbone_features", "fold_slow", "lateral1", "lateral3", "slow_scales"} <= names
    assert model.get_layer("unfold_slow3").output.shape[1:4] == (2, 1, 1)  # 2 slow frames, 1/32 of 32 px


@pytest.mark.parametrize("overrides, fix", [(["data.clip_length=6"], "multiple of alpha"),
                                            (["data.image_size=[40, 40]"], "divisible by 32"),
                                            (["model.backbone=vgg16"], "one of"),
                                            (["model.preset=huge"], "one of")])
def test_bad_settings_are_refused(overrides, fix):
    with pytest.raises(BadInputError, match=fix):
        _slowfast(*overrides)


def test_keras_tflite_parity_float(tmp_path):
    from fpc_keras.export import convert
    from fpc_keras.litert import TFLiteModel

    model = _slowfast("model.backbone=none")
    head = model.get_layer("classifier")
    rng = np.random.default_rng(0)  # a random bias so that the classes differ
    head.set_weights([w + rng.normal(0, 0.3, w.shape) for w in head.get_weights()])
    x = _clip(4)
    reference = np.asarray(model(x, training=False))
    for variant, tolerance in (("fp32", 1e-4), ("fp16", 1e-2)):
        path = tmp_path / f"{variant}.tflite"
        path.write_bytes(convert(model, variant))
        assert np.abs(TFLiteModel(path)(x) - reference).max() <= tolerance, variant
