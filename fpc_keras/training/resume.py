"""What lets a run continue or build on another: the recipe a run folder may resume under, the split rule a card
records, a final fit's source run (its epochs per phase, its test split kept apart) and a warm start's source."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import RunConfig, config_differences, config_to_dict, load_config, model_section_dict
from ..data.datasets import RULE_DEFAULTS
from ..data.records import Record
from ..data.sources import data_source
from ..errors import BadInputError
from ..io import read_json


def check_resumable(config: RunConfig) -> None:
    """A run folder with checkpoints resumes (or, finished, is evaluated again) only under the data, model and seed
    it was trained with. Anything else would load its weights into another network, or measure them on a split
    that holds their training items (a new seed deals the items anew) and overwrite the run's results with that."""
    stored = config.run_dir / "config.yaml"
    if not (stored.is_file() and (config.run_dir / "checkpoints").is_dir()):
        return
    changed = config_differences(_recipe(load_config(stored)), _recipe(config))
    if changed:
        raise BadInputError(f"{config.run_dir} was trained with another configuration ({'; '.join(changed)})",
                            "give the new run its own name (--set name=NAME), or delete the folder to train it again")


def _recipe(config: RunConfig) -> dict:
    """What a run's checkpoints and splits depend on: the data section (but not the bad-input policy), the model's
    own section (classes as counted when it was trained) and the seed."""
    tree = config_to_dict(config)
    data = {k: v for k, v in tree["data"].items() if k != "on_bad_input"}
    return {"data": data, "model": model_section_dict(config.model), "train": {"seed": tree["train"]["seed"]}}


def split_rule(config: RunConfig) -> dict:
    """What decides which item lands in which split (the card's `training.split_rule`)."""
    return {"val_fraction": config.data.val_fraction, "folds": config.data.folds,
            "test_fraction": config.data.test_fraction, "fold": config.data.fold, "seed": config.split_seed,
            "duplicates": config.data.duplicates, "duplicate_distance": config.data.duplicate_distance,
            "split_quota": config.data.split_quota, "train_fraction": config.data.train_fraction}


def read_refit_source(config: RunConfig) -> dict:
    """The model card of `train.refit_from`, checked to hold what a final fit takes from it (epochs per phase,
    post-processing) and to have been split by the same rule, so that its test split stays out of this run."""
    path = Path(config.train.refit_from)
    path = path / "model_card.json" if path.is_dir() else path
    if not path.is_file():
        raise BadInputError(f"train.refit_from: {path} does not exist",
                            "give a run folder that finished training, or its model_card.json")
    card = read_json(path)
    training = card.get("training", {})
    if "phase1" not in training.get("phases", {}) or "postprocessing" not in card:
        raise BadInputError(f"train.refit_from: {path} records no training phases or post-processing",
                            "give the card of a segmentation run that finished training and its validation choice")
    check_split_as(config, card, f"train.refit_from: {path}")
    return card


def check_split_as(config: RunConfig, card: dict, what: str) -> None:
    """Refuse to build on a run (`card`) that split the data by another rule: its training items may be this run's
    test items. The training fraction is left out: it draws from the training split and moves nothing into test."""
    recorded = {**RULE_DEFAULTS, **card.get("training", {}).get("split_rule", {})}
    if {**recorded, "train_fraction": 1.0} != {**split_rule(config), "train_fraction": 1.0}:
        raise BadInputError(f"{what} was split by {recorded}, this run by {split_rule(config)}",
                            "use the source run's data.val_fraction, data.test_fraction, data.folds, data.fold and "
                            "split seed (data.split_seed, else train.seed), so that its test split stays apart")


def init_source(config: RunConfig) -> Path:
    """`train.init_from` with `{cv}` replaced by this fold's run-name suffix (`_cv<K>_fold<i>`; nothing outside
    cross-validation), checked, where it is a run of the same data, to have been split as this run is: a model
    warm-started from a run that trained on this run's test items would be measured on what it saw."""
    d = config.data
    path = Path(config.train.init_from.replace("{cv}", f"_cv{d.folds}_fold{d.fold}" if d.folds else ""))
    card_file = path / "model_card.json" if path.is_dir() else path.parent / "model_card.json"
    if card_file.is_file():
        card = read_json(card_file)
        if card.get("training", {}).get("data") == data_source(f"{d.kind}:{d.path}")["path"]:
            check_split_as(config, card, f"train.init_from: {path}")
    return path


def final_fit_epochs(card: dict) -> dict[str, int]:
    """Epochs per phase that the source run kept: up to its best epoch; a phase whose checkpoints never beat the
    previous phase's best (best epoch -1) is left out."""
    return {name: phase["best_epoch"] + 1 for name, phase in card["training"]["phases"].items()
            if phase["best_epoch"] >= 0}


def final_fit_records(records: list[Record]) -> list[Record]:
    """The validation items joined to training (a final fit has no selection left to make)."""
    return [replace(r, split="train") if r.split == "val" else r for r in records]
