"""The fold store of a cross-validation (`fpc_keras.cv.run_folds`): a stored fold is reused only under the recipe
it was measured with."""
import json

import pytest

from fpc_keras import cv
from fpc_keras.errors import BadInputError
from fpc_keras.io import read_json


def _recipe(*overrides):
    return cv.fold_recipe([cv.fold_config(None, list(overrides), 0, 3, "recipe")])


def _record(calls):
    def record(fold):
        calls.append(fold)
        return {"items": [{"file": f"{fold}.png"}]}
    return record


def test_a_stored_fold_is_reused_under_its_recipe_and_refused_under_another(tmp_path):
    calls = []
    cv.run_folds(tmp_path, 3, _record(calls), which=[0], progress=lambda _: None, recipe=_recipe("train.epochs=3"))
    assert calls == [0] and read_json(tmp_path / "fold0.json")["cv_recipe"] == _recipe("train.epochs=3")
    folds = cv.run_folds(tmp_path, 3, _record(calls), progress=lambda _: None, recipe=_recipe("train.epochs=3"))
    assert calls == [0, 1, 2] and [f["fold"] for f in folds] == [0, 1, 2]
    with pytest.raises(BadInputError, match="train.epochs: 3 then, 4 now") as caught:
        cv.run_folds(tmp_path, 3, _record(calls), progress=lambda _: None, recipe=_recipe("train.epochs=4"))
    assert "fold0.json" in str(caught.value) and "--set name=" in caught.value.fix and calls == [0, 1, 2]


def test_running_one_fold_checks_the_stored_folds_it_will_be_pooled_with(tmp_path):
    calls = []
    cv.run_folds(tmp_path, 3, _record(calls), which=[0], progress=lambda _: None, recipe=_recipe("train.epochs=3"))
    with pytest.raises(BadInputError, match="train.epochs: 3 then, 4 now"):
        cv.run_folds(tmp_path, 3, _record(calls), which=[1], progress=lambda _: None, recipe=_recipe("train.epochs=4"))
    assert calls == [0]


def test_a_recipe_leaves_out_what_does_not_change_a_folds_figures():
    base = _recipe()
    assert _recipe("name=other", "runs_dir=elsewhere", "data.path=/else", "data.on_bad_input=skip",
                   "export.latency_runs=3") == base
    assert cv.fold_recipe([cv.fold_config(None, [], 2, 3, "recipe")]) == base  # another fold, the same recipe
    assert _recipe("data.train_fraction=0.5") != base


def test_folds_stored_before_recipes_were_recorded_are_reused(tmp_path):
    (tmp_path / "fold0.json").write_text(json.dumps({"fold": 0, "folds": 2, "items": []}))
    calls = []
    cv.run_folds(tmp_path, 2, _record(calls), progress=lambda _: None, recipe=_recipe())
    assert calls == [1] and "cv_recipe" not in read_json(tmp_path / "fold0.json")


def test_folds_stored_before_an_option_existed_stand_for_its_default_only(tmp_path):
    recipe = _recipe()
    del recipe[0]["train"]["horizontal_flip"]  # as recorded before the option was added
    (tmp_path / "fold0.json").write_text(json.dumps({"fold": 0, "folds": 2, "items": [], "cv_recipe": recipe}))
    calls = []
    cv.run_folds(tmp_path, 2, _record(calls), progress=lambda _: None, recipe=_recipe())
    assert calls == [1]
    with pytest.raises(BadInputError, match="train.horizontal_flip: False then, True now"):
        cv.run_folds(tmp_path, 2, _record(calls), progress=lambda _: None, recipe=_recipe("train.horizontal_flip=true"))
