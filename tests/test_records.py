import pytest

from fpc_keras.data.records import (Record, assign_folds, assign_splits, in_split, keep_classes,
                                   keep_training_fraction, labels_of, validate_splits)
from fpc_keras.errors import BadInputError


def _records(groups=30, per_group=3):
    return [Record(f"g{g}_{i}.png", "ab"[g % 2], f"g{g}") for g in range(groups) for i in range(per_group)]


def _groups_by_split(records):
    out = {}
    for r in records:
        out.setdefault(r.split, set()).add(r.group)
    return out


def test_group_split_never_leaks_and_is_stratified():
    records = assign_splits(_records(), val_fraction=0.2, test_fraction=0.2, seed=1)
    validate_splits(records)
    groups = _groups_by_split(records)
    assert set(groups) == {"train", "val", "test"}
    assert not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    for split in ("val", "test"):
        assert {r.label for r in records if r.split == split} == {"a", "b"}


def test_official_split_is_kept_and_val_comes_from_train_groups():
    records = [Record(f"{g}.png", "a", f"p{g}", "train" if g < 20 else "test") for g in range(30)]
    out = assign_splits(records, val_fraction=0.25, test_fraction=0.5, seed=0)
    assert {r.group for r in out if r.split == "test"} == {f"p{g}" for g in range(20, 30)}
    val = {r.group for r in out if r.split == "val"}
    assert val and val <= {f"p{g}" for g in range(20)}


def test_a_given_validation_split_is_used_as_it_is():
    records = [Record(f"{g}.png", "a", f"p{g}", ("train", "val", "test")[g % 3]) for g in range(30)]
    assert assign_splits(records, val_fraction=0.25, test_fraction=0.5, seed=0) == records


def test_validator_lists_the_leaking_groups():
    records = [Record("1.png", "a", "patient7", "train"), Record("2.png", "a", "patient7", "test"),
               Record("3.png", "a", "patient8", "train")]
    with pytest.raises(BadInputError) as info:
        validate_splits(records)
    assert "patient7 (test/train)" in str(info.value)
    assert "patient8" not in str(info.value)


def test_folds_partition_groups():
    records = _records(groups=10)
    tests = [{r.group for r in assign_folds(records, 5, k, 0.2) if r.split == "test"} for k in range(5)]
    assert set().union(*tests) == {f"g{g}" for g in range(10)}
    assert sum(len(t) for t in tests) == 10


def test_a_training_fraction_keeps_whole_groups_of_each_class_and_leaves_val_and_test_alone():
    records = assign_folds(_records(groups=40), 5, 1, 0.2, seed=3)
    half = keep_training_fraction(records, 0.5, seed=3)
    train = _groups_by_split(records)["train"]
    kept = _groups_by_split(half)["train"]
    assert kept < train
    assert all(len([r for r in half if r.group == g]) == 3 for g in kept)  # whole groups
    for label in "ab":
        of_label = {r.group for r in records if r.split == "train" and r.label == label}
        assert len(kept & of_label) == max(1, round(len(of_label) / 2))
    assert [r for r in half if r.split != "train"] == [r for r in records if r.split != "train"]
    assert kept != _groups_by_split(keep_training_fraction(records, 0.5, seed=4))["train"]
    assert keep_training_fraction(records, 0.5, seed=3) == half
    assert keep_training_fraction(records, 1.0, seed=3) == records
    smallest = keep_training_fraction(records, 0.01, seed=3)
    assert {r.label for r in smallest if r.split == "train"} == {"a", "b"}  # at least one group a class


def test_a_training_fraction_counts_a_mixed_group_under_its_majority_label_as_the_splits_do():
    pure = [Record(f"{c}{g}.png", c, f"{c}{g}", "train") for c in "ab" for g in range(10)]
    mixed = [Record(f"m{g}_{i}.png", "aab"[i], f"m{g}", "train") for g in range(4) for i in range(3)]
    for seed in range(10):
        kept = _groups_by_split(keep_training_fraction(pure + mixed, 0.5, seed))["train"]
        assert len(kept) == 7 + 5  # class a: 10 pure + 4 mixed groups; class b: 10


def _one_sweep_class():
    """Class "s": one sweep of 42 frames (one group) and 8 single images; class "o": 50 single images."""
    sweep = [Record(f"s{i}.png", "s", "sweep") for i in range(42)]
    return (sweep + [Record(f"t{i}.png", "s", f"t{i}") for i in range(8)]
            + [Record(f"o{i}.png", "o", f"o{i}") for i in range(50)])


def test_an_item_quota_keeps_a_large_group_out_of_a_small_split():
    """Counted in groups, a 15 % validation split of a class made of one 42-frame sweep and 8 single images takes
    the sweep for some seeds (84 % of the class); counted in items it takes at most round(0.15 * 50) = 8 of its
    items, and the other class is split as before."""
    records = _one_sweep_class()
    by_groups = [assign_splits(records, 0.15, 0.0, seed) for seed in range(20)]
    assert any(sum(r.split == "val" and r.label == "s" for r in out) == 42 for out in by_groups)
    for seed, groups_split in enumerate(by_groups):
        out = assign_splits(records, 0.15, 0.0, seed, quota="items")
        validate_splits(out)
        assert 1 <= sum(r.split == "val" and r.label == "s" for r in out) <= 8
        assert [r.split for r in out if r.label == "o"] == [r.split for r in groups_split if r.label == "o"]
    folds = [assign_folds(records, 5, k, 0.15, quota="items") for k in range(5)]
    for out in folds:  # validation carved from the training folds by items, whichever fold holds the sweep
        assert sum(r.split == "val" and r.label == "s" for r in out) <= 8


def test_empty_split_is_a_clear_error():
    with pytest.raises(BadInputError, match="'val' split is empty"):
        in_split([Record("a.png", "x", "a", "train")], "val")


def test_labels_sorted():
    assert labels_of(_records()) == ["a", "b"]


def test_keep_classes_filters_and_refuses_a_class_the_data_lacks():
    records = [Record(f"{label}{i}.png", label, f"g{i}") for label in ("cov", "pneu", "reg", "vir") for i in range(3)]
    assert keep_classes(records, []) == records
    assert labels_of(keep_classes(records, ["cov", "reg"])) == ["cov", "reg"]
    with pytest.raises(BadInputError, match=r"\['covid'\].*classes: \['cov', 'pneu', 'reg', 'vir'\]"):
        keep_classes(records, ["covid", "reg"])
    assert labels_of(keep_classes(records[:3], ["cov", "reg"], require_all=False)) == ["cov"]  # new data: some classes
