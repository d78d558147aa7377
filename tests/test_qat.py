"""Quantisation-aware training through the tf_keras twin: the twin reproduces each model family exactly, and
`fpc-keras export --quant qat` writes a full-integer model that the evaluator and the edge runtime accept."""
import numpy as np
import pytest

from conftest import FAMILIES, family_model, tiny_overrides, write_folder_dataset
from fpc_keras.cli import main
from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.conversion import float_ops_of
from fpc_keras.export import _quantize_aware
from fpc_keras.io import read_json
from fpc_keras.litert import TFLiteModel
from fpc_keras.models import build_model
from fpc_keras.models.frozen_features import split_feature_norm
from fpc_keras.qat import tf_keras_twin
from fpc_keras.training import train

@pytest.mark.parametrize("family", FAMILIES)
def test_twin_matches_the_keras3_model(family):
    """The twin is built from the graph every export converts (`split_feature_norm`: VGG16 multiscale heads
    standardise each branch before the concatenation, so that int8 gives each its own scale)."""
    model = family_model(family)
    twin = tf_keras_twin(split_feature_norm(model))
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    reference = np.asarray(model(x, training=False))
    assert reference.std() > 1e-3  # outputs that differ per image, so the comparison can fail
    # float32 rounding through ~60 layers, summed in another order by each framework's kernels: up to 2.4e-5 of a
    # probability measured on a 2-core AMD EPYC (CBAM, MHSA); a weight copied wrong moves it by ~1e-1.
    assert np.abs(twin(x, training=False).numpy() - reference).max() <= 1e-4


def test_batchnorm_is_folded_into_the_convolution_before_it():
    """Folded exactly (depthwise multipliers and biases included); not after a convolution with an activation."""
    import keras
    import tf_keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="dw")(inputs)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.Conv2D(4, 1, name="pw")(x)
    x = keras.layers.BatchNormalization(name="pw_bn")(x)
    x = keras.layers.Conv2D(4, 1, activation="relu", name="relu_conv")(x)
    outputs = keras.layers.BatchNormalization(name="kept_bn")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # statistics far from the identity
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 1, n), rng.normal(0, 1, n), rng.uniform(0.2, 3, n)])
    twin = tf_keras_twin(model)
    assert [layer.name for layer in twin.layers if isinstance(layer, tf_keras.layers.BatchNormalization)] == ["kept_bn"]
    x = rng.uniform(-1, 1, (2, 8, 8, 3)).astype("float32")
    reference = np.asarray(model(x, training=False))
    assert np.abs(twin(x, training=False).numpy() - reference).max() <= 1e-5 * max(1.0, np.abs(reference).max())


@pytest.mark.slow  # about 3 minutes: the TFLite converter takes 1.5 minutes on even a tiny QAT graph
def test_qat_export_is_full_integer_and_evaluated(tmp_path):
    data = write_folder_dataset(tmp_path / "data")
    run_dir = train(load_config(None, tiny_overrides(data, tmp_path / "runs")), progress=lambda m: None)
    assert main(["export", "--model", str(run_dir), "--quant", "qat", "--qat-epochs", "1",
                 "--representative-samples", "8"]) == 0
    folder = run_dir / "exports" / "qat"
    card = read_json(folder / "model_card.json")
    assert card["export"]["variant"] == "qat" and card["export"]["qat_epochs"] == 1
    assert "top1" in card["metrics"]["test"] and card["metrics"]["keras_test"]["top1"] is not None
    assert float_ops_of((folder / "model.tflite").read_bytes()) == []  # every compute op runs in int8
    assert card["export"]["float_ops"] == [] and card["export"]["precision"] == "int8"
    model = TFLiteModel(folder / "model.tflite")
    assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 3)


def test_layers_tf_keras_lacks_are_refused_clearly():
    config = load_config(None, ["model.name=frozen_features", "model.backbone=caffenet", "model.weights=none",
                                "data.image_size=[227, 227]", "model.num_classes=3", "model.pooling=avg"])
    with pytest.raises(BadInputError, match="LocalResponseNorm.*\n.*--quant int8"):
        tf_keras_twin(build_model(config))


def test_a_failing_qat_child_surfaces_its_message(tmp_path):
    with pytest.raises(BadInputError, match="quantisation-aware training of .* failed: .*model.keras"):
        _quantize_aware(tmp_path, tmp_path / "model.tflite", 1, 1e-5, 4)
    assert not (tmp_path / "model.tflite").exists()


CALIBRATION = """
import numpy as np
from fpc_keras.config import load_config
from fpc_keras.models import build_model
from fpc_keras.models.frozen_features import split_feature_norm
from fpc_keras.qat import calibrate, quantize_aware, tf_keras_twin
config = load_config(None, ["model.name=frozen_features", "model.backbone=vgg16", "model.weights=none",
                            "model.pooling=avg", "model.head_units=[]", "model.num_classes=3",
                            "data.image_size=[32, 32]"])
model = build_model(config)
twin = tf_keras_twin(model)
x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
reference = twin(x).numpy()
quantized = quantize_aware(twin)
before = np.abs(quantized(x).numpy() - reference).max()
calibrate(quantized, [x[:4], x[4:]] * 3)
after = np.abs(quantized(x).numpy() - reference).max()
print(before, after)
"""


def test_calibration_sets_the_ranges_before_fine_tuning():
    """Uncalibrated, tfmot clips every activation at +-6 (VGG16's reach hundreds); calibrated, the QAT model
    computes what the float model does, up to int8 rounding."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CALIBRATION], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(float, done.stdout.split()[-2:])
    assert after < 0.05 and after < before / 3, (before, after)


DISTILLATION = """
import numpy as np
import tf_keras
from fpc_keras.qat import calibrate, distil, quantize_aware
tf_keras.utils.set_random_seed(0)
layers = tf_keras.layers
inputs = tf_keras.Input((16, 16, 3))
x = layers.Conv2D(8, 3, activation="relu")(layers.Rescaling(1 / 255)(inputs))
x = layers.ReLU()(layers.BatchNormalization()(layers.Dense(8)(layers.GlobalAveragePooling2D()(x))))
teacher = tf_keras.Model(inputs, layers.Dense(3, activation="softmax", name="classifier")(x))
student = quantize_aware(teacher)
rng = np.random.default_rng(0)
x, held_out = ((rng.uniform(0, 255, (n, 16, 16, 3)) * rng.uniform(0, 1, (n, 1, 1, 3))).astype("float32")
               for n in (32, 16))
calibrate(student, [x[:16], x[16:]] * 3)
for weight in student.trainable_weights:  # a student that has strayed from its teacher
    if weight.name.startswith("classifier/"):
        weight.assign(weight + rng.normal(0, 1.0, weight.shape))
norms = [w for w in student.weights if "moving_mean" in w.name]
moving = [w.numpy().copy() for w in norms]
def kl(inputs):
    p, q = teacher(inputs).numpy(), student(inputs, training=False).numpy()
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=-1)))
before = kl(held_out)
distil(student, teacher, [x[:16], x[16:]], 20, tf_keras.optimizers.Adam(1e-2))
print(len(norms), max(float(np.abs(w.numpy() - m).max()) for w, m in zip(norms, moving)), before, kl(held_out))
"""


def test_distillation_brings_the_fake_quantised_model_towards_float_and_leaves_its_statistics():
    """QAT fine-tunes the student on the float twin's outputs in inference mode: its divergence from float falls on
    inputs it did not train on, and no BatchNormalization statistic moves (batch statistics of small batches moved
    the head before)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", DISTILLATION], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    norms, moved, before, after = map(float, done.stdout.split()[-4:])
    assert norms >= 1 and moved == 0.0
    assert after < before / 2, (before, after)


def test_qat_distils_on_mirrored_images_only_where_the_run_trained_on_them(tmp_path):
    from fpc_keras.config import load_config, save_config
    from fpc_keras.qat import distillation_augmenter

    assert not distillation_augmenter(tmp_path).horizontal_flip  # no config.yaml: an ensemble of runs
    save_config(load_config(None, ["train.horizontal_flip=true"]), tmp_path / "config.yaml")
    assert distillation_augmenter(tmp_path).horizontal_flip
    save_config(load_config(None, []), tmp_path / "config.yaml")
    assert not distillation_augmenter(tmp_path).horizontal_flip
