"""Ensembles (models/ensemble.py, ensemble.py): one model averaging members' probabilities, members of another size
fed a resized input, one .tflite that matches Keras; a run folder built from runs of one split only."""
import numpy as np
import pytest

from conftest import calibrate_batch_norm, family_inputs, standardised_multiscale_vgg16, tiny_overrides
from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.models import build_model
from parity import assert_parity


def _member(backbone: str, size: int, images: np.ndarray, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    config = load_config(None, ["model.name=efficientnet_attention", "model.weights=none",
                                f"model.backbone={backbone}", f"data.image_size=[{size}, {size}]"])
    config.model.num_classes = 3
    model = build_model(config)
    calibrate_batch_norm(model, np.asarray(keras.layers.Resizing(size, size)(images)))
    return model


def test_ensemble_averages_its_members_and_resizes_for_a_member_of_another_size(tmp_path):
    import keras

    from fpc_keras.conversion import convert
    from fpc_keras.litert import TFLiteModel
    from fpc_keras.models.ensemble import build_ensemble

    images = family_inputs(8)
    small, large = _member("efficientnet_lite0", 32, images, seed=2), _member("efficientnet_lite1", 48, images, seed=3)
    ensemble = build_ensemble([small, large])
    expected = (np.asarray(small(images)) + np.asarray(large(keras.layers.Resizing(48, 48)(images)))) / 2
    # training=False as every caller (keras_predict_fn, export) passes: with training left None, Keras 3 runs the
    # batch norm behind a Resizing layer in training mode
    np.testing.assert_allclose(np.asarray(ensemble(images, training=False)), expected, atol=1e-6)
    assert not any(isinstance(layer, keras.Model) and layer.name.endswith(("lite0", "lite1"))
                   for layer in ensemble.layers)  # flat: the members' layers, prefixed m0_ / m1_
    assert {"m0_top_conv", "m1_top_conv", "m1_resize", "ensemble_average"} <= {l.name for l in ensemble.layers}
    ensemble.save(tmp_path / "e.keras")
    loaded = keras.saving.load_model(tmp_path / "e.keras")
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), expected, atol=1e-6)
    (tmp_path / "e.tflite").write_bytes(convert(ensemble, "fp32"))
    tflite = TFLiteModel(tmp_path / "e.tflite", 2)
    assert_parity("fp32", tflite(images), expected)


def test_a_multiscale_frozen_features_member_enters_the_int8_export_standardised_per_depth(tmp_path):
    """Renamed `m<i>_`, a multiscale member is no longer found by the export's `split_feature_norm`: the ensemble
    carries it in that form itself. Without it, one int8 scale over all depths took a Lite0 + VGG16 ensemble on BUSI
    from 0.81 (float) to 0.57; here it keeps the int8 ensemble's decisions with the float one's."""
    from fpc_keras.conversion import convert
    from fpc_keras.litert import TFLiteModel
    from fpc_keras.models.ensemble import build_ensemble

    images = np.random.default_rng(0).uniform(0, 255, (24, 32, 32, 3)).astype(np.float32)
    members = [standardised_multiscale_vgg16(images, 3, seed) for seed in (0, 1)]
    ensemble = build_ensemble(members)
    expected = np.mean([np.asarray(m(images[:16], training=False)) for m in members], axis=0)
    np.testing.assert_allclose(np.asarray(ensemble(images[:16], training=False)), expected, atol=1e-5)
    assert {"m0_feature_norm_0", "m1_feature_norm_2"} <= {layer.name for layer in ensemble.layers}
    (tmp_path / "e.tflite").write_bytes(convert(ensemble, "int8", images))
    agreement = (TFLiteModel(tmp_path / "e.tflite")(images[:16]).argmax(axis=1) == expected.argmax(axis=1)).mean()
    assert agreement >= 0.7, agreement


def test_an_ensemble_needs_two_members_of_the_same_classes():
    from fpc_keras.models.ensemble import build_ensemble

    images = family_inputs(4)
    with pytest.raises(BadInputError, match="2 or more"):
        build_ensemble([_member("efficientnet_lite0", 32, images)])


def test_ensemble_run_of_two_runs_on_one_split_is_measured_and_exported(folder_dataset, tmp_path, capsys):
    """`fpc-keras ensemble`: a run folder whose card lists its members and whose test metrics are the ensemble's
    own on the members' test split; it exports to int8 as any run. Runs of another split are refused; runs of another
    train.seed on one data.split_seed are not."""
    from fpc_keras.cli import main
    from fpc_keras.io import read_json

    runs = tmp_path / "runs"

    def train(name: str, *extra: str) -> None:
        values = tiny_overrides(folder_dataset, runs, **{"name": name, "model.weights": "imagenet"}) + list(extra)
        assert main(["train", "--config", str(_empty(tmp_path)), *[a for v in values for a in ("--set", v)]]) == 0

    train("a")
    train("b", "model.attention=none", "train.learning_rate=0.003")
    assert main(["ensemble", str(runs / "a"), str(runs / "b"), "--out", str(runs / "ab")]) == 0
    card, results = read_json(runs / "ab" / "model_card.json"), read_json(runs / "ab" / "results.json")
    assert [m["run"] for m in card["ensemble"]["members"]] == ["a", "b"]
    assert results["n"] == read_json(runs / "a" / "results.json")["n"] and "top1" in card["metrics"]["test"]
    assert 0 <= card["training"]["phases"]["ensemble"]["best_score"] <= 1  # its validation macro-F1, as a phase's
    assert main(["export", "--model", str(runs / "ab"), "--quant", "int8"]) == 0
    assert read_json(runs / "ab" / "exports" / "int8" / "model_card.json")["metrics"]["n_test"] == results["n"]
    train("c", "train.seed=5")
    capsys.readouterr()
    assert main(["ensemble", str(runs / "a"), str(runs / "c"), "--out", str(runs / "ac")]) == 2
    assert "another split" in capsys.readouterr().err
    train("d", "train.seed=5", "data.split_seed=0")  # another initialisation on a's split: a seed ensemble
    assert (runs / "d" / "splits.csv").read_text() == (runs / "a" / "splits.csv").read_text()
    assert read_json(runs / "d" / "model_card.json")["training"]["seed"] == 5
    assert main(["ensemble", str(runs / "a"), str(runs / "d"), "--out", str(runs / "ad")]) == 0


def _empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return path
