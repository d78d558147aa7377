"""The README's status table is generated from the committed result files: it is up to date, and its figures are
the cards' and CV stores' own."""
import json
import shutil

from conftest import REPO
from fpc_keras.report.status import main, status_table


def test_readme_status_table_is_what_the_committed_results_say():
    assert main(["--check", str(REPO / "README.md")]) == 0, "run: python -m fpc_keras.report.status README.md"


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
    assert "`reports/cv/fetalnet_x_cv2` (1 of 2 folds, n=2): dice 0.8500" in table
    assert "hc_mad_mm 2.50" in table and "none shipped" in table  # the other papers have no model here


def test_a_classifier_cv_still_running_shows_the_folds_stored_so_far(tmp_path):
    """A quantisation CV store without pooled.json (its last folds not run yet) is pooled from its fold records."""
    store = tmp_path / "repo" / "reports" / "cv" / "sf_x_cv5_quantisation"
    store.mkdir(parents=True)
    items = [{"file": f"{i}.mp4", "label": "a" if i % 2 else "b", "float": "a", "int8": "a"} for i in range(4)]
    (store / "fold0.json").write_text(json.dumps({"fold": 0, "folds": 5, "chosen": "int8", "items": items}))
    assert "`reports/cv/sf_x_cv5_quantisation` (1 of 5 folds, n=4): top1 50.00 %" in status_table(tmp_path / "repo")
