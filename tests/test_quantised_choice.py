"""`export.choose_quantised`: which int8 variant a run ships is decided on validation, by fidelity to the float
model for classifiers, and the test split never decides; and what quantisation costs, pooled over the folds of a
cross-validation (`cv.classification.pooled_quantisation`)."""
import pytest

from fpc_keras.errors import BadInputError
from fpc_keras.cv.classification import (paired_classification, paired_classification_table, pooled_quantisation,
                                         pooled_quantisation_table)
from fpc_keras.export import choose_quantised
from fpc_keras.io import atomic_write_json, read_json
from fpc_keras.report import export_rows


def _card(folder, variant, val, test, agreement=None, prob_diff=None, metric="top1"):
    metrics = {split: {metric: {"value": value, "ci95": [value - 0.05, value + 0.05]}}
               for split, value in (("val", val), ("test", test), ("keras_test", 0.79))}
    if agreement is not None:
        metrics["fidelity"] = {"val": {"top1_agreement": agreement, "mean_abs_prob_diff": prob_diff, "n": 92}}
    card = {"export": {"variant": variant, "size_bytes": 1000, "latency": {"2_threads": {"median_ms": 1.0,
                                                                                          "p90_ms": 2.0}}},
            "metrics": metrics}
    atomic_write_json(folder / "exports" / variant / "model_card.json", card)
    return card


def test_a_classifier_ships_the_variant_that_follows_float_closest_on_validation(tmp_path):
    _card(tmp_path, "fp32", 0.86, 0.79, 1.0, 0.0)  # not quantised: never a candidate
    _card(tmp_path, "int8", 0.79, 0.77, 0.924, 0.052)
    _card(tmp_path, "mixed", 0.83, 0.70, 0.967, 0.028)  # worst on test: test figures do not decide
    _card(tmp_path, "qat", 0.84, 0.90, 0.935, 0.067)  # best validation top-1, but further from float
    choice = choose_quantised(tmp_path)
    assert choice["chosen"] == "mixed"
    assert [r["variant"] for r in choice["ranking"]] == ["mixed", "qat", "int8"]
    assert choice["ranking"][0]["val_top1_agreement"] == 0.967 and choice["ranking"][0]["test_top1"] == 0.70
    assert read_json(tmp_path / "exports" / "choice.json") == choice


def test_equal_agreement_goes_to_the_smaller_probability_difference(tmp_path):
    _card(tmp_path, "int8", 0.80, 0.80, 0.95, 0.040)
    _card(tmp_path, "dynamic", 0.80, 0.80, 0.95, 0.030)
    assert choose_quantised(tmp_path)["chosen"] == "dynamic"


def test_a_segmenter_ships_the_best_validation_dice(tmp_path):
    _card(tmp_path, "int8", 0.9770, 0.9724, metric="dice")
    _card(tmp_path, "mixed", 0.9771, 0.9700, metric="dice")
    assert choose_quantised(tmp_path)["chosen"] == "mixed"


def test_no_quantised_export_measured_on_validation_means_no_choice(tmp_path):
    _card(tmp_path, "fp32", 0.86, 0.79, 1.0, 0.0)
    card = _card(tmp_path, "int8", 0.79, 0.77, 0.92, 0.05)
    del card["metrics"]["val"]
    atomic_write_json(tmp_path / "exports" / "int8" / "model_card.json", card)
    assert choose_quantised(tmp_path) is None and not (tmp_path / "exports" / "choice.json").exists()
    card["metrics"]["val"] = {"sweep_dice": {"value": 0.95}}  # no top-1 or Dice to rank by
    atomic_write_json(tmp_path / "exports" / "int8" / "model_card.json", card)
    assert choose_quantised(tmp_path) is None


def test_the_report_marks_the_chosen_variant(tmp_path):
    cards = [_card(tmp_path, v, 0.8, 0.8, a, 0.05) for v, a in (("int8", 0.9), ("qat", 0.95))]
    rows = export_rows({"exports": cards, "quantised_choice": choose_quantised(tmp_path)})
    assert [r["variant"] for r in rows] == ["int8", "qat (chosen on validation)"]


def _fold(fold, chosen, rows):
    """rows: (label, float prediction, int8 prediction, mixed prediction)."""
    return {"run": f"r{fold}", "fold": fold, "folds": 2, "chosen": chosen,
            "items": [{"file": f"{fold}_{i}.png", "label": label, "float": f, "int8": q, "mixed": m}
                      for i, (label, f, q, m) in enumerate(rows)]}


def test_pooled_quantisation_pairs_each_image_with_its_float_prediction():
    folds = [_fold(0, "mixed", [("a", "a", "b", "a"), ("b", "b", "b", "b"), ("a", "b", "a", "b")]),
             _fold(1, "int8", [("b", "a", "a", "b"), ("a", "a", "b", "a"), ("b", "b", "b", "b")])]
    pooled = pooled_quantisation(folds)
    assert pooled["n"] == 6 and pooled["folds_done"] == [0, 1]
    assert pooled["float"]["value"] == 4 / 6
    int8 = pooled["variants"]["int8"]
    assert int8["top1"]["value"] == 3 / 6 and int8["lost"] == 2 and int8["gained"] == 1
    assert int8["change"]["value"] == -1 / 6 and int8["agreement"] == 3 / 6
    assert pooled["variants"]["mixed"]["change"]["value"] == 1 / 6  # fold 1's misread "b" fixed, nothing lost
    chosen = pooled["variants"]["chosen"]  # fold 0 ships mixed, fold 1 int8
    assert chosen["lost"] == 1 and chosen["gained"] == 0 and chosen["top1"]["value"] == 3 / 6
    lo, hi = int8["change"]["ci95"]
    assert lo < -1 / 6 < hi
    assert pooled["float_macro_f1"]["value"] == pytest.approx(2 / 3)  # a and b: 2 of 3 right, 1 false positive each
    assert pooled["variants"]["int8"]["macro_f1"]["value"] == pytest.approx((2 / 5 + 4 / 7) / 2)  # F1 a 2/5, b 4/7
    assert pooled["float_recall"] == {"a": 2 / 3, "b": 2 / 3} and int8["recall"] == {"a": 1 / 3, "b": 2 / 3}
    table = pooled_quantisation_table(pooled)
    assert "| chosen on each fold's validation | 50.00" in table and "| int8 | 0.333 | 0.667 |" in table


def test_a_predicted_class_no_pooled_item_carries_is_its_own_class_in_macro_f1():
    """Folds pooled before every class has a test item: a prediction of the missing class `c` is a false positive of
    `c` (F1 0), not a hit on whichever class sorts last (`b`)."""
    pooled = pooled_quantisation([_fold(0, "int8", [("a", "a", "a", "a"), ("b", "c", "b", "b")])])
    assert pooled["float_macro_f1"]["value"] == pytest.approx((1 + 0 + 0) / 3)  # a right; b missed; c wrongly called
    assert pooled["variants"]["int8"]["macro_f1"]["value"] == pytest.approx(1.0)
    assert pooled["float_recall"] == {"a": 1.0, "b": 0.0}


def test_a_variant_one_fold_lacks_is_left_out_of_the_pool_not_scored_wrong():
    """Folds stored with other --variants: fold 1 has no `flip` column; pooling `flip` would count fold 1's items as
    misread (or as a class named None in macro-F1)."""
    first = _fold(0, "int8", [("a", "a", "a", "a"), ("b", "b", "b", "b")])
    first["items"] = [{**item, "flip": item["label"]} for item in first["items"]]
    pooled = pooled_quantisation([first, _fold(1, "int8", [("a", "a", "a", "a"), ("b", "a", "b", "b")])])
    assert set(pooled["variants"]) == {"int8", "mixed", "chosen"}
    assert pooled["variants"]["int8"]["top1"]["value"] == 1.0 and pooled["float"]["value"] == 3 / 4


def test_pooling_refuses_a_fold_twice_or_folds_of_another_split():
    fold = _fold(0, "int8", [("a", "a", "a", "a")])
    with pytest.raises(BadInputError, match="one K-fold split"):
        pooled_quantisation([fold, fold])
    with pytest.raises(BadInputError, match="one K-fold split"):
        pooled_quantisation([fold, {**_fold(1, "int8", [("a", "a", "a", "a")]), "folds": 5}])


def test_paired_classification_compares_two_recipes_image_by_image():
    """Matched by file over the images both CVs tested; a label that differs between them, or CVs of another K,
    are refused."""
    recipe = [_fold(0, "int8", [("a", "a", "a", "a"), ("b", "a", "b", "a"), ("a", "a", "a", "a")]),
              _fold(1, "int8", [("b", "b", "b", "b")])]
    baseline = [_fold(0, "int8", [("a", "b", "a", "a"), ("b", "a", "a", "b"), ("a", "a", "b", "a")])]
    paired = paired_classification(recipe, baseline)  # fold 1's image is not in the baseline: left out
    assert paired["float"]["n"] == 3 and paired["float"]["top1"] == 2 / 3 and paired["float"]["baseline_top1"] == 1 / 3
    assert paired["float"]["change"]["value"] == pytest.approx(1 / 3) and paired["float"]["better"] == 1
    assert paired["float"]["worse"] == 0 and paired["float"]["agreement"] == pytest.approx(2 / 3)
    assert paired["int8"]["better"] == 2 and paired["int8"]["change"]["value"] == pytest.approx(2 / 3)
    assert paired["mixed"]["worse"] == 1 and paired["mixed"]["better"] == 0  # only the baseline's mixed gets 0_1
    assert "| float | 3 | 66.67 | 33.33 | +33.33 [" in paired_classification_table(paired, "seed1", "seed0")
    relabelled = [_fold(0, "int8", [("b", "b", "a", "a")])]
    with pytest.raises(BadInputError, match="0_0.png is 'a' in one CV and 'b' in the other"):
        paired_classification(recipe, relabelled)
    with pytest.raises(BadInputError, match="different K-fold splits"):
        paired_classification(recipe, [{**baseline[0], "folds": 3}])
