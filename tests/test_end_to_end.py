"""Train a tiny model once (the `trained` fixture), then pin on it the run folder, resume, the evaluation
contract, export, its parity with Keras, shipping and the edge benchmark."""
import json
import shutil

import keras
import numpy as np
import pytest

from conftest import family_inputs, trained_overrides
from fpc_keras.cli import main
from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.io import read_json
from fpc_keras.litert import TFLiteModel, cpu_name
from fpc_keras.training import train
from parity import assert_parity


CONTRACT_METRICS = {"top1", "top2", "macro_f1", "per_class", "confusion", "calibration"}


def test_run_folder_contents(trained):
    run = trained["run"]
    for name in ("config.yaml", "model.keras", "model_card.json", "results.json", "history.csv", "splits.csv",
                 "checkpoints/phase1/last.keras", "checkpoints/phase1/best.keras", "checkpoints/phase1/state.json"):
        assert (run / name).is_file(), name
    results = read_json(run / "results.json")
    assert CONTRACT_METRICS <= set(results["metrics"]) and results["split"] == "test" and results["n"] > 0
    card = read_json(run / "model_card.json")
    assert card["labels"] == ["alpha", "beta", "gamma"]
    assert card["preprocessing"]["image_size"] == [32, 32]
    assert card["params"]["trainable"] < card["params"]["total"]
    assert load_config(run / "config.yaml").model.num_classes == 3
    assert len((run / "history.csv").read_text().strip().splitlines()) == 1 + 2


def test_rerun_resumes_and_extends(trained, tmp_path):
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained["run"], run)
    messages = []
    config = load_config(None, trained_overrides(trained["data"], tmp_path / "runs", **{"train.epochs": "4"}))
    state_file = run / "checkpoints" / "phase1" / "state.json"
    state = read_json(state_file)
    state["done"] = False  # as if killed after epoch 2
    state_file.write_text(json.dumps(state))
    train(config, progress=messages.append)
    assert any("resuming from" in m and "2 epoch(s) done" in m for m in messages), messages
    assert any("epochs 3..4" in m for m in messages), messages
    epochs = [line.split(",")[:2] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [["phase1", str(e)] for e in (1, 2, 3, 4)]


def test_rerun_of_a_finished_run_does_not_train_again(trained, tmp_path):
    """Not even with a key changed that only another architecture reads (SlowFast's model.alpha)."""
    runs = tmp_path / "runs"
    shutil.copytree(trained["run"], runs / "tiny")
    messages = []
    train(load_config(None, trained_overrides(trained["data"], runs, **{"model.alpha": "8"})),
          progress=messages.append)
    assert not any(m.startswith("[3/4]") for m in messages)
    assert read_json(runs / "tiny" / "results.json")["metrics"]["top1"] == \
        read_json(trained["run"] / "results.json")["metrics"]["top1"]


@pytest.mark.parametrize("override, named", [("train.seed=1", "train.seed: 0 then, 1 now"),
                                              ("model.attention=cbam", "model.attention: 'se' then, 'cbam' now"),
                                              ("data.train_fraction=0.5", "data.train_fraction: 1.0 then, 0.5 now")])
def test_rerun_under_another_seed_or_model_is_refused_and_leaves_the_run_alone(trained, tmp_path, override, named):
    """A new seed deals the items into new splits: re-evaluating the finished model there would measure it on its own
    training images and overwrite the run's results with that (it happened to a BUSI run)."""
    runs = tmp_path / "runs"
    shutil.copytree(trained["run"], runs / "tiny")
    before = {name: (runs / "tiny" / name).read_bytes() for name in ("splits.csv", "results.json", "config.yaml")}
    key, value = override.split("=")
    with pytest.raises(BadInputError, match=named) as caught:
        train(load_config(None, trained_overrides(trained["data"], runs, **{key: value})))
    assert "--set name=" in caught.value.fix
    assert {name: (runs / "tiny" / name).read_bytes() for name in before} == before


def test_a_training_fraction_trains_on_fewer_items_and_tests_on_the_same(trained, tmp_path):
    from fpc_keras.export import train_records

    def rows(run, split):
        return sorted((r.source, r.label, r.group) for r in train_records(run) if r.split == split)
    run = train(load_config(None, trained_overrides(trained["data"], tmp_path / "runs", **{
        "name": "tiny_half", "data.train_fraction": "0.5", "train.epochs": "1"})), progress=lambda m: None)
    assert 0 < len(rows(run, "train")) < len(rows(trained["run"], "train"))
    assert set(rows(run, "train")) < set(rows(trained["run"], "train"))
    for split in ("val", "test"):
        assert rows(run, split) == rows(trained["run"], split)
    assert read_json(run / "results.json")["n"] == len(rows(run, "test"))
    out = tmp_path / "train_split.json"  # the card's split rule rebuilds the kept training items, no others
    assert main(["evaluate", "--model", str(run), "--data", f"folder:{trained['data']}", "--split", "train",
                 "--out", str(out)]) == 0
    assert read_json(out)["n"] == len(rows(run, "train"))


@pytest.mark.parametrize("target", ["run", "keras"])
def test_evaluate_contract(trained, target, capsys):
    model = trained["run"] if target == "run" else trained["run"] / "model.keras"
    out = trained["root"] / f"eval_{target}.json"
    assert main(["evaluate", "--model", str(model), "--data", f"folder:{trained['data']}", "--out", str(out)]) == 0
    results = read_json(out)
    assert results["n"] == 36 and CONTRACT_METRICS <= set(results["metrics"])
    assert results["model"] and results["data"] == f"folder:{trained['data']}"
    lo, hi = results["metrics"]["top1"]["ci95"]
    assert lo <= results["metrics"]["top1"]["value"] <= hi
    assert "top1" in capsys.readouterr().out


def test_keras_tflite_parity(trained, exported):
    model = keras.saving.load_model(trained["run"] / "model.keras")
    x = family_inputs(12)  # the trained classes' blobs: the trained model's outputs differ per image
    reference = np.asarray(model(x, training=False))
    fp32 = TFLiteModel(exported["fp32"] / "model.tflite")(x)
    fp16 = TFLiteModel(exported["fp16"] / "model.tflite")(x)
    int8 = TFLiteModel(exported["int8"] / "model.tflite")(x)
    for variant, output in (("fp32", fp32), ("fp16", fp16), ("int8", int8)):
        print(variant, assert_parity(variant, output, reference))


def test_shipping_over_a_shipped_model_makes_the_next_major_version(exported, tmp_path):
    """`export.ship`: a first ship copies the card as it is; shipping another model to the same place replaces the
    model and continues the card's changelog as the next major version."""
    from fpc_keras.export import ship

    destination = tmp_path / "shipped"
    first = read_json(ship(exported["int8"], destination) / "model_card.json")
    assert first == read_json(exported["int8"] / "model_card.json") and first["version"] == "1.0.0"
    ship(exported["fp32"], destination)
    second = read_json(destination / "model_card.json")
    assert (destination / "model.tflite").read_bytes() == (exported["fp32"] / "model.tflite").read_bytes()
    assert second["version"] == "2.0.0" and second["changelog"][:-1] == first["changelog"]
    assert second["changelog"][-1]["version"] == "2.0.0" and "replaced" in second["changelog"][-1]["change"]
    assert second["export"] == read_json(exported["fp32"] / "model_card.json")["export"]
    third = read_json(ship(exported["fp16"], destination, {"cv": {"top1": 0.5}}) / "model_card.json")
    assert third["version"] == "3.0.0"
    assert third["metrics"] == {**read_json(exported["fp16"] / "model_card.json")["metrics"], "cv": {"top1": 0.5}}


def test_export_runs_each_tflite_once_over_its_evaluation_splits(trained, tmp_path, monkeypatch):
    """Metrics and fidelity to the float model come from one pass of the .tflite over val and test."""
    import fpc_keras.export as export

    run = shutil.copytree(trained["run"], tmp_path / "run", ignore=shutil.ignore_patterns("exports"))
    seen, real = [], export.load_predictor

    def counting(path, threads=2):
        predictor = real(path, threads)
        if str(path).endswith(".tflite"):
            predict = predictor.predict
            predictor.predict = lambda batch, *rest: (seen.append(len(batch)), predict(batch, *rest))[1]
        return predictor

    monkeypatch.setattr(export, "load_predictor", counting)
    export.export_run(run, ["fp32"], latency_runs=2, progress=lambda m: None)
    card = read_json(run / "exports" / "fp32" / "model_card.json")["metrics"]
    assert card["fidelity"]["test"]["top1_agreement"] == 1.0
    assert sum(seen) == card["n_test"] + card["n_val"]


def test_export_cards_and_tflite_evaluation(trained, exported, tmp_path):
    card = read_json(exported["int8"] / "model_card.json")
    assert card["export"]["variant"] == "int8" and card["export"]["size_bytes"] > 0
    assert card["export"]["latency"]["2_threads"]["median_ms"] > 0
    assert "top1" in card["metrics"]["test"]
    assert "top1" in card["metrics"]["val"] and card["metrics"]["n_val"] > 0  # for choosing PTQ or QAT on validation
    assert card["export"]["bias_correction"] is True
    # Fidelity to the float model on the real splits: fp32 follows it exactly, int8 is measured on the same items.
    fp32 = read_json(exported["fp32"] / "model_card.json")["metrics"]["fidelity"]
    assert fp32["test"]["top1_agreement"] == 1.0 and fp32["test"]["mean_abs_prob_diff"] < 1e-5
    assert card["metrics"]["fidelity"]["test"]["n"] == card["metrics"]["n_test"]
    assert 0 <= card["metrics"]["fidelity"]["val"]["top1_agreement"] <= 1
    out = tmp_path / "tflite.json"
    assert main(["evaluate", "--model", str(exported["int8"] / "model.tflite"), "--data",
                 f"folder:{trained['data']}", "--split", "test", "--out", str(out)]) == 0
    assert read_json(out)["n"] == card["metrics"]["n_test"]


def test_ship_copies_the_quantised_variant_chosen_on_validation_not_the_last(trained, exported):
    assert read_json(trained["run"] / "exports" / "choice.json")["chosen"] == "int8"
    assert read_json(trained["root"] / "shipped" / "model_card.json")["export"]["variant"] == "int8"
    assert (trained["root"] / "shipped" / "model.tflite").read_bytes() == (exported["int8"] / "model.tflite").read_bytes()


def test_mixed_export_card_names_its_float_ops_and_the_report_shows_them(trained, tmp_path):
    from fpc_keras.export import export_run
    from fpc_keras.report import export_rows, latency_points

    run = shutil.copytree(trained["run"], tmp_path / "run", ignore=shutil.ignore_patterns("exports"))
    messages = []
    folder = export_run(run, ["mixed"], latency_runs=2, float_ops=2, int8_io=True, progress=messages.append)["mixed"]
    card = read_json(folder / "model_card.json")
    assert card["export"]["variant"] == "mixed" and card["export"]["bias_correction"] is True
    assert card["export"]["int8_io"] is False and TFLiteModel(folder / "model.tflite").input["dtype"] == np.float32
    assert any("--int8-io applies to the int8 variant only" in m for m in messages), messages
    assert len(card["export"]["float_ops"]) == 2, card["export"]["float_ops"]  # read back from the .tflite
    assert card["metrics"]["fidelity"]["test"]["n"] == card["metrics"]["n_test"]
    rows = export_rows({"exports": [card]})
    assert rows[0]["variant"] == "mixed (bias-corrected, 2 ops in float)"
    assert latency_points([{"name": "r", "export_rows": rows}])[0]["variant"] == "mixed"  # the figure's marker


def test_int8_io_export_takes_int8_and_agrees_with_float_io(trained, exported, tmp_path):
    import shutil as sh

    run = tmp_path / "run"
    sh.copytree(trained["run"], run, ignore=sh.ignore_patterns("exports", "checkpoints"))
    assert main(["export", "--model", str(run), "--quant", "int8", "--int8-io", "--representative-samples", "8"]) == 0
    card = read_json(run / "exports" / "int8" / "model_card.json")
    assert card["export"]["int8_io"] is True
    integer = TFLiteModel(run / "exports" / "int8" / "model.tflite")
    assert integer.input["dtype"] == np.int8 and integer.output["dtype"] == np.int8
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    floating = TFLiteModel(exported["int8"] / "model.tflite")(x)
    assert np.abs(integer(x) - floating).max() <= 0.05  # the same int8 graph; only the I/O (de)quantisation moves


def test_edge_benchmark_table(trained, exported, capsys):
    from fpc_keras.benchmark import benchmark, onnx_session_factory, table

    result = benchmark(trained["run"], ("fp32", "int8"), threads=(1,), runs=3, progress=lambda m: None)
    assert set(result["rows"]) == {"keras", "tflite_fp32", "tflite_int8", "onnxruntime_fp32"}
    assert result["ratios"]["tflite_int8/onnxruntime_fp32"]["1_threads"] > 0
    assert result["rows"]["tflite_int8"]["accuracy"]["split"] == "test"
    assert read_json(trained["run"] / "benchmark_edge.json")["rows"].keys() == result["rows"].keys()
    assert "| tflite_int8 |" in table(result) and table(result).startswith(f"Timed on {cpu_name()}, 3 runs each.")
    model = keras.saving.load_model(trained["run"] / "model.keras")  # the ONNX peer computes the same model
    session, _ = onnx_session_factory(model, (32, 32, 3))
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    assert np.abs(session(1)()[0] - np.asarray(model(x, training=False))).max() <= 1e-4
