"""Cheng & Malhi's frozen-feature classifier: VGG16 / CaffeNet builders, CaffeNet weight conversion, LRN."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.conversion import convert
from fpc_keras.litert import TFLiteModel
from fpc_keras.models import build_model, parameter_counts
from fpc_keras.models.backbones import set_backbone_trainable
from fpc_keras.models.caffenet import LocalResponseNorm, caffenet_features

CAFFENET_SHAPES = {"conv1": (11, 11, 3, 96), "conv2": (5, 5, 48, 256), "conv3": (3, 3, 256, 384),
                   "conv4": (3, 3, 192, 384), "conv5": (3, 3, 192, 256)}


def _config(backbone, size, *extra):
    return load_config(None, ["model.name=frozen_features", f"model.backbone={backbone}", "model.weights=none",
                              "model.num_classes=4", f"data.image_size=[{size}, {size}]", "model.dropout=0.5",
                              *extra])


@pytest.mark.parametrize("pooling, units", [("flatten", "[4096, 4096]"), ("avg", "[64]")])
def test_vgg16_frozen_feature_classifier(pooling, units):
    model = build_model(_config("vgg16", 64, f"model.pooling={pooling}", f"model.head_units={units}"))
    names = [layer.name for layer in model.get_layer("head").layers]
    assert "classifier" in names and ("flatten" in names) == (pooling == "flatten")
    if units == "[4096, 4096]":
        assert {"fc6", "fc7"} <= set(names)
        fc6 = model.get_layer("head").get_layer("fc6")
        assert fc6.kernel.shape == (2 * 2 * 512, 4096)  # unpooled conv5 features of a 64x64 input
    set_backbone_trainable(model, 0)
    assert parameter_counts(model)["trainable"] == parameter_counts(model.get_layer("head"))["total"]
    assert np.asarray(model(np.zeros((1, 64, 64, 3), "float32"))).shape == (1, 4)


@pytest.mark.parametrize("backbone, size, width", [("vgg16", 64, 2 * (256 + 512 + 512)),
                                                   ("caffenet", 227, 2 * (384 + 384 + 256))])
def test_multiscale_pooling_feeds_the_head_three_depths(backbone, size, width):
    model = build_model(_config(backbone, size, "model.pooling=multiscale", "model.head_units=[]"))
    assert model.get_layer("multiscale_features").output.shape[1:] == (width,)
    assert model.get_layer("head").get_layer("classifier").kernel.shape == (width, 4)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    taps = keras.Model(model.input, model.get_layer("multiscale_features").output)(x)
    first = model.get_layer(f"{'block3_pool' if backbone == 'vgg16' else 'conv3'}").output
    mean = np.asarray(keras.Model(model.input, first)(x)).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(taps)[:, :mean.shape[1]], mean, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_weight_decay_penalises_every_dense_kernel_of_the_head(decay):
    head = build_model(_config("vgg16", 32, "model.pooling=avg", "model.head_units=[8]",
                               f"model.weight_decay={decay}")).get_layer("head")
    kernels = [head.get_layer(name).kernel for name in ("fc6", "classifier")]
    expected = decay * sum(float(np.sum(np.square(k.numpy()))) for k in kernels)
    assert float(sum(np.asarray(loss) for loss in head.losses)) == pytest.approx(expected, rel=1e-5)
    assert len(head.losses) == (2 if decay else 0)


def test_negative_weight_decay_is_refused():
    with pytest.raises(BadInputError, match="model.weight_decay"):
        _config("vgg16", 32, "model.weight_decay=-0.1")


def test_caffenet_shapes_and_top_block_unfreezing():
    model = build_model(_config("caffenet", 227, "model.head_units=[32, 32]"))
    assert model.get_layer("pool5").output.shape[1:] == (6, 6, 256)
    for name, shape in CAFFENET_SHAPES.items():
        assert tuple(model.get_layer(name).kernel.shape) == shape
    set_backbone_trainable(model, 1)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "conv5" in trainable and "conv4" not in trainable


def test_caffenet_imagenet_needs_a_converted_file():
    with pytest.raises(BadInputError, match="no genuine CaffeNet"):
        build_model(_config("caffenet", 227, "model.weights=imagenet"))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_converted_caffenet_weights_load_and_compute(tmp_path, suffix):
    """A synthetic file in caffe-tensorflow's layout: loaded into the right layers, conv1 computes Caffe's
    convolution on the mean-subtracted BGR image."""
    rng = np.random.default_rng(0)
    weights = {n: {"weights": rng.normal(0, 0.01, s).astype("float32"), "biases": rng.normal(0, 0.1, s[-1]).astype("float32")}
               for n, s in CAFFENET_SHAPES.items()}
    path = tmp_path / f"caffenet{suffix}"
    if suffix == ".npy":
        np.save(path, weights, allow_pickle=True)
    else:
        np.savez(path, **{f"{n}/{k}": v for n, d in weights.items() for k, v in d.items()})
    model = build_model(_config("caffenet", 227, f"model.weights={path}", "model.head_units=[8]"))
    np.testing.assert_array_equal(model.get_layer("conv4").get_weights()[0], weights["conv4"]["weights"])
    image = rng.uniform(0, 255, (1, 227, 227, 3)).astype("float32")
    conv1 = keras.Model(model.input, model.get_layer("conv1").output)(image)
    bgr = image[..., ::-1] - np.array([103.939, 116.779, 123.68], "float32")
    expected = tf.nn.relu(tf.nn.conv2d(bgr, weights["conv1"]["weights"], 4, "VALID") + weights["conv1"]["biases"])
    np.testing.assert_allclose(np.asarray(conv1), np.asarray(expected), atol=1e-3)


def test_wrong_weight_file_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, **{"conv1/weights": np.zeros((3, 3, 3, 8)), "conv1/biases": np.zeros(8)})
    with pytest.raises(BadInputError, match="not a converted CaffeNet"):
        build_model(_config("caffenet", 227, f"model.weights={path}"))


def test_lrn_matches_caffe_formula():
    x = np.random.default_rng(1).uniform(0, 50, (1, 2, 2, 9)).astype("float32")
    out = np.asarray(LocalResponseNorm(size=5, alpha=1e-4, beta=0.75)(x))
    squared = np.pad(x ** 2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    window = sum(squared[..., i:i + 9] for i in range(5))
    np.testing.assert_allclose(out, x / (1 + 1e-4 / 5 * window) ** 0.75, rtol=1e-5)


def test_caffenet_tflite_parity(tmp_path):
    """Grouped convolutions and LRN convert to builtin TFLite ops and compute the same features."""
    inputs = keras.Input((227, 227, 3))
    model = keras.Model(inputs, caffenet_features(inputs))
    x = np.random.default_rng(2).uniform(0, 255, (2, 227, 227, 3)).astype("float32")
    path = tmp_path / "caffenet.tflite"
    path.write_bytes(convert(model, "fp32"))
    tflite = TFLiteModel(path)
    reference = np.asarray(model(x))
    assert np.abs(tflite(x) - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())


def test_frozen_feature_training_on_cached_features(folder_dataset, tmp_path):
    from conftest import tiny_overrides
    from fpc_keras.io import read_json
    from fpc_keras.training import train

    overrides = tiny_overrides(folder_dataset, tmp_path / "runs", **{
        "model.name": "frozen_features", "model.backbone": "vgg16", "model.head_units": "[]",
        "model.pooling": "avg", "data.resize": "stretch_crop", "train.feature_copies": "1"})
    run = train(load_config(None, overrides), progress=lambda m: None)
    card = read_json(run / "model_card.json")
    assert card["model"]["name"] == "frozen_features" and card["preprocessing"]["resize"] == "stretch_crop"
    assert card["params"]["trainable"] == 512 * 3 + 3  # a linear classifier on pooled conv5 features


def test_multiscale_training_caches_what_feeds_the_head(folder_dataset, tmp_path):
    from conftest import tiny_overrides
    from fpc_keras.training import train

    overrides = tiny_overrides(folder_dataset, tmp_path / "runs", **{
        "model.name": "frozen_features", "model.backbone": "vgg16", "model.head_units": "[]",
        "model.pooling": "multiscale", "train.feature_copies": "0"})
    run = train(load_config(None, overrides), progress=lambda m: None)
    model = keras.saving.load_model(run / "model.keras")
    assert model.get_layer("head").get_layer("classifier").kernel.shape == (2560, 3)
    norm = model.get_layer("head").get_layer("feature_norm")
    assert np.abs(norm.moving_variance.numpy() - 1).max() > 1e-3  # it learnt the features' scale
    lists = list((tmp_path / "runs" / "_feature_cache").rglob("lists/*.npy"))
    rows = [path for path in (tmp_path / "runs" / "_feature_cache").rglob("*.npy") if path.parent.name != "lists"]
    assert lists and all(np.load(path).shape[1:] == (2560,) for path in lists)
    assert rows and all(np.load(path).shape == (2560,) for path in rows)


def test_caffe_preprocessing_keeps_its_values_in_full_int8(tmp_path):
    """VGG16's BGR flip and mean subtraction, pooled, as full int8: the quantiser once gave the channel reversal an
    output scale of its own that its kernel ignored, and every VGG16 int8 export was ~50 % off from its first layer."""
    from fpc_keras.models.layers import CaffePreprocess

    rng = np.random.default_rng(0)
    images = np.where(rng.random((16, 16, 16, 3)) < 0.7, 0, rng.uniform(0, 250, (16, 16, 16, 3))).astype(np.float32)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(CaffePreprocess()(inputs)))
    path = tmp_path / "pre.tflite"
    path.write_bytes(convert(model, "int8", images))
    error = np.abs(TFLiteModel(path)(images[:4]) - model.predict(images[:4], verbose=0)).max()
    assert error < 2.0  # a quantisation step or two (values span about -124..+150); the bug gave about 60


def test_multiscale_features_are_standardised_per_branch_before_int8(tmp_path):
    """Pooled features of three depths on different scales (VGG16 here: block3 max-pools about 20x block5's; on
    ultrasound, thousands against tens): the export applies the head's standardisation before the concatenation,
    so that one int8 scale fits every branch (12 of 16 top-1 decisions match Keras; without it 6 of 16)."""
    from conftest import standardised_multiscale_vgg16
    from fpc_keras.models.frozen_features import split_feature_norm

    images = np.random.default_rng(0).uniform(0, 255, (24, 32, 32, 3)).astype(np.float32)
    model = standardised_multiscale_vgg16(images, classes=4)
    reference = model.predict(images[:16], verbose=0)
    assert np.abs(split_feature_norm(model).predict(images[:16], verbose=0) - reference).max() < 1e-5
    path = tmp_path / "multiscale.tflite"
    path.write_bytes(convert(model, "int8", images))
    assert (TFLiteModel(path)(images[:16]).argmax(axis=1) == reference.argmax(axis=1)).mean() >= 0.7


def test_bias_correction_shifts_each_group_of_a_grouped_convolution_by_its_own_inputs():
    """CaffeNet's conv2/4/5 are grouped: the rounding error's effect is the grouped convolution's (each group of
    output channels reads its own slice of the input channels), as Keras' own grouped Conv2D computes it."""
    from fpc_keras.bias_correction import _shifted_output

    rng = np.random.default_rng(0)
    inputs = keras.Input((9, 9, 6))
    conv = keras.layers.Conv2D(4, 3, groups=2, use_bias=False)
    keras.Model(inputs, conv(inputs))
    error = rng.normal(0, 1, conv.kernel.shape).astype(np.float32)
    conv.set_weights([error])
    x = rng.normal(0, 1, (2, 9, 9, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(_shifted_output(conv, x, error)), np.asarray(conv(x)), atol=1e-5)


def test_caffenet_exports_to_int8_and_its_card_names_the_float_lrn(tmp_path):
    """Full-integer CaffeNet features (bias-corrected, grouped convolutions included) within 1 % of float; TFLite
    has no int8 LRN kernel, so its two LRN ops stay in float and the export does not call itself int8."""
    from fpc_keras.conversion import precision_fields

    keras.utils.set_random_seed(0)
    inputs = keras.Input((227, 227, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(caffenet_features(inputs)))
    images = np.random.default_rng(0).uniform(0, 255, (8, 227, 227, 3)).astype(np.float32)
    content = convert(model, "int8", images)
    described = precision_fields("int8", content)
    assert described["precision"] == "int8+float"
    assert [op.split()[0] for op in described["float_ops"]] == ["LOCAL_RESPONSE_NORMALIZATION"] * 2
    path = tmp_path / "caffenet.tflite"
    path.write_bytes(content)
    reference = np.asarray(model(images, training=False))
    assert reference.max() > 1.0
    assert np.abs(TFLiteModel(path)(images) - reference).max() <= 0.01 * reference.max()
