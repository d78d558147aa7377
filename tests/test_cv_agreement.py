"""Several recipes' CVs of one dataset compared item by item (`cv.agreement`, experiments/cv_agreement.py)."""
import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, write_mp4
from fpc_keras.cv.agreement import agreement, by_item_set, hard_items, summary
from fpc_keras.errors import BadInputError
from fpc_keras.io import atomic_write_json

LABELS = {"a.png": "x", "b.png": "x", "c.png": "y", "d.png": "y"}


def _folds(predicted: dict[str, str], folds: int = 2) -> list[dict]:
    """`predicted` (file -> float label) as the fold records of a `folds`-fold CV."""
    files = sorted(predicted)
    return [{"fold": k, "folds": folds,
             "items": [{"file": f, "label": LABELS[f], "float": predicted[f], "int8": predicted[f]}
                       for f in files[k::folds]]} for k in range(folds)]


RUNS = {"one": {"a.png": "x", "b.png": "y", "c.png": "x", "d.png": "y"},  # b, c wrong
        "two": {"a.png": "x", "b.png": "y", "c.png": "x", "d.png": "x"},  # b, c, d wrong
        "three": {"a.png": "x", "b.png": "x", "c.png": "x", "d.png": "y"}}  # c wrong


def test_items_every_run_gets_wrong_and_the_vote():
    agreed = agreement({name: _folds(p) for name, p in RUNS.items()})
    s = summary(agreed)
    assert s["top1"] == {"one": 0.5, "two": 0.25, "three": 0.75}
    assert s["vote_top1"] == 0.5  # a right, b voted y (wrong), c voted x (wrong), d voted y (right)
    assert s["right_in_every_run"] == 1  # a
    assert s["wrong_in_share"][1.0] == {"items": 1, "by_label": {"y": 1}}  # c
    assert s["wrong_in_share"][0.5]["items"] == 2  # b (2 of 3) and c
    assert hard_items(agreed, 0.6) == [
        {"file": "b.png", "label": "x", "usual_prediction": "y", "runs_wrong": 2, "runs": 3},
        {"file": "c.png", "label": "y", "usual_prediction": "x", "runs_wrong": 3, "runs": 3}]


def test_incomplete_or_other_item_sets_are_refused():
    whole = _folds(RUNS["one"])
    with pytest.raises(BadInputError, match="holds 1 of 2 folds"):
        agreement({"one": whole, "part": whole[:1]})
    other = _folds({k: v for k, v in RUNS["two"].items() if k != "d.png"})
    with pytest.raises(BadInputError, match="test different items"):
        agreement({"one": whole, "other": other})
    with pytest.raises(BadInputError, match="recorded no 'fp16'"):
        agreement({"one": whole, "two": _folds(RUNS["two"])}, model="fp16")
    with pytest.raises(BadInputError, match="1 CV store"):
        agreement({"one": whole})


def test_script_leaves_out_unfinished_stores_and_writes_the_hard_items(tmp_path):
    for name, predicted in RUNS.items():
        for fold in _folds(predicted):
            atomic_write_json(tmp_path / f"{name}_cv2_quantisation" / f"fold{fold['fold']}.json", fold)
    atomic_write_json(tmp_path / "unfinished_cv2_quantisation" / "fold0.json", _folds(RUNS["one"])[0])
    out = tmp_path / "hard.csv"
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "cv_agreement.py"),
                           str(tmp_path / "*_cv2_quantisation"), "--share", "1", "--csv", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "left out" in done.stderr and "unfinished" in done.stderr
    assert "| majority vote of the 3 runs | 50.00 |" in done.stdout
    assert [row["file"] for row in csv.DictReader(out.open())] == ["c.png"]
    strict = subprocess.run([sys.executable, str(REPO / "experiments" / "cv_agreement.py"), "--strict",
                             str(tmp_path / "*_cv2_quantisation")], capture_output=True, text=True, timeout=60)
    assert strict.returncode == 2 and "holds 1 of 2 folds" in strict.stderr and "Traceback" not in strict.stderr


def _write_stores(folder, runs):
    for name, predicted in runs.items():
        for fold in _folds(predicted):
            atomic_write_json(folder / f"{name}_cv2_quantisation" / f"fold{fold['fold']}.json", fold)


def test_stores_are_grouped_by_the_items_they_test(tmp_path):
    _write_stores(tmp_path, {**RUNS, "other": {"a.png": "x", "b.png": "x"}})
    atomic_write_json(tmp_path / "unfinished" / "fold0.json", _folds(RUNS["one"])[0])
    atomic_write_json(tmp_path / "segmentation" / "fold0.json", {"fold": 0, "folds": 1, "items": [{"file": "a.png"}]})
    groups, left_out = by_item_set(sorted(tmp_path.iterdir()))
    assert [[p.split("/")[-1].split("_")[0] for p in g] for g in groups] == [["one", "three", "two"], ["other"]]
    assert left_out == {str(tmp_path / "segmentation"): "not a classification CV (no labels)",
                        str(tmp_path / "unfinished"): "1 fold(s) stored"}


def test_the_report_shows_what_every_recipe_gets_wrong(tmp_path):
    from fpc_keras.report import build_report

    _write_stores(tmp_path / "reports" / "cv", RUNS)
    page = build_report(tmp_path / "runs", tmp_path / "reports" / "index.html", lambda _: None,
                        tmp_path / "no_models").read_text()
    section = page[page.index('id="agreement"'):]
    assert "<h3>4 items (x, y), 3 CVs</h3>" in section
    assert "<td>majority vote of the 3 runs</td><td>50.00</td>" in section
    assert "<td>wrong in at least 100% of the runs</td><td>1</td><td>25.0</td><td>y 1</td>" in section
    _write_stores(tmp_path / "reports" / "cv", {"four": RUNS["one"]})
    page = build_report(tmp_path / "runs", tmp_path / "reports" / "index.html", lambda _: None,
                        tmp_path / "no_models").read_text()
    assert "<h3>4 items (x, y), 4 CVs</h3>" in page
    assert 'class="gallery"' not in page  # no dataset folder known: names only, in the CSV


def test_the_report_draws_the_items_every_recipe_gets_wrong_from_the_dataset(tmp_path, capsys):
    from fpc_keras.cli import main
    from fpc_keras.report import build_report

    rng = np.random.default_rng(0)
    for name, label in LABELS.items():  # a class-per-folder dataset holding the stores' files
        (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8)).save(tmp_path / "data" / label / name)
    _write_stores(tmp_path / "reports" / "cv", RUNS)
    assert main(["datasets", f"folder:{tmp_path / 'data'}", "--duplicates",
                 "--out", str(tmp_path / "reports" / "duplicates" / "data.json")]) == 0
    capsys.readouterr()
    page = build_report(tmp_path / "runs", tmp_path / "reports" / "index.html", lambda _: None,
                        tmp_path / "no_models").read_text()
    gallery = page[page.index('class="gallery"'):page.index('id="near-duplicates"')]
    assert gallery.count("<figure>") == 1 and 'alt="c.png"' in gallery  # c: the one item wrong in every run
    assert "y &rarr; x" in gallery and "data:image/png;base64," in gallery


def test_the_videos_every_recipe_gets_wrong_are_drawn_from_a_frame(tmp_path):
    """Video stores (items named by file) get a frame of each video every run gets wrong, from the folder that holds
    them all; a folder where two files share a name is not used for that name."""
    from fpc_keras.report.cross_validation import agreement_tables

    videos = {name.replace(".png", ".mp4"): label for name, label in LABELS.items()}
    runs = {run: {f.replace(".png", ".mp4"): p for f, p in predicted.items()} for run, predicted in RUNS.items()}
    for run, predicted in runs.items():
        for k in range(2):
            files = sorted(predicted)[k::2]
            atomic_write_json(tmp_path / "cv" / f"{run}_cv2" / f"fold{k}.json", {"fold": k, "folds": 2, "items": [
                {"file": f, "label": videos[f], "float": predicted[f]} for f in files]})
    frames = np.random.default_rng(0).integers(0, 255, (10, 32, 32, 3), np.uint8)
    for name, label in videos.items():
        (tmp_path / "videos" / label).mkdir(parents=True, exist_ok=True)
        write_mp4(tmp_path / "videos" / label / name, frames)
    (tmp_path / "twice" / "x").mkdir(parents=True)
    (tmp_path / "twice" / "y").mkdir(parents=True)
    for folder in ("x", "y"):
        write_mp4(tmp_path / "twice" / folder / "c.mp4", frames)
    twice, = agreement_tables(tmp_path / "cv", roots=[tmp_path / "twice"])
    assert twice["wrong_in_every_run"] == 1 and twice["wrong"] == []  # c.mp4 is two files there
    table, = agreement_tables(tmp_path / "cv", roots=[tmp_path / "twice", tmp_path / "videos"])
    assert [(w["file"], w["label"], w["usual_prediction"]) for w in table["wrong"]] == [("c.mp4", "y", "x")]
    assert table["wrong"][0]["png"].startswith("data:image/png;base64,")
