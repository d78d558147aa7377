"""Model cards against the schema kept in the package (fpc_keras/card_schema.json): every shipped card, a freshly
trained one, and the mistakes the schema exists to catch (an absolute data path, post-processing candidates in the
card, no statement of intended use)."""
import copy
import json

import jsonschema
import pytest

from conftest import REPO
from fpc_keras.card import SCHEMA, upgrade_card
from fpc_keras.io import read_json

SHIPPED = sorted((REPO / "tflite" / "models").glob("*/model_card.json"))
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


def strings(tree) -> list[str]:
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in strings(v)]
    if isinstance(tree, list):
        return [s for v in tree for s in strings(v)]
    return [tree] if isinstance(tree, str) else []


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA.read_text()))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_every_shipped_card_follows_the_schema_and_names_no_machine_path(path):
    card = read_json(path)
    VALIDATOR.validate(card)
    assert not [s for s in strings(card) if s.startswith(("/", "~"))]  # no absolute path of one machine
    post = card.get("postprocessing")
    if post and "candidates_file" in post:
        assert (path.parent / post["candidates_file"]).is_file()


def test_a_new_run_and_its_export_write_schema_cards(trained):
    card = read_json(trained["run"] / "model_card.json")
    VALIDATOR.validate(card)
    assert card["outputs"][0]["shape"] == [1, len(card["labels"])] and card["outputs"][0]["labels"] == card["labels"]
    assert card["training"]["data_source"]["licence"] == "not recorded"  # generated data: nothing to claim
    assert "alpha" not in card["model"] and card["model"]["attention"] == "se"  # its architecture's section only
    for export in (trained["run"] / "exports").glob("*/model_card.json"):
        VALIDATOR.validate(read_json(export))


@pytest.mark.parametrize("mistake", ["absolute data path", "candidates in the card", "no intended use",
                                     "untyped outputs"])
def test_the_schema_refuses(mistake):
    card = copy.deepcopy(read_json(REPO / "tflite" / "models" / "hc18_fetalnet" / "model_card.json"))
    if mistake == "absolute data path":
        card["training"]["data"] = "hc18:/home/someone/HC18"
    elif mistake == "candidates in the card":
        card["postprocessing"]["candidates"] = [{"threshold": 0.5}]
    elif mistake == "no intended use":
        del card["intended_use"]
    else:
        card["outputs"] = [{"name": "mask"}]
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(card)


def test_an_old_card_upgrades_with_its_figures_unchanged():
    old = {"name": "m", "task": "segmentation", "labels": ["head", "off_plane"], "output": "per-pixel probability",
           "model": {"name": "fetalnet"}, "training": {"data": "hc18:/abs/shared/data/HC18", "phases": {}},
           "metrics": {"test": {"dice": {"value": 0.97}}}, "provenance": {"date": "2026-11-24T02:42:17+00:00"},
           "postprocessing": {"threshold": 0.5, "flip": True, "shape": "ellipse", "candidates": [{"t": 1}]}}
    card, candidates = upgrade_card(copy.deepcopy(old), [(1, 8, 8, 1), (1, 2)])
    assert candidates == [{"t": 1}] and "candidates" not in card["postprocessing"]
    assert card["metrics"] == old["metrics"] and card["changelog"][0] == {"version": "1.0.0", "change": "trained",
                                                                         "date": "2026-11-24"}
    assert [o["name"] for o in card["outputs"]] == ["mask", "plane"] and card["references"][0]["arxiv"] == "2107.06943"
    assert not card["training"]["data"].startswith("hc18:/") and "output" not in card
    assert upgrade_card(card, []) == (card, None)  # already schema 1.0: left as it is
