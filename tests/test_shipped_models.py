"""The models shipped in tflite/models/ work as the README says, on the real data they were measured on."""
import pytest

from conftest import REPO
from fpc_keras.cli import main
from fpc_keras.io import read_json

SHIPPED = REPO / "tflite" / "models"


@pytest.mark.realdata
def test_abdominal_vgg16_frozen_evaluates_its_own_test_split(shared_data, tmp_path):
    model = SHIPPED / "abdominal_vgg16_frozen" / "model.tflite"
    card = read_json(model.parent / "model_card.json")
    assert card["labels"] == ["bladder", "bowel", "gallbladder", "kidney", "liver", "spleen"]
    assert model.stat().st_size < 25e6  # fits a board's storage and this repository
    out = tmp_path / "result.json"
    assert main(["evaluate", "--model", str(model), "--data", f"prefix:{shared_data / 'abdominal_organs'}",
                 "--split", "test", "--out", str(out)]) == 0
    result = read_json(out)
    assert result["n"] == card["metrics"]["n_test"] == 60  # the split rule travels in the card
    assert result["metrics"]["top1"]["value"] == pytest.approx(card["metrics"]["test"]["top1"]["value"])
    assert result["metrics"]["top1"]["value"] >= 0.95
