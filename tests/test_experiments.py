"""The experiment scripts as users run them, on the real label files with stand-in images (tiny settings)."""
import importlib.util
import inspect
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from fpc_keras.data.tables import read_table
from fpc_keras.io import read_json

TINY = ["--set", "data.image_size=[32, 32]", "--set", "model.weights=none", "--set", "train.epochs=1",
        "--set", "train.feature_copies=0", "--set", "model.head_units=[8, 8]"]


def _fetal_planes_zip(csv_path, folder):
    """The Zenodo archive's layout with the real CSV and small generated PNGs under the real file names."""
    frame = read_table(csv_path.read_bytes(), "csv", ("Image_name",), sep=";")
    archive = folder / "FETAL_PLANES_ZENODO.zip"
    blank = Image.fromarray(np.zeros((8, 8), np.uint8))
    png = folder / "blank.png"
    blank.save(png)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.write(csv_path, "FETAL_PLANES_ZENODO/FETAL_PLANES_DB_data.csv")
        for name in frame["Image_name"]:
            z.write(png, f"FETAL_PLANES_ZENODO/Images/{name}.png")
    return archive


@pytest.mark.realdata
@pytest.mark.slow  # 12,400 stand-in images through EfficientNet-Lite0: about a minute (the reader: test_readers.py)
def test_fetal_planes_command_runs_the_paper_protocol(shared_data, tmp_path):
    archive = _fetal_planes_zip(shared_data / "FETAL_PLANES_DB" / "FETAL_PLANES_DB_data.csv", tmp_path)
    runs = tmp_path / "runs"
    command = [sys.executable, str(REPO / "experiments" / "fpc_efficientnet_attention.py"), "--fetal-planes",
               str(archive), "--backbones", "efficientnet_lite0", "--attentions", "se", "--no-finetune",
               "--runs", str(runs), *TINY]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_json(runs / "fpc_fetal_planes_efficientnet_lite0_se" / "results.json")
    assert results["split"] == "test" and results["n"] == 5271  # the official test split, every image
    card = read_json(runs / "fpc_fetal_planes_efficientnet_lite0_se" / "model_card.json")
    assert len(card["labels"]) == 6
    splits = card["training"]["splits"]
    assert sum(splits["train"].values()) + sum(splits["val"].values()) == 7129
    tables = read_json(runs / "_tables" / "fpc_efficientnet_attention.json")
    assert tables["fetal_planes"]["chosen"] == "fpc_fetal_planes_efficientnet_lite0_se"
    assert tables["parameters"]["reference"]["ViT-B/16 (fine-tuned end to end)"]["trainable"] == 86_567_656 - 768_000 \
        - 1000 + 768 * 6 + 6


@pytest.mark.realdata
@pytest.mark.slow  # 12,400 stand-in images through VGG16: a few minutes
def test_frozen_feature_baseline_runs_on_fetal_planes(shared_data, tmp_path):
    archive = _fetal_planes_zip(shared_data / "FETAL_PLANES_DB" / "FETAL_PLANES_DB_data.csv", tmp_path)
    runs = tmp_path / "runs"
    command = [sys.executable, str(REPO / "experiments" / "abdominal_frozen_features.py"), "--fetal-planes",
               str(archive), "--heads", "linear", "--runs", str(runs), *TINY]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_json(runs / "cm_fetal_planes_vgg16_linear" / "results.json")
    assert results["split"] == "test" and results["n"] == 5271
    tables = read_json(runs / "_tables" / "frozen_features_vgg16.json")
    assert tables["fetal_planes"]["chosen"] == "cm_fetal_planes_vgg16_linear"


def test_run_all_covers_every_experiment_script():
    """run_all.py names every script in experiments/ (a new one must be added to it) and ends with the report."""
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "run_all.py"), "--dry-run"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    scripts = {p.name for p in (REPO / "experiments").glob("*.py")} - {"run_all.py"}
    listed = {word.rsplit("/", 1)[-1] for word in out.stdout.split() if word.endswith(".py")}
    assert scripts <= listed, scripts - listed
    assert out.stdout.strip().splitlines()[-1].endswith("report --runs runs --out reports/index.html")
    bad = subprocess.run([sys.executable, str(REPO / "experiments" / "run_all.py"), "--only", "nope", "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown experiment" in bad.stderr


def test_the_demo_trains_exports_explains_and_reports_on_the_shipped_sample(tmp_path):
    """The README's first command (`make demo` = experiments/demo.py), into a temporary folder."""
    runs, report = tmp_path / "runs", tmp_path / "index.html"
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "demo.py"), "--runs", str(runs),
                           "--report", str(report)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = runs / "demo_busi_sample"
    for made in ("model.keras", "results.json", "exports/int8/model.tflite", "gradcam.png", "occlusion_int8.png"):
        assert (run / made).is_file(), made
    assert "demo_busi_sample" in report.read_text() and f"open {report}" in done.stdout


SCRIPTS = sorted([*(REPO / "experiments").glob("*.py"), REPO / "tflite" / "run.py"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_s_help_says_what_it_does_in_whole_sentences(script, monkeypatch, capsys):
    """`--help` opens with the docstring's first paragraph, not a line cut mid-sentence."""
    spec = importlib.util.spec_from_file_location(f"script_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"]) if "argv" in inspect.signature(module.main).parameters else module.main()
    assert exit_.value.code == 0
    description = capsys.readouterr().out.split("\n\n")[1]
    assert "".join(description.split()) == "".join(module.__doc__.split("\n\n")[0].split())  # wrapped anywhere
    assert description.rstrip().endswith("."), description


@pytest.mark.parametrize("script", ["benchmark_edge.py", "video_classification.py"])
def test_an_experiment_script_states_a_user_error_without_a_traceback(script, tmp_path):
    """Its stderr is the error and its fix: no traceback, and none of TensorFlow's C++ start-up lines before it."""
    missing = tmp_path / "nowhere"
    command = [sys.executable, str(REPO / "experiments" / script),
               *(["--folds", "5", "--config", str(missing / "recipe.yaml")] if script == "benchmark_edge.py"
                 else ["--data", f"pocus=videos:{missing}"])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: " in done.stderr and str(missing) in done.stderr and "Traceback" not in done.stderr
    assert "absl::InitializeLog" not in done.stderr and "cuda" not in done.stderr, done.stderr[:2000]


def test_quantisation_cross_validation_tests_every_image_once_and_pools_the_exports(trained, tmp_path):
    """benchmark_edge.py --folds: every image is tested once, by a model that never saw it; the pooled top-1 of
    float and int8 agree with the folds' own results; flip TTA is pooled as a variant of its own; a second call
    reuses the stored folds, compares them image by image with a store (--against) and, with --ship, refits the
    recipe on every image and ships it with the CV figures."""
    command = [sys.executable, str(REPO / "experiments" / "benchmark_edge.py"), "--folds", "2", "--config",
               str(trained["run"] / "config.yaml"), "--variants", "int8", "--set", f"runs_dir={tmp_path / 'runs'}",
               "--cv-store", str(tmp_path / "cv"), "--flip"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    store = tmp_path / "cv" / "tiny_cv2_quantisation"
    folds = [read_json(store / f"fold{i}.json") for i in range(2)]
    files = [item["file"] for fold in folds for item in fold["items"]]
    assert len(files) == len(set(files)) == len(list(trained["data"].rglob("*.png")))
    pooled = read_json(store / "pooled.json")
    runs = [tmp_path / "runs" / f"tiny_cv2_fold{i}" for i in range(2)]
    float_right = sum(np.trace(read_json(r / "results.json")["metrics"]["confusion"]["matrix"]) for r in runs)
    assert pooled["float"]["value"] == pytest.approx(float_right / len(files))
    cards = [read_json(r / "exports" / "int8" / "model_card.json")["metrics"] for r in runs]
    int8_right = sum(c["test"]["top1"]["value"] * c["n_test"] for c in cards)
    assert pooled["variants"]["int8"]["top1"]["value"] == pytest.approx(int8_right / len(files))
    assert "int8" in (store / "pooled.md").read_text() and "int8" in done.stdout
    labels = read_json(runs[0] / "model_card.json")["labels"]
    assert all(item["flip"] in labels for fold in folds for item in fold["items"])
    assert "| float + flip TTA (in the graph) |" in (store / "pooled.md").read_text()
    shipped = tmp_path / "shipped"
    again = subprocess.run([*command, "--ship", str(shipped), "--against", str(store)], capture_output=True, text=True,
                           timeout=600, cwd=REPO)
    assert again.returncode == 0 and "fold 1: stored" in again.stdout, again.stderr[-3000:]
    paired = (store / "paired_vs_cv_tiny_cv2_quantisation.md").read_text()  # against itself: every image agrees
    assert f"| float | {len(files)} |" in paired and "| +0.00 [+0.00, +0.00] | 0 / 0 | 1.000 |" in paired, paired
    refit = read_json(tmp_path / "runs" / "tiny_refit" / "model_card.json")
    assert "test" not in refit["training"]["splits"] and sum(refit["training"]["splits"]["train"].values()) > max(
        sum(read_json(r / "model_card.json")["training"]["splits"]["train"].values()) for r in runs)
    card = read_json(shipped / "model_card.json")
    assert (shipped / "model.tflite").is_file() and card["export"]["variant"] == card["metrics"]["cv"]["variant"]
    assert card["metrics"]["cv"]["top1"] == pooled["variants"]["int8"]["top1"] and card["metrics"]["cv"]["n"] == len(files)
    from fpc_keras.report.status import shipped_cell

    assert f"2-fold CV of its recipe (int8), n={len(files)}: top1" in shipped_cell(shipped)


def test_every_recipe_file_loads_and_every_script_runs_recipe_files():
    """Recipes are YAML under experiments/configs/ (a base per paper, overlays for the ablation variants): each
    resolves to a valid config, and the names the scripts loop over are files."""
    import importlib.util

    from fpc_keras.config import load_config

    recipes = sorted((REPO / "experiments" / "configs").rglob("*.yaml"))
    assert len(recipes) >= 15
    names = {path: load_config(path).name for path in recipes}
    overlays = [p for p in recipes if "extends:" in p.read_text()]
    assert len(overlays) >= 10 and all(names[p] != load_config(p.parent / "base.yaml").name for p in overlays
                                       if p.stem not in ("finetune", "slow_only") and (p.parent / "base.yaml").is_file())

    def script(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    frozen, slowfast, attention = (script(n) for n in ("abdominal_frozen_features", "video_classification",
                                                       "fpc_efficientnet_attention"))
    assert all((frozen.RECIPES / f"{head}.yaml").is_file() for head in frozen.HEADS)
    assert all((slowfast.RECIPES / f"{slow}.yaml").is_file() for slow in slowfast.SLOW_PATHWAYS)
    assert {"base.yaml", "finetune.yaml"} <= {p.name for p in attention.RECIPES.glob("*.yaml")}


def test_quantisation_cross_validation_of_an_ensemble_of_two_recipes(trained, tmp_path):
    """benchmark_edge.py --folds K --config A B: each fold trains both recipes on its split and measures their
    ensemble (one model, one int8 export); every image is tested once; the fold's ensemble holds both members."""
    second = tmp_path / "second.yaml"
    second.write_text(f"extends: {trained['run'] / 'config.yaml'}\nname: tiny_b\nmodel: {{attention: none}}\n")
    command = [sys.executable, str(REPO / "experiments" / "benchmark_edge.py"), "--folds", "2", "--config",
               str(trained["run"] / "config.yaml"), str(second), "--variants", "int8", "--set",
               f"runs_dir={tmp_path / 'runs'}", "--cv-store", str(tmp_path / "cv")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    store = tmp_path / "cv" / "tiny__tiny_b_cv2_quantisation"
    files = [item["file"] for i in range(2) for item in read_json(store / f"fold{i}.json")["items"]]
    assert len(files) == len(set(files)) == len(list(trained["data"].rglob("*.png")))
    card = read_json(tmp_path / "runs" / "tiny__tiny_b_cv2_fold1" / "model_card.json")
    assert [m["run"] for m in card["ensemble"]["members"]] == ["tiny_cv2_fold1", "tiny_b_cv2_fold1"]
    recipe = read_json(store / "fold1.json")["cv_recipe"]  # what a rerun under this store's name must match
    assert len(recipe) == 2 and recipe[1]["model"]["attention"] == "none" != recipe[0]["model"]["attention"]
    pooled = read_json(store / "pooled.json")
    assert "int8" in pooled["variants"] and 0 <= pooled["val_macro_f1"] <= 1
    assert "Mean validation macro-F1" in (store / "pooled.md").read_text()
