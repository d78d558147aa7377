"""K-fold cross-validation, one runner for every task and experiment: fold i's model is trained on the other folds
(its validation split carved from them) and measured on fold i, so every item is tested once by a model that never
saw it. A finished fold is kept as a small JSON record in a store folder (`fold<i>.json`, committed under
`reports/cv/` for the shipped recipes), so the folds of one CV may run in different sessions; a stored fold is never
run again, and every stored fold is pooled.

    records = cv.run_folds(store, 5, lambda fold: record_of(train(cv.fold_config(CFG, overrides, fold, 5, name))))

The records and their pooling are per task: `cv.classification` (per-image predictions of a float model and its
exports, paired changes) and `cv.segmentation` (per-image Dice / HC error). Both compare two recipes' CVs item by
item (`paired_items`, `write_paired`: `--against STORE` of the experiment scripts).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..config import RunConfig, config_differences, config_to_dict, load_config
from ..errors import BadInputError
from ..io import atomic_write_json, atomic_write_text, read_json

Progress = Callable[[str], None]


def fold_overrides(fold: int, folds: int, name: str) -> list[str]:
    """The overrides that make a recipe fold `fold` of a `folds`-fold CV, as its own run `NAME_fold<i>`."""
    return [f"data.folds={folds}", f"data.fold={fold}", f"name={name}_fold{fold}"]


def fold_config(config: str | Path | None, overrides: Sequence[str], fold: int, folds: int, name: str) -> RunConfig:
    """The run config of fold `fold` of a `folds`-fold CV of a recipe (`fold_overrides` after `overrides`)."""
    return load_config(config, [*overrides, *fold_overrides(fold, folds, name)])


def fold_recipe(configs: Sequence[RunConfig]) -> list[dict]:
    """What a fold's figures depend on, the same for every fold of one CV: each member config without its name,
    fold, folders, bad-input policy and latency runs."""
    recipes = []
    for config in configs:
        tree = config_to_dict(config)
        data = {k: v for k, v in tree.pop("data").items() if k not in ("path", "fold", "on_bad_input")}
        export = {k: v for k, v in tree.pop("export").items() if k != "latency_runs"}
        recipes.append({**{k: v for k, v in tree.items() if k not in ("name", "runs_dir")}, "data": data,
                        "export": export})
    return recipes


def run_folds(store: str | Path, folds: int, record: Callable[[int], dict], which: Iterable[int] | None = None,
              progress: Progress = print, recipe: list[dict] | None = None) -> list[dict]:
    """Record each fold of `which` (default: every fold) that `store` lacks: `record(i)` trains and measures fold i
    and returns its record, written atomically as `store/fold<i>.json` with `recipe` (`fold_recipe`) as `cv_recipe`.
    A stored fold is kept where it records the same recipe or none (stores from before recipes were recorded);
    another recipe is refused, since pooling it would report the old recipe's figures under the new one's name.
    Returns every stored fold, in fold order."""
    store = Path(store)
    for path in sorted(store.glob("fold*.json")):  # all are pooled, not only those of `which`
        _check_recipe(path, recipe)
    for fold in which if which is not None else range(folds):
        if not 0 <= fold < folds:
            raise BadInputError(f"fold {fold} is outside 0..{folds - 1}", f"pick folds below {folds}")
        path = store / f"fold{fold}.json"
        if path.is_file():
            progress(f"fold {fold}: stored in {path}")
            continue
        atomic_write_json(path, {"fold": fold, "folds": folds, **record(fold),
                                 **({"cv_recipe": recipe} if recipe else {})})
    return stored_folds(store)


def _check_recipe(path: Path, recipe: list[dict] | None) -> None:
    stored = read_json(path).get("cv_recipe")
    if not (stored and recipe):
        return
    defaults = fold_recipe([RunConfig()])[0]
    stored = [_with_defaults(member, defaults) for member in stored]
    if stored == recipe:
        return
    changed = [f"{'' if len(recipe) == 1 else f'member {i}: '}{line}" for i, (old, new) in
               enumerate(zip(stored, recipe)) for line in config_differences(old, new)]
    if len(stored) != len(recipe):
        changed.append(f"{len(stored)} member(s) then, {len(recipe)} now")
    raise BadInputError(f"{path} was measured with another recipe ({'; '.join(changed)})",
                        "give this CV its own name (--set name=NAME, or --name), or delete the store's fold files "
                        "to run them again")


def _with_defaults(stored: dict, defaults: dict) -> dict:
    """`stored` (a recipe recorded by an earlier version of the suite) with the options added since at their
    defaults: a new option defaults to the behaviour it was added beside, so the folds it was measured with stand."""
    nested = lambda k, v: isinstance(v, dict) and isinstance(defaults.get(k), dict)  # noqa: E731
    return {**defaults, **{k: _with_defaults(v, defaults[k]) if nested(k, v) else v for k, v in stored.items()}}


def stored_folds(store: str | Path) -> list[dict]:
    """The fold records kept in `store`, in fold order (none: an empty list)."""
    return sorted((read_json(path) for path in Path(store).glob("fold*.json")), key=lambda f: f["fold"])


def complete(folds: Sequence[dict]) -> bool:
    """Whether `folds` (one store's records) hold every fold of their K-fold split."""
    return bool(folds) and len(folds) == folds[0]["folds"]


def check_one_split(folds: Sequence[dict]) -> None:
    """Refuse folds of different K, or the same fold twice: pooling them would test some items twice."""
    if len({f["folds"] for f in folds}) > 1 or len({f["fold"] for f in folds}) < len(folds):
        raise BadInputError(f"folds {[(f['fold'], f['folds']) for f in folds]} do not belong to one K-fold split",
                            "pool the folds of one --folds K run, each once")


def paired_items(folds: Sequence[dict], baseline: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(this recipe's item, the baseline recipe's item) for every test item both CVs have measured, matched and
    ordered by file (so the bootstrap's draws do not depend on fold order). Each CV tests every item once by a model
    that never saw it, so per-item differences compare two recipes with the spread between items taken out.
    Refused: an empty store, or CVs of different K (their models saw different shares)."""
    if not folds or not baseline:
        raise BadInputError("no stored folds to compare", "point --against at a CV store holding fold<i>.json files")
    if len({f["folds"] for f in [*folds, *baseline]}) > 1:
        raise BadInputError("the two recipes' folds come from different K-fold splits",
                            "compare cross-validations run with the same --folds K")
    mine = {item["file"]: item for f in folds for item in f["items"]}
    theirs = {item["file"]: item for f in baseline for item in f["items"]}
    return [(mine[file], theirs[file]) for file in sorted(mine.keys() & theirs.keys())]


def write_paired(store: Path, folds: Sequence[dict], against: str | Path, paired: Callable[..., dict],
                 table: Callable[[dict, str, str], str]) -> str:
    """`folds` (the CV in `store`) compared item by item with the CV stored in `against` by the task's `paired`
    rule, its `table` written as `store/paired_vs_<against>.md` and returned."""
    against = Path(against)
    text = table(paired(folds, stored_folds(against)), store.name, f"{against.parent.name}/{against.name}")
    atomic_write_text(store / f"paired_vs_{against.parent.name}_{against.name}.md", text)
    return text
