"""Where several recipes' cross-validations of one dataset agree: the items every recipe gets wrong.

Each CV store tests every item once, by a model that never saw it. Across recipes on the same items, an item that
(nearly) every recipe gets wrong is not fixed by another recipe of the same kind: its share bounds what such a
search can still gain, and the list is where a label audit starts. Only complete CVs of one item set are compared.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import BadInputError
from . import check_one_split, complete, stored_folds

SHARES = (1.0, 0.8, 0.5)  # "wrong in at least this share of the runs"


@dataclass
class Agreement:
    runs: list[str]
    files: list[str]
    labels: list[str]
    predictions: np.ndarray  # (items, runs): the label each run's model gave each item

    @property
    def wrong(self) -> np.ndarray:
        return self.predictions != np.array(self.labels)[:, None]


def agreement(stores: Mapping[str, Sequence[dict]], model: str = "float") -> Agreement:
    """The `model` predictions (`float`, `int8`, ...) of every store (name -> its fold records) on the items they
    all test. Refused: fewer than two stores, a store whose folds do not cover one K-fold split, or stores of
    different item sets (another dataset, or a CV that has not finished)."""
    if len(stores) < 2:
        raise BadInputError(f"{len(stores)} CV store(s) given", "compare two or more stores of one dataset")
    by_run: dict[str, dict[str, dict]] = {}
    for name, folds in stores.items():
        check_one_split(folds)
        if not complete(folds):
            raise BadInputError(f"{name} holds {len(folds)} of {folds[0]['folds'] if folds else '?'} folds",
                                "compare CVs that have every fold")
        by_run[name] = {item["file"]: item for fold in folds for item in fold["items"]}
    first, *others = by_run
    for name in others:
        if by_run[name].keys() != by_run[first].keys():
            raise BadInputError(f"{name} and {first} test different items",
                                "compare CVs of the same dataset (the same files)")
    files = sorted(by_run[first])
    missing = [name for name, items in by_run.items() if model not in items[files[0]]]
    if missing:
        raise BadInputError(f"{', '.join(missing)} recorded no '{model}' predictions", "pick a model every store has")
    return Agreement(list(by_run), files, [by_run[first][f]["label"] for f in files],
                     np.array([[by_run[run][f][model] for run in by_run] for f in files]))


def store_agreement(stores: Mapping[str, Sequence[dict]], model: str = "float") -> Agreement:
    """`agreement` of CV stores read from disk (store folder -> its fold records), each named by its folder."""
    return agreement({Path(p).name.removesuffix("_quantisation"): folds for p, folds in stores.items()}, model)


def by_item_set(paths: Sequence[str | Path]) -> tuple[list[dict[str, list[dict]]], dict[str, str]]:
    """The finished classification CV stores among `paths` (each: folder -> its fold records, read once), grouped
    by the items they test (the group of most stores first), and why each other store was left out."""
    sets: dict[frozenset, dict[str, list[dict]]] = {}
    left_out = {}
    for path in map(str, paths):
        folds = stored_folds(path)
        if not complete(folds):
            left_out[path] = f"{len(folds)} fold(s) stored"
        elif not all("label" in item for fold in folds for item in fold["items"]):
            left_out[path] = "not a classification CV (no labels)"
        else:
            sets.setdefault(frozenset(item["file"] for fold in folds for item in fold["items"]), {})[path] = folds
    return sorted(sets.values(), key=len, reverse=True), left_out


def majority_vote(a: Agreement) -> list[str]:
    """Per item, the label most runs gave (ties: the earliest run's among the tied)."""
    return [Counter(row).most_common(1)[0][0] for row in a.predictions.tolist()]


def summary(a: Agreement) -> dict:
    """Per-run top-1, the majority vote's, and how many items are wrong in at least each share of the runs."""
    wrong, n = a.wrong, len(a.files)
    labels = np.array(a.labels)
    counted = {}
    for share in SHARES:
        hard = wrong.sum(axis=1) >= share * len(a.runs)
        counted[share] = {"items": int(hard.sum()), "by_label": dict(Counter(labels[hard].tolist()))}
    return {"items": n, "runs": a.runs,
            "top1": {run: float(1 - wrong[:, k].mean()) for k, run in enumerate(a.runs)},
            "vote_top1": float(np.mean(np.array(majority_vote(a)) == labels)),
            "right_in_every_run": int((~wrong).all(axis=1).sum()), "wrong_in_share": counted}


def hard_items(a: Agreement, share: float) -> list[dict]:
    """The items wrong in at least `share` of the runs: file, label, the label most runs gave, runs wrong."""
    wrong = a.wrong.sum(axis=1)
    vote = majority_vote(a)
    return [{"file": f, "label": label, "usual_prediction": vote[i], "runs_wrong": int(wrong[i]),
             "runs": len(a.runs)}
            for i, (f, label) in enumerate(zip(a.files, a.labels)) if wrong[i] >= share * len(a.runs)]


def summary_table(s: dict) -> str:
    """Markdown: one row per run, the vote, then the counts of items wrong in a share of the runs."""
    lines = ["| run | top-1 % |", "|---|---|"]
    lines += [f"| {run} | {100 * top1:.2f} |" for run, top1 in s["top1"].items()]
    right = s["right_in_every_run"]
    lines += [f"| majority vote of the {len(s['runs'])} runs | {100 * s['vote_top1']:.2f} |", "",
              f"| of {s['items']} items | items | % | by label |", "|---|---|---|---|",
              f"| right in every run | {right} | {100 * right / s['items']:.1f} | |"]
    for share, counted in s["wrong_in_share"].items():
        labels = ", ".join(f"{k} {v}" for k, v in sorted(counted["by_label"].items()))
        lines.append(f"| wrong in at least {share:.0%} of the runs | {counted['items']} | "
                     f"{100 * counted['items'] / s['items']:.1f} | {labels} |")
    return "\n".join(lines)
