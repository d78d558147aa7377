"""The one kind of record every reader returns, and the splits built from them.

A Record is one item: an image, an image with a mask, or a video. `group` is the unit that must never straddle
splits (patient, study, subject, video source); readers without such ids use one group per file.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from ..errors import BadInputError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    source: str
    label: str | None
    group: str
    split: str | None = None
    extras: dict = field(default_factory=dict, compare=False, hash=False)


def labels_of(records: Iterable[Record]) -> list[str]:
    """Sorted class names: the label index is the position in this list."""
    return sorted({r.label for r in records if r.label is not None})


def keep_classes(records: Sequence[Record], classes: Sequence[str], require_all: bool = True) -> list[Record]:
    """Only the records of `classes` (all when empty): a study of some classes of a dataset. With `require_all`
    (training), a named class the data lacks is refused: a typo would otherwise silently leave a class out."""
    if not classes:
        return list(records)
    present = set(labels_of(records))
    missing = sorted(set(classes) - present)
    if missing and require_all:
        raise BadInputError(f"data.classes names {missing}, which the data does not hold (classes: {sorted(present)})",
                            "name classes as the data spells them (after data.aliases), or leave data.classes empty")
    return [r for r in records if r.label in set(classes)]


def in_split(records: Sequence[Record], split: str | None) -> list[Record]:
    if split is None:
        return list(records)
    chosen = [r for r in records if r.split == split]
    if not chosen:
        counts = Counter(r.split for r in records)
        raise BadInputError(f"the {split!r} split is empty (splits present: {dict(counts)})",
                            "choose another --split, or give the data a split (data.val_fraction, data.test_fraction)")
    return chosen


def check_label_typos(records: Sequence[Record], ratio: float = 0.8, rare: float = 0.1) -> None:
    """Refuse a label that is rare (at most `rare` of another label's count) and spelt almost like that label
    (difflib similarity >= `ratio`, case-insensitive): `kidnye` beside 200 `kidney` is a typo, not a class."""
    import difflib

    counts = Counter(str(r.label) for r in records if r.label is not None)
    for label, count in sorted(counts.items(), key=lambda item: item[1]):
        for other, other_count in counts.items():
            similar = difflib.SequenceMatcher(None, label.lower(), other.lower()).ratio() >= ratio
            if other != label and similar and count <= rare * other_count:
                example = next(r.source for r in records if str(r.label) == label)
                raise BadInputError(f"label {label!r} ({count} item(s), e.g. {example}) looks like a typo of "
                                    f"{other!r} ({other_count} items)",
                                    f"correct it in the data, or map it with --alias {label}={other} "
                                    f"(config: data.aliases)")


def validate_splits(records: Sequence[Record]) -> None:
    """No group (patient, study, source) may appear in two splits."""
    splits_of: dict[str, set] = defaultdict(set)
    for record in records:
        if record.split is not None:
            splits_of[record.group].add(record.split)
    leaked = sorted(g for g, s in splits_of.items() if len(s) > 1)
    if leaked:
        shown = ", ".join(f"{g} ({'/'.join(sorted(splits_of[g]))})" for g in leaked[:20])
        more = f" and {len(leaked) - 20} more" if len(leaked) > 20 else ""
        near = [g for g in leaked if g.startswith("near:")]
        fix = "split by patient/study id so that each group lies in one split only"
        if near:
            fix = (f"{len(near)} of them join near-duplicate images (`fpc-keras datasets KIND:PATH --duplicates` "
                   "lists them): put each cluster in one split, remove the copies, or " + fix)
        raise BadInputError(f"{len(leaked)} group(s) appear in more than one split: {shown}{more}", fix)


def assign_splits(records: Sequence[Record], val_fraction: float, test_fraction: float, seed: int = 0,
                  keep_existing: bool = True, quota: str = "groups") -> list[Record]:
    """Give every record a split by whole groups, stratified by each group's majority label.

    Records that already have a split (an official one) keep it where `keep_existing`; then, unless some record
    is already `val` (a given validation split is used as it is), the records of the `train` split are divided
    into train and val (validation carved from the training groups). `quota`: whether a split's fraction of a
    label counts its groups, or its items (see `_take`).
    """
    if keep_existing and any(r.split == "val" for r in records):
        return list(records)
    if keep_existing and any(r.split for r in records):
        train = [r for r in records if r.split == "train"]
        others = [r for r in records if r.split != "train"]
        return others + _divide(train, {"val": val_fraction}, seed, quota)
    return _divide(list(records), {"test": test_fraction, "val": val_fraction}, seed, quota)


def _divide(records: list[Record], fractions: dict[str, float], seed: int, quota: str = "groups") -> list[Record]:
    """Split whole groups off `records`, per majority label, into the named splits; the rest is train."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[record.group].append(record)
    by_label = _groups_by_majority_label(groups)
    rng = random.Random(seed)
    split_of: dict[str, str] = {}
    for label in sorted(by_label):
        names = sorted(by_label[label])
        rng.shuffle(names)
        sizes = {name: len(groups[name]) if quota == "items" else 1 for name in names}
        total = sum(sizes.values())
        for split, fraction in fractions.items():
            taken = set(_take(names, sizes, fraction * total) if fraction > 0 else [])
            for name in taken:
                split_of[name] = split
            names = [name for name in names if name not in taken]
        for name in names:
            split_of[name] = "train"
    return [replace(r, split=split_of[r.group]) for r in records]


def _groups_by_majority_label(groups: dict[str, list[Record]]) -> dict[str, list[str]]:
    """Each group's name under its members' most common label: a class's groups, for splits and fractions."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for group, members in groups.items():
        majority = Counter(str(r.label) for r in members).most_common(1)[0][0]
        by_label[majority].append(group)
    return by_label


def _take(names: list[str], sizes: dict[str, int], share: float) -> list[str]:
    """Groups from the front of `names` (shuffled) while their sizes fit round(`share`), at least one where more
    than one is left. Sizes 1 (quota by groups): the first round(share) groups. Sizes in items: a group larger
    than what is left of the share is passed over, so one large group (a sweep's frames, a patient's many scans)
    cannot fill a split, nor empty the training split of its class."""
    quota = max(int(round(share)), 1 if len(names) > 1 else 0)
    taken, filled = [], 0
    for name in names:
        if filled + sizes[name] <= quota:
            taken.append(name)
            filled += sizes[name]
    return taken


def assign_folds(records: Sequence[Record], folds: int, fold: int, val_fraction: float, seed: int = 0,
                 quota: str = "groups") -> list[Record]:
    """Group K-fold: fold `fold` is the test split, validation carved from the remaining groups."""
    groups = sorted({r.group for r in records})
    if len(groups) < folds:
        raise BadInputError(f"{len(groups)} groups cannot make {folds} folds", "use fewer folds (data.folds)")
    random.Random(seed).shuffle(groups)
    test_groups = set(groups[fold::folds])
    marked = [replace(r, split="test" if r.group in test_groups else "train") for r in records]
    return assign_splits(marked, val_fraction, 0.0, seed, quota=quota)


def keep_training_fraction(records: Sequence[Record], fraction: float, seed: int) -> list[Record]:
    """A learning curve's point: the training split cut to `fraction` of each class's training groups (a group
    counted under its majority label, as the splits are stratified; at least one a class; drawn with `seed`).
    Validation and test are untouched, so every fraction is measured on the same items."""
    if fraction >= 1:
        return list(records)
    training: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.split == "train":
            training[r.group].append(r)
    by_label = _groups_by_majority_label(training)
    rng = random.Random(seed)
    kept = set()
    for label in sorted(by_label):
        groups = sorted(by_label[label])
        kept.update(rng.sample(groups, max(1, round(fraction * len(groups)))))
    return [r for r in records if r.split != "train" or r.group in kept]


def split_counts(records: Sequence[Record]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        counts[str(record.split)][str(record.label)] += 1
    return {split: dict(sorted(c.items())) for split, c in sorted(counts.items())}
