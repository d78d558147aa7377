"""SlowFast (models/slowfast.py): pathways, lateral connections, presets, the ImageNet frame-encoder slow pathway,
and Keras-versus-TFLite parity (float: TFLite has no int8 CONV_3D)."""
import numpy as np
import pytest

from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.models import build_model, parameter_counts
from parity import assert_parity


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


def test_slow_only_ablation_pools_the_encoder_over_its_slow_frames(tmp_path):
    """Slow-only: no fast pathway, no laterals; only every alpha-th frame counts, averaged over time (order does
    not matter); it converts to TFLite."""
    from fpc_keras.conversion import convert
    from fpc_keras.litert import TFLiteModel

    import keras

    model = _slowfast("model.backbone=efficientnet_lite0", "model.fast_pathway=false")
    names = {layer.name for layer in model.layers}
    assert "fold_slow" in names and not any(n.startswith(("fast", "lateral")) for n in names)
    head = model.get_layer("head")
    rng = np.random.default_rng(0)  # a random head (and feature standardisation), so that the classes differ
    head.set_weights([w + rng.normal(0, 0.3, w.shape) for w in head.get_weights()])
    x = _clip(2)
    reference = np.asarray(model(x, training=False))
    # the clip's prediction is the head's softmax of its slow frames' mean logits: what training on frames needs
    frames = np.asarray(keras.Model(model.input, model.get_layer("unfold_slow").output)(x))
    # log-probabilities are logits shifted per frame, so their mean has the softmax of the mean logits
    mean_logits = np.stack([np.log(np.asarray(head(f, training=False))) for f in frames]).mean(axis=1)
    expected = np.exp(mean_logits - mean_logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(expected / expected.sum(axis=1, keepdims=True), reference, atol=1e-5)
    other = x.copy()
    other[:, [1, 2, 3, 5, 6, 7]] = rng.uniform(0, 255, other[:, [1, 2, 3, 5, 6, 7]].shape)  # not slow frames
    swapped = x[:, [4, 1, 2, 3, 0, 5, 6, 7]]  # the two slow frames (0 and 4) in the other order
    assert reference.std() > 1e-3
    for changed in (other, swapped):
        assert np.abs(np.asarray(model(changed, training=False)) - reference).max() <= 1e-5
    path = tmp_path / "slow_only.tflite"
    path.write_bytes(convert(model, "fp32"))
    assert np.abs(TFLiteModel(path)(x) - reference).max() <= 1e-4


@pytest.mark.parametrize("extra, branches", [([], 6), (["model.extra_encoder=efficientnet_lite0"], 7)])
def test_slow_only_vgg16_multiscale_standardises_each_depth_for_int8(extra, branches, tmp_path):
    """Slow-only on VGG16 with `model.pooling: multiscale`: three depths pooled per frame (and, with
    `model.extra_encoder`, a second encoder's pooled features as one more branch), averaged over the slow frames;
    the export graph (`split_feature_norm`) standardises each branch before the concatenation, across the frame
    unfolding and time pooling, with the same outputs; fp32 TFLite within 1e-4, int8 follows the float model.
    Frozen, only the head trains."""
    from fpc_keras.conversion import convert
    from fpc_keras.litert import TFLiteModel
    from fpc_keras.models.backbones import set_backbone_trainable
    from fpc_keras.models.frozen_features import split_feature_norm

    import keras

    keras.utils.set_random_seed(0)  # random VGG16 weights quantise erratically: one fixed draw, six clips
    model = _slowfast("model.backbone=vgg16", "model.fast_pathway=false", "model.pooling=multiscale", *extra)
    names = {layer.name for layer in model.layers}
    assert {"block3_pool_max", "multiscale_features", "unfold_slow", "slow_pool", "head"} <= names
    assert len(model.get_layer("multiscale_features").input) == branches
    assert ("extra_frame_pool" in names) == bool(extra) and ("block6a_project_conv" in names) == bool(extra)
    set_backbone_trainable(model, 0)
    assert {id(w) for w in model.trainable_weights} == {id(w) for w in model.get_layer("head").trainable_weights}
    x = _clip(6)
    features = keras_features(model, "slow_pool", x)
    norm = model.get_layer("head").get_layer("feature_norm")
    rng = np.random.default_rng(0)
    norm.set_weights([rng.uniform(0.5, 2, features.shape[1]), rng.normal(0, 1, features.shape[1]),
                      features.mean(axis=0), features.var(axis=0) + 1e-3])
    reference = np.asarray(model(x, training=False))
    assert reference.std() > 1e-3
    split = split_feature_norm(model)
    assert f"feature_norm_{branches - 1}" in {layer.name for layer in split.layers}  # 3 depths x (avg, max) [+ 1]
    np.testing.assert_allclose(np.asarray(split(x, training=False)), reference, atol=1e-5)
    for variant in ("fp32", "int8"):
        path = tmp_path / f"{variant}.tflite"
        path.write_bytes(convert(model, variant, x if variant == "int8" else None))
        print(variant, assert_parity(variant, TFLiteModel(path)(x), reference))


def keras_features(model, layer: str, x: np.ndarray) -> np.ndarray:
    import keras

    return np.asarray(keras.Model(model.input, model.get_layer(layer).output)(x, training=False))


@pytest.mark.parametrize("overrides, fix", [(["data.clip_length=6"], "multiple of alpha"),
                                            (["data.image_size=[40, 40]"], "divisible by 32"),
                                            (["model.backbone=vgg16"], "one of"),  # laterals: Lite only
                                            (["model.preset=huge"], "one of"),
                                            (["model.fast_pathway=false", "model.backbone=none"], "needs an ImageNet frame encoder"),
                                            (["model.fast_pathway=false", "model.backbone=efficientnet_lite0",
                                              "model.extra_encoder=efficientnet_lite0"], "VGG16 at three depths"),
                                            (["model.fast_pathway=false", "model.backbone=vgg16",
                                              "model.pooling=multiscale", "model.extra_encoder=efficientnet_lite0",
                                              "train.finetune_blocks=2"], "frozen second encoder")])
def test_bad_settings_are_refused(overrides, fix):
    with pytest.raises(BadInputError, match=fix):
        _slowfast(*overrides)


def test_keras_tflite_parity_float(tmp_path):
    from fpc_keras.conversion import convert
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


def test_int8_export_of_the_3d_slowfast_names_its_float_conv3d_ops():
    """TFLite has no int8 CONV_3D kernel: an int8 request converts, but those ops stay in float, and the export's
    fields say so instead of calling it int8."""
    from fpc_keras.conversion import convert, precision_fields

    model = _slowfast("model.backbone=none")
    described = precision_fields("int8", convert(model, "int8", _clip(2)))
    conv3d = [op for op in described["float_ops"] if op.startswith("CONV_3D ")]
    assert described["precision"] == "int8+float" and conv3d, described
