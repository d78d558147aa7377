"""The README's status table is generated from the committed result files: it is up to date, and its figures are
the cards' and CV stores' own."""
import json
import shutil

from conftest import REPO
from fpc_keras.report.status import cv_index, main, status_table


def test_readme_status_table_and_cv_index_are_what_the_committed_results_say():
    assert main(["--check", str(REPO / "README.md")]) == 0, "run: python -m fpc_keras.report.status README.md"


def test_check_names_a_stale_or_missing_index_and_the_rewrite_mends_it(tmp_path, capsys):
    readme, index = tmp_path / "README.md", tmp_path / "cv.md"
    readme.write_text((REPO / "README.md").read_text())
    assert main(["--check", "--index", str(index), str(readme)]) == 1
    assert f"{index} is stale" in capsys.readouterr().out
    assert main(["--index", str(index), str(readme)]) == 0
    assert index.read_text() == cv_index() and main(["--check", "--index", str(index), str(readme)]) == 0
    index.write_text(index.read_text().replace("5 of 5", "4 of 5", 1))
    assert main(["--check", "--index", str(index), str(readme)]) == 1


def test_the_table_follows_a_changed_card_and_a_new_cv_fold(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "tflite" / "models" / "hc18_fetalnet", repo / "tflite" / "models" / "hc18_fetalnet")
    card_path = repo / "tflite" / "models" / "hc18_fetalnet" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["metrics"]["test"]["dice"] = {"value": 0.91234, "ci95": [0.9, 0.92]}
    card_path.write_text(json.dumps(card))
    store = repo / "reports" / "cv" / "fetalnet_x_cv2"
    store.mkdir(parents=True)
    items = [{"file": f"{i}.png", "dice": 0.8 + 0.1 * i, "iou": 0.7, "hausdorff_mm": 1.0, "hc_mad_mm": 2.0 + i}
             for i in range(2)]
    (store / "fold0.json").write_text(json.dumps({"fold": 0, "folds": 2, "items": items}))
    table = status_table(repo)
    assert "dice 0.9123 [0.9000, 0.9200]" in table
    assert "1 store (0 with every fold), one row each in `reports/cv.md`" in table
    assert "none shipped" in table and "none stored" in table  # the other papers have no model nor store here
    assert "| `fetalnet_x_cv2` | 1 of 2 | 2 | dice 0.8500" in cv_index(repo) and "hc_mad_mm 2.50" in cv_index(repo)


def test_a_classifier_cv_still_running_shows_the_folds_stored_so_far(tmp_path):
    """A quantisation CV store without pooled.json (its last folds not run yet) is pooled from its fold records."""
    store = tmp_path / "repo" / "reports" / "cv" / "sf_x_cv5_quantisation"
    store.mkdir(parents=True)
    items = [{"file": f"{i}.mp4", "label": "a" if i % 2 else "b", "float": "a", "int8": "a"} for i in range(4)]
    (store / "fold0.json").write_text(json.dumps({"fold": 0, "folds": 5, "chosen": "int8", "items": items}))
    index = cv_index(tmp_path / "repo")
    assert "| `sf_x_cv5_quantisation` | 1 of 5 | 4 | top1 50.00 %" in index and "int8 50.00 %" in index
    assert "## Cheng et al. 2025 (`slowfast`)" in index and "efficientnet_attention" not in index
