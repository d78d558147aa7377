"""Train a tiny model once, then pin the run folder, the evaluation contract, export parity, the CLI's
error handling, Grad-CAM and the report on it."""
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, family_inputs, trained_overrides, write_folder_dataset
from fpc_keras.cli import main
from fpc_keras.config import load_config
from fpc_keras.errors import BadInputError
from fpc_keras.io import read_json
from fpc_keras.litert import TFLiteModel, cpu_name
from fpc_keras.report.papers import ABDOMINAL_TEST
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
                                              ("model.attention=cbam", "model.attention: 'se' then, 'cbam' now")])
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


@pytest.fixture(scope="module")
def exported(trained):
    assert main(["export", "--model", str(trained["run"]), "--quant", "fp32", "int8", "fp16",
                 "--representative-samples", "8", "--ship", str(trained["root"] / "shipped")]) == 0
    return {v: trained["run"] / "exports" / v for v in ("fp32", "fp16", "int8")}


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


def test_cli_help_for_every_command(capsys):
    for command in ("train", "evaluate", "export", "ensemble", "report", "gradcam", "datasets"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert "usage: fpc-keras " + command in capsys.readouterr().out


NOISE = ("I0000", "W0000", "E0000", "absl::", "cuInit", "cuda", "UserWarning", "XNNPACK", "doesn't match")


@pytest.mark.parametrize("model", ["run folder", "int8 tflite"])
def test_evaluate_prints_no_tensorflow_start_up_noise(trained, exported, model, tmp_path):
    """A fresh `fpc-keras evaluate` process writes nothing to stderr: TensorFlow's C++ start-up lines and the
    TFLite delegate line are silenced, and the Keras input-structure warning does not arise."""
    path = trained["run"] if model == "run folder" else exported["int8"] / "model.tflite"
    done = subprocess.run([sys.executable, "-m", "fpc_keras.cli", "evaluate", "--model", str(path), "--data",
                           f"folder:{trained['data']}", "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert done.returncode == 0, done.stderr
    assert "top1" in done.stdout
    assert not [noise for noise in NOISE if noise in done.stderr], done.stderr


def test_version_names_the_package_and_commit(capsys):
    from fpc_keras import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fpc-keras {__version__}") and "commit" in out  # the tests run in a git checkout


def _error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def test_cli_errors_are_one_clear_message(trained, tmp_path, capsys):
    run = str(trained["run"])
    assert "dataset folder not found" in _error_of(["evaluate", "--model", run, "--data",
                                                    f"folder:{tmp_path}/none"], capsys)
    assert "model not found" in _error_of(["evaluate", "--model", str(tmp_path), "--data",
                                           f"folder:{trained['data']}"], capsys)
    other = write_folder_dataset(tmp_path / "other", per_class=2, classes=("alpha", "delta"))
    err = _error_of(["evaluate", "--model", run, "--data", f"folder:{other}"], capsys)
    assert "['delta']" in err and "--alias" in err
    assert main(["evaluate", "--model", run, "--data", f"folder:{other}", "--alias", "delta=beta"]) == 0


def test_corrupt_image_error_and_skip(trained, tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data", per_class=3)
    bad = data / "beta" / "broken scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    err = _error_of(["evaluate", "--model", str(trained["run"]), "--data", f"folder:{data}"], capsys)
    assert str(bad) in err and "on_bad_input=skip" in err and err.count("\n") <= 3
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(trained["run"]), "--data", f"folder:{data}", "--on-bad-input", "skip",
                 "--out", str(out)]) == 0
    results = read_json(out)
    assert results["n"] == 9 and results["n_skipped"] == 1 and str(bad) in results["skipped"]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam"])
def test_gradcam_overlay(trained, tmp_path, capsys, method):
    image = next((trained["data"] / "beta").glob("*.png"))
    out = tmp_path / "cam.png"
    assert main(["gradcam", "--model", str(trained["run"]), "--image", str(image), "--out", str(out),
                 "--method", method, "--class", "gamma"]) == 0
    assert Image.open(out).size == Image.open(image).size
    assert np.asarray(Image.open(out)).std() > 0
    assert f"{method} for class gamma" in capsys.readouterr().out


def test_heatmap_follows_the_evidence():
    """Red evidence top-left, green distractor bottom-right; the class-1 score reads only the red channel:
    Grad-CAM must light up the red region, not the green one."""
    from fpc_keras.explain import heatmap
    from fpc_keras.models.backbones import FEATURES_LAYER

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Identity(name=FEATURES_LAYER)(keras.layers.AveragePooling2D(8)(inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda t: t[:, :, :, :1])(features))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(pooled)))
    dense.set_weights([np.array([[-0.01, 0.01]], np.float32), np.zeros(2, np.float32)])
    image = np.zeros((32, 32, 3), np.float32)
    image[:16, :16, 0] = 200
    image[16:, 16:, 1] = 200
    cam = heatmap(model, image, 1, "gradcam")
    assert cam[:16, :16].mean() > 2 * cam[16:, 16:].mean()


def test_report_has_every_paper_table_and_a_page_per_run(trained, exported, tmp_path):
    out = tmp_path / "report" / "index.html"
    store = out.parent / "cv" / "tiny_cv5_quantisation"
    store.mkdir(parents=True)  # a cross-validation kept beside the report, as `--folds` writes it
    (store / "pooled.md").write_text("| model | top-1 % |\n|---|---|\n| float | 73.90 [70.47, 77.49] |\n"
                                     "| **int8 <chosen>** | 73.08 |\n")
    assert main(["report", "--runs", str(trained["run"].parent), "--out", str(out), "--models",
                 str(REPO / "tflite" / "models")]) == 0
    page = out.read_text()
    for shipped in ("abdominal_vgg16_frozen (int8)", "hc18_fetalnet (int8)", "pocus_slowfast (int8)"):
        assert f"shipped tflite/models/{shipped}" in page, shipped  # beside the papers with no local run
    assert "No run of this model yet" not in page  # the tiny run is paper 1's; the shipped models cover 2-4
    assert "floor: EfficientNet-Lite0 fine-tuned, 18 epochs (issue 27)" in page  # beside paper 1
    assert "floor: Li et al. 2021, frozen ImageNet CNN + PCA + kNN" in page and ABDOMINAL_TEST in page
    assert "latency against dice" in page  # the shipped segmenter's point
    assert "<h3>tiny_cv5_quantisation: pooled</h3>" in page
    assert "<tr><th>model</th><th>top-1 %</th></tr>" in page and "<td>73.90 [70.47, 77.49]</td>" in page
    assert "<td><b>int8 &lt;chosen&gt;</b></td>" in page and "<td>---</td>" not in page
    for paper in ("efficientnet_attention", "frozen_features", "fetalnet", "slowfast"):
        assert f'data-paper="{paper}"' in page
    assert 'href="runs/tiny.html"' in page and "latency against top1" in page
    run_page = (out.parent / "runs" / "tiny.html").read_text()
    for figure in ("confusion matrix", "reliability diagram", "learning curves", "Grad-CAM per class"):
        assert f'alt="{figure} of tiny"' in run_page, figure
    assert "int8" in run_page and "model_card.json" in run_page and "tensorflow" in run_page
    assert "top1 on validation (choose here)" in run_page  # exports compared where a variant is chosen
    assert "int8 (bias-corrected, chosen on validation)" in run_page  # the only quantised export
    assert "Quantised variant chosen: int8, on the validation split" in run_page
    assert "<td>1.000 / 1.000</td>" in run_page  # fp32's fidelity


def _chromium() -> str:
    """Debian's chromium, installed here when absent and possible (root, apt); else the test is skipped."""
    from fpc_keras.report.browser import find_browser

    if find_browser() is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium and it cannot be installed here (needs root and apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client (the dev extra) is needed to drive Chromium")
    return browser


def test_report_renders_in_headless_chromium(trained, exported, tmp_path):
    _chromium()
    from fpc_keras.report.browser import render

    out = tmp_path / "report" / "index.html"
    assert main(["report", "--runs", str(trained["run"].parent), "--out", str(out), "--models",
                 str(REPO / "tflite" / "models")]) == 0
    facts = render(out, tmp_path / "index.png")
    assert facts["console_errors"] == [] and facts["broken"] == []
    assert facts["papers"] == ["efficientnet_attention", "frozen_features", "fetalnet", "slowfast"]
    assert all(facts["measured_rows"]) and facts["no_run_notes"] == 0, facts  # the tiny run + the shipped models
    shot = np.asarray(Image.open(tmp_path / "index.png").convert("L"))
    assert shot.shape[1] == 1280 and shot.std() > 10  # a rendered page, not a blank one
    run_facts = render(out.parent / "runs" / "tiny.html")
    assert run_facts["console_errors"] == [] and run_facts["broken"] == [] and run_facts["images"] >= 4
    broken = out.parent / "broken.html"
    broken.write_text('<html><body><img alt="x" src="data:image/png;base64,AAAA"><script>console.error("boom")'
                      '</script></body></html>')
    bad = render(broken)  # the check can fail: a broken image and a console error are seen
    assert bad["broken"] == ["x"] and any("boom" in e for e in bad["console_errors"])


def test_datasets_command(folder_dataset, capsys):
    assert main(["datasets", f"folder:{folder_dataset}"]) == 0
    out = capsys.readouterr().out
    assert "36 items" in out and "test" in out


BLOCKER = '''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"tensorflow", "keras", "tf_keras", "pandas", "tensorflow_model_optimization"}:
            raise ImportError(f"{name} must not be imported by the edge runner")
sys.meta_path.insert(0, Block())
'''


def test_tflite_runner_needs_no_tensorflow(trained, exported, tmp_path):
    """tflite/run.py with TensorFlow, Keras and pandas (and, for a classifier, scipy) made unimportable gives the
    evaluator's predictions."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "sitecustomize.py").write_text(BLOCKER.replace('"pandas",', '"pandas", "scipy",'))
    images = sorted((trained["data"] / "gamma").glob("*.png"))[:3]
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, str(REPO / "tflite" / "run.py"), "--model",
                           str(exported["fp32"] / "model.tflite"), "--json", "--top", "3", *map(str, images)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert [line["input"] for line in lines] == [str(p) for p in images]
    model = keras.saving.load_model(trained["run"] / "model.keras")
    from fpc_keras.data.images import ImageSpec
    for line, image in zip(lines, images):
        expected = np.asarray(model(ImageSpec((32, 32), 3, "pad").load(str(image))[None].astype("float32")))[0]
        got = {t["label"]: t["probability"] for t in line["top"]}
        assert got == pytest.approx(dict(zip(["alpha", "beta", "gamma"], expected.tolist())), abs=1e-4)
    bad = subprocess.run([sys.executable, str(REPO / "tflite" / "run.py"), "--model",
                          str(exported["fp32"] / "model.tflite"), str(tmp_path / "missing.png")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "input not found" in bad.stderr and "Traceback" not in bad.stderr
    model = tmp_path / "timed" / "model.tflite"
    shutil.copytree(exported["fp32"], model.parent)
    timing = subprocess.run([sys.executable, str(REPO / "tflite" / "run.py"), "--model", str(model), "--threads", "1",
                             "--latency", "7", "--record", "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert timing.returncode == 0, timing.stderr[-2000:]
    measured = json.loads(timing.stdout.splitlines()[-1])
    assert measured["runs"] == 7 and 0 < measured["median_ms"] <= measured["p90_ms"]
    recorded = read_json(model.parent / "model_card.json")["export"]["latency"]["1_threads"]
    assert recorded == {key: measured[key] for key in recorded} and recorded["cpu"] == cpu_name()


def test_tflite_runner_in_a_virtual_environment_without_tensorflow(trained, exported, tmp_path):
    """What a Jetson / Raspberry Pi user does: a fresh venv with tflite/requirements.txt only, then run.py."""
    import subprocess
    import venv

    from conftest import REPO

    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r",
                              str(REPO / "tflite" / "requirements.txt")], capture_output=True, text=True, timeout=600)
    if install.returncode:
        pytest.skip(f"cannot install tflite/requirements.txt from the package index: {install.stderr[-300:]}")
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('tensorflow'))"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "None"  # the runner really has no TensorFlow to fall back on
    image = sorted((trained["data"] / "beta").glob("*.png"))[0]
    done = subprocess.run([str(python), str(REPO / "tflite" / "run.py"), "--model",
                           str(exported["int8"] / "model.tflite"), "--threads", "1", "--json", str(image)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[0])
    assert result["input"] == str(image) and {t["label"] for t in result["top"]} <= {"alpha", "beta", "gamma"}


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


def test_tflite_runtime_is_the_fallback_interpreter(exported, monkeypatch):
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
