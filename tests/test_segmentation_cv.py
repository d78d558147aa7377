"""The final fit (`train.refit_from`: train + validation for the epochs the source run's validation chose) and
K-fold cross-validation of segmentation runs (folds run apart, pooled, compared image by image), on a tiny FetalNet."""
import csv
import json
import math

import pytest

from fpc_keras.cli import main
from fpc_keras.errors import BadInputError
from fpc_keras.io import read_json
from conftest import fetalnet_train_args, write_hc18


def test_final_fit_trains_on_train_and_validation_for_the_source_runs_epochs(tmp_path):
    assert main(fetalnet_train_args(tmp_path, "src", 12, "train.epochs=3", "train.batch_size=4",
                                    "train.finetune_blocks=1", "train.finetune_epochs=2")) == 0
    source = read_json(tmp_path / "runs" / "src" / "model_card.json")
    expected = {name: phase["best_epoch"] + 1 for name, phase in source["training"]["phases"].items()
                if phase["best_epoch"] >= 0}
    assert main(fetalnet_train_args(tmp_path, "final", 12, "train.epochs=3", "train.batch_size=4",
                                    "train.finetune_blocks=1", "train.finetune_epochs=2",
                                    f"train.refit_from={tmp_path / 'runs' / 'src'}")) == 0
    card = read_json(tmp_path / "runs" / "final" / "model_card.json")
    src_splits, splits = source["training"]["splits"], card["training"]["splits"]
    assert "val" not in splits and splits["test"] == src_splits["test"]
    assert splits["train"]["head"] == src_splits["train"]["head"] + src_splits["val"]["head"]
    assert {name: phase["epoch"] + 1 for name, phase in card["training"]["phases"].items()} == expected
    assert card["postprocessing"]["threshold"] == source["postprocessing"]["threshold"]
    assert card["postprocessing"]["source"] == str(tmp_path / "runs" / "src")
    assert main(["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report" / "index.html")]) == 0
    assert "(a final fit: this run has no validation split)" in (tmp_path / "report" / "runs" / "final.html").read_text()
    history = list(csv.DictReader((tmp_path / "runs" / "final" / "history.csv").open()))
    assert len(history) == sum(expected.values()) and not any(key.startswith("val_") for key in history[0])
    rows = list(csv.DictReader((tmp_path / "runs" / "final" / "splits.csv").open()))
    test_items = {r["source"] for r in rows if r["split"] == "test"}
    src_rows = list(csv.DictReader((tmp_path / "runs" / "src" / "splits.csv").open()))
    assert test_items == {r["source"] for r in src_rows if r["split"] == "test"}


def test_final_fit_refuses_another_split_rule_a_missing_card_and_video_models(tmp_path, capsys):
    assert main(fetalnet_train_args(tmp_path, "src", 8, "train.epochs=1", "train.batch_size=4")) == 0
    source = tmp_path / "runs" / "src"
    cases = {"was split by": ["data.val_fraction=0.3", f"train.refit_from={source}"],
             "does not exist": [f"train.refit_from={tmp_path / 'nothing'}"],
             "segmentation frame models": ["data.clip_length=4", "model.temporal=convlstm",
                                           f"train.refit_from={source}"]}
    for n, (message, overrides) in enumerate(cases.items()):
        assert main(fetalnet_train_args(tmp_path, f"r{n}", 8, "train.epochs=1", *overrides)) == 2
        assert message in capsys.readouterr().err


def test_cross_validation_measures_each_image_once_and_pools_folds_run_apart(tmp_path):
    """`experiments/fetalnet_multitask.py --folds 2`: one call runs fold 0 only, a later call runs the fold not
    yet stored; the stored folds' test images partition the data, and the pooled table covers both."""
    import subprocess
    import sys

    from conftest import REPO

    data = write_hc18(tmp_path / "hc18", count=12)
    tiny = ["data.image_size=[32, 32]", "model.backbone=unet", "model.weights=none", "model.base_filters=4",
            "model.depth=2", "train.epochs=1", "train.batch_size=4", "train.finetune_blocks=0",
            "data.val_fraction=0.25"]
    command = [sys.executable, str(REPO / "experiments" / "fetalnet_multitask.py"), "--data", f"hc18:{data}",
               "--runs", str(tmp_path / "runs"), "--cv-store", str(tmp_path / "cv"), "--folds", "2",
               *[a for value in tiny for a in ("--set", value)]]
    first = subprocess.run([*command, "--fold", "0"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    store = tmp_path / "cv" / "fetalnet_hc18_lite0_256x384_ema_cv2"
    assert [p.name for p in sorted(store.glob("fold*.json"))] == ["fold0.json"]
    assert "pooled (1 of 2 folds)" in first.stdout
    baseline = tmp_path / "baseline" / "fold0_worse"  # fold 0 as a recipe 0.01 Dice and 0.5 mm worse per image
    baseline.mkdir(parents=True)
    worse = read_json(store / "fold0.json")
    for item in worse["items"]:
        item.update(dice=item["dice"] - 0.01, hc_mad_mm=item["hc_mad_mm"] + 0.5)
    (baseline / "fold0.json").write_text(json.dumps(worse))
    measured = sum(math.isfinite(item["hc_mad_mm"]) for item in worse["items"])  # an empty mask has no HC
    second = subprocess.run([*command, "--against", str(baseline)], capture_output=True, text=True, timeout=600,
                            cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "fold 0: stored in" in second.stdout
    other = subprocess.run([*command, "--set", "train.epochs=2"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert other.returncode != 0 and "train.epochs: 1 then, 2 now" in other.stdout + other.stderr
    folds = [read_json(store / f"fold{i}.json") for i in (0, 1)]
    tested = [[item["file"] for item in fold["items"]] for fold in folds]
    assert not set(tested[0]) & set(tested[1])
    assert sorted(tested[0] + tested[1]) == sorted(p.name for p in (data / "training_set").glob("*_HC.png"))
    assert all(item["hc_true_mm"] for fold in folds for item in fold["items"])
    assert all(len(item["ellipse"]) == 5 for fold in folds for item in fold["items"] if item["hc_mm"])
    assert all(fold["postprocessing"]["shape"] in ("mask", "ellipse") for fold in folds)
    pooled = (store / "pooled.md").read_text()
    assert "| pooled (2 of 2 folds) | 12 |" in pooled
    paired = (store / "paired_vs_baseline_fold0_worse.md").read_text()  # the 6 images of fold 0, each better than baseline
    assert "| dice | 6 | +0.0100 [+0.0100, +0.0100] | 6 |" in paired, paired
    assert f"| hc_mad_mm | {measured} | -0.50 [-0.50, -0.50] | {measured} |" in paired and measured, paired


def test_pooling_refuses_a_fold_twice_or_folds_of_another_k():
    from fpc_keras.cv.segmentation import pooled_segmentation

    def fold(index: int, k: int, hc: float) -> dict:
        return {"fold": index, "folds": k, "items": [{"dice": 0.9, "iou": 0.8, "hausdorff_mm": 1.0, "hc_mad_mm": hc}]}

    pooled = pooled_segmentation([fold(0, 5, 1.0), fold(1, 5, 3.0)])
    assert pooled["metrics"]["hc_mad_mm"]["value"] == pytest.approx(2.0) and pooled["folds_done"] == [0, 1]
    for folds in ([fold(0, 5, 1.0), fold(0, 5, 1.0)], [fold(0, 5, 1.0), fold(1, 3, 1.0)]):
        with pytest.raises(BadInputError, match="one K-fold split"):
            pooled_segmentation(folds)


def test_paired_comparison_matches_images_across_recipes_and_counts_wins():
    from fpc_keras.cv.segmentation import paired_segmentation, paired_segmentation_table

    def fold(index: int, k: int, files: dict) -> dict:
        return {"fold": index, "folds": k, "items": [{"file": f, "dice": d, "iou": None, "hausdorff_mm": 1.0,
                                                      "hc_mad_mm": hc} for f, (d, hc) in files.items()]}

    recipe = [fold(0, 5, {"a.png": (0.96, 1.0), "b.png": (0.98, 3.0)}), fold(1, 5, {"c.png": (0.97, 2.0)})]
    baseline = [fold(0, 5, {"b.png": (0.97, 4.0), "a.png": (0.97, 1.5)}), fold(1, 5, {"z.png": (0.5, 9.0)})]
    paired = paired_segmentation(recipe, baseline)
    assert paired["hc_mad_mm"]["n"] == 2 and paired["hc_mad_mm"]["value"] == pytest.approx(-0.75)  # a, b only
    assert paired["hc_mad_mm"]["better"] == 2 and paired["dice"]["better"] == 1  # lower mm, higher Dice wins
    assert paired["hausdorff_mm"]["better"] == 0 and "iou" not in paired  # ties win nothing; no values, no row
    assert "| hc_mad_mm | 2 | -0.75 [" in paired_segmentation_table(paired, "ema", "mask_only")
    for other in ([fold(0, 3, {"a.png": (0.9, 1.0)})], []):
        with pytest.raises(BadInputError):
            paired_segmentation(recipe, other)
