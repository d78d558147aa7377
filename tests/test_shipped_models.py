"""The models shipped in tflite/models/ work as the README says, on the real data they were measured on."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_blocked
from fpc_keras.cli import main
from fpc_keras.io import read_json

SHIPPED = REPO / "tflite" / "models"


def _evaluate(model, data: str, tmp_path, *options: str) -> dict:
    """`fpc-keras evaluate` of a shipped model; its results JSON."""
    out = tmp_path / "result.json"
    assert main(["evaluate", "--model", str(model), "--data", data, *options, "--out", str(out)]) == 0
    return read_json(out)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["abdominal_vgg16_frozen", "abdominal_efficientnet_attention"])
def test_abdominal_classifiers_state_their_cv_and_score_images_by_prefix(name, shared_data, tmp_path):
    """The shipped abdominal classifiers (refit on all 300 images) carry the grouped 5-fold CV of their recipes, and
    score a flat folder of images labelled by file-name prefix, holding two of the six classes, by class name (the
    models saw these images: a smoke test of the label mapping, not a measurement)."""
    import shutil

    model = SHIPPED / name / "model.tflite"
    card = read_json(model.parent / "model_card.json")
    assert card["labels"] == ["bladder", "bowel", "gallbladder", "kidney", "liver", "spleen"]
    assert card["export"]["precision"] == "int8" and card["metrics"]["cv"]["n"] == 300
    assert model.stat().st_size < 25e6  # fits a board's storage and this repository
    scans = tmp_path / "scans"
    scans.mkdir()
    for organ in ("spleen", "kidney"):
        for image in sorted((shared_data / "abdominal_organs" / "train").glob(f"{organ}-*.png"))[:5]:
            shutil.copy(image, scans / image.name)
    result = _evaluate(model, f"prefix:{scans}", tmp_path)
    assert result["n"] == 10 and result["metrics"]["top1"]["value"] >= 0.8, result["metrics"]["top1"]


@pytest.mark.realdata
@pytest.mark.slow
def test_hc18_fetalnet_evaluates_its_own_test_split(shared_data, tmp_path):
    model = SHIPPED / "hc18_fetalnet" / "model.tflite"
    card = read_json(model.parent / "model_card.json")
    assert card["task"] == "segmentation" and card["export"]["variant"] == "int8"
    ellipses = tmp_path / "ellipses.csv"
    result = _evaluate(model, f"hc18:{shared_data / 'HC18'}", tmp_path, "--split", "test", "--hc18-csv", str(ellipses))
    assert result["n"] == card["metrics"]["n_test"] == 158
    for name in ("dice", "hc_mad_mm"):
        assert result["metrics"][name]["value"] == pytest.approx(card["metrics"]["test"][name]["value"], abs=1e-4)
    assert result["metrics"]["dice"]["value"] >= 0.97 and len(ellipses.read_text().splitlines()) == 159
    assert card["postprocessing"]["chosen_on"] == "val"
    # The TF-free runner follows the card's post-processing too: the same head circumference as the evaluator.
    item = result["items"][0]
    done = subprocess.run([sys.executable, str(REPO / "tflite" / "run.py"), "--model", str(model), "--json",
                           "--pixel-mm", str(item["pixel_mm"]), item["source"]], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["hc_mm"] == pytest.approx(item["hc_mm"], abs=0.01)


@pytest.mark.realdata
def test_pocus_slowfast_states_its_cv_and_labels_new_videos(shared_data, tmp_path):
    """The shipped POCUS model (the recipe chosen by 5-fold CV over sources, refit on all 103 videos) carries that
    CV with each class's recall, and labels a folder of new videos in any sub-folders by the card's rule (class from
    the file-name prefix, lower-cased; the model saw these two: a smoke test of the rule, not a measurement)."""
    model = SHIPPED / "pocus_slowfast" / "model.tflite"
    card = read_json(model.parent / "model_card.json")
    assert card["task"] == "video" and card["labels"] == ["cov", "pneu", "reg", "vir"]
    assert card["label_rule"]["kind"] == "videos" and model.stat().st_size < 25e6
    cv = card["metrics"]["cv"]
    assert cv["n"] == 103 and sorted(cv["recall"]) == card["labels"]
    videos = [sorted((shared_data / "POCUS_videos").rglob(f"{prefix}*.mp4"))[0] for prefix in ("Reg", "Pneu")]
    for source, folder in zip(videos, ("site_a", "site_b/day2")):
        (tmp_path / "new" / folder).mkdir(parents=True)
        (tmp_path / "new" / folder / source.name).symlink_to(source)
    result = _evaluate(model, f"videos:{tmp_path / 'new'}", tmp_path)
    assert result["n"] == 2 and result["metrics"]["video_top1"]["value"] == 1.0


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.iterdir() if (p / "model.tflite").is_file()))
def test_shipped_card_says_what_its_tflite_computes_in(name):
    """The card's precision and float ops are the ones read back from the shipped .tflite: an "int8" card whose
    model keeps ops in float (3-D convolutions, LRN) would be caught here."""
    from fpc_keras.conversion import precision_fields

    card = read_json(SHIPPED / name / "model_card.json")
    described = precision_fields(card["export"]["variant"], (SHIPPED / name / "model.tflite").read_bytes())
    assert {key: card["export"].get(key) for key in described} == described
    assert card["name"].endswith("_" + described["precision"])


@pytest.mark.realdata
def test_busi_efficientnet_attention_states_its_cv_and_maps_labels_by_name(shared_data, tmp_path):
    """The shipped BUSI classifier (paper 1's recipe in the ensemble chosen by CV, refit on every image) carries the
    5-fold CV of its recipe over all 613 grouped images; and a folder tree holding only some of its classes, in
    another order, is scored by class name (the model saw these images: a smoke test of the label mapping, not a
    measurement)."""
    import shutil

    model = SHIPPED / "busi_efficientnet_attention" / "model.tflite"
    card = read_json(model.parent / "model_card.json")
    assert card["labels"] == ["benign", "malignant", "normal"] and card["export"]["precision"] == "int8"
    assert card["metrics"]["cv"]["n"] == 613
    tree = tmp_path / "scans"
    for label in ("normal", "malignant"):  # benign absent: class indices differ from the model's
        (tree / label).mkdir(parents=True)
        for image in sorted((shared_data / "BUSI" / label).glob("*.png"))[:12]:
            shutil.copy(image, tree / label / image.name)
    result = _evaluate(model, f"folder:{tree}", tmp_path)
    assert result["n"] == 24 and result["metrics"]["top1"]["value"] >= 0.8, result["metrics"]["top1"]


CV_CARDS = sorted(p.name for p in SHIPPED.iterdir()
                  if "cv" in read_json(p / "model_card.json").get("metrics", {}))


@pytest.mark.parametrize("name", CV_CARDS)
def test_shipped_cv_card_is_its_committed_store(name):
    """A model shipped from a cross-validated recipe quotes the pooled CV of the variant it ships, as committed in
    reports/cv with every fold stored, not a figure of its own: refit on every item, it has no test split left."""
    card = read_json(SHIPPED / name / "model_card.json")
    cv = card["metrics"]["cv"]
    pooled = read_json(REPO / cv["store"] / "pooled.json")
    assert cv["variant"] == card["export"]["variant"] and len(pooled["folds_done"]) == pooled["folds"] == cv["folds"]
    assert cv["top1"] == pooled["variants"][cv["variant"]]["top1"] and cv["n"] == pooled["n"]
    assert cv.get("recall") == pooled["variants"][cv["variant"]].get("recall")
    assert "test" not in card["training"]["splits"]


CHECKED = {"busi_efficientnet_attention": "BUSI", "abdominal_efficientnet_attention": "abdominal_organs",
           "abdominal_vgg16_frozen": "abdominal_organs", "hc18_fetalnet": "HC18"}
OTHER_IMAGES = {"BUSI": "*/*.png", "abdominal_organs": "train/*.png", "HC18": "training_set/*_HC.png"}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(CHECKED))
def test_shipped_input_check_flags_the_other_datasets_images(name, shared_data):
    """Each shipped image model's input check (fitted on its training data) flags images of the other datasets
    (20 of each, every one unlike its training data) and passes its own training images."""
    from fpc_keras.data.images import fit_image, read_image
    from fpc_keras.familiarity import ENCODER_SIZE, beside

    card = read_json(SHIPPED / name / "model_card.json")
    check = beside(SHIPPED / name / "model.tflite", card)
    resize = card["preprocessing"]["resize"]

    def ratios(dataset: str):
        files = sorted((shared_data / dataset).glob(OTHER_IMAGES[dataset]))[::15][:20]
        return check.ratio(np.stack([fit_image(read_image(str(p), 3), ENCODER_SIZE, resize) for p in files]))

    assert np.all(ratios(CHECKED[name]) < 1)
    for dataset in set(OTHER_IMAGES) - {CHECKED[name]}:
        assert np.all(ratios(dataset) > 1), dataset


@pytest.mark.realdata
def test_shipped_video_input_check_passes_its_videos_and_flags_still_scans(shared_data, tmp_path):
    """The POCUS model's input check (mean embedding of 4 frames per video) passes its own training videos and flags
    most still-image "videos" of breast and fetal-head scans (measured: 75 % and 90 %; this check is weaker than the
    image models' ones, and the test pins that it still separates); the TF-free runner prints the warning."""
    from conftest import write_mp4
    from fpc_keras.data.images import read_image
    from fpc_keras.familiarity import beside

    card = read_json(SHIPPED / "pocus_slowfast" / "model_card.json")
    check = beside(SHIPPED / "pocus_slowfast" / "model.tflite", card)
    resize = card["preprocessing"]["resize"]
    own = sorted((shared_data / "POCUS_videos").rglob("*.mp4"))[::10][:6]
    assert all(check.video_ratio(str(video), resize) < 1 for video in own)
    stills = []
    for dataset, pattern in (("BUSI", "*/*.png"), ("HC18", "training_set/*_HC.png")):
        for image in sorted((shared_data / dataset).glob(pattern))[::40][:6]:
            video = tmp_path / f"{dataset}_{image.stem}.mp4"
            write_mp4(video, np.repeat(read_image(str(image), 3)[None], 12, axis=0))
            stills.append(check.video_ratio(str(video), resize))
    assert np.mean(np.array(stills) > 1) >= 0.5, stills
    flagged = max(tmp_path.glob("*.mp4"), key=lambda v: check.video_ratio(str(v), resize))
    done = run_blocked(tmp_path, "--model", SHIPPED / "pocus_slowfast" / "model.tflite", flagged)  # no TensorFlow
    assert done.returncode == 0 and "unlike the training data" in done.stdout, done.stderr
