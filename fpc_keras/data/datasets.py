"""Dataset kinds and their readers: every kind returns a list of `Record`s; `KIND:PATH` names a dataset on the
command line. No TensorFlow here: the readers serve the trainer and the evaluator alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import BadInputError
from .csv_table import read_csv_dataset
from .duplicates import DEFAULT_DISTANCE, group_near_duplicates, resolve_mode
from .fetal_planes import read_fetal_planes
from .folders import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_folder, read_prefix
from .hc18 import read_hc18
from .records import Record, assign_folds, assign_splits, check_label_typos, keep_classes, validate_splits

KINDS = {
    "fetal_planes": "FETAL_PLANES_DB folder (CSV + Images/) or its Zenodo zip; official Train split",
    "folder": "one sub-folder per class",
    "prefix": "class = file-name prefix before the first '-' or '_' (case-insensitive, aliases allowed)",
    "csv": "a CSV listing path,label[,group][,split] (group = study/patient id; paths relative to the CSV)",
    "hc18": "HC18 layout: training_set/ + training_set_pixel_size_and_HC.csv",
    "videos": "video files, class by sub-folder (one per class) or else by file-name prefix; or a CSV of them "
              "(path,label[,group][,split], group = patient / source)",
}


def parse_data_spec(spec: str) -> tuple[str, str]:
    """`prefix:/data/abdomen` -> ("prefix", "/data/abdomen")."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS:
        raise BadInputError(f"data spec {spec!r} is not KIND:PATH with a known KIND",
                            "KIND is one of: " + "; ".join(f"{k} ({v})" for k, v in KINDS.items()))
    return kind, path


def read_dataset(kind: str, path: str | Path, aliases: dict[str, str] | None = None) -> list[Record]:
    """All records of a dataset, with official splits where the dataset has them."""
    if kind == "fetal_planes":
        return read_fetal_planes(path)
    if kind == "folder":
        return read_folder(path, IMAGE_EXTENSIONS, aliases=aliases)
    if kind == "prefix":
        return read_prefix(path, IMAGE_EXTENSIONS, aliases=aliases)
    if kind == "csv":
        return read_csv_dataset(path)
    if kind == "hc18":
        return read_hc18(path)
    if kind == "videos":
        return _read_videos(Path(path), aliases)
    raise BadInputError(f"unknown data kind {kind!r}", f"use one of {', '.join(KINDS)}")


def _read_videos(root: Path, aliases: dict[str, str] | None) -> list[Record]:
    """A CSV of videos (labels and patient / source ids), else class folders where the top-level sub-folders name
    classes with prefix-less files, else file-name prefixes."""
    if root.suffix.lower() == ".csv":
        records = read_csv_dataset(root)
        odd = [r.source for r in records if not r.source.lower().endswith(VIDEO_EXTENSIONS)]
        if odd:
            raise BadInputError(f"{root} lists {len(odd)} file(s) that are not videos, e.g. {odd[0]}",
                                f"list video files ({', '.join(VIDEO_EXTENSIONS)}), or use csv:{root} for images")
        return records
    try:
        return read_prefix(root, VIDEO_EXTENSIONS, group_rule="stem", aliases=aliases)
    except BadInputError:
        return read_folder(root, VIDEO_EXTENSIONS, group_rule="stem", aliases=aliases)


def read_records(kind: str, path: str | Path, aliases: dict[str, str] | None = None,
                 classes: Sequence[str] = ()) -> list[Record]:
    """Read, refuse label typos, keep `classes` (all when empty)."""
    records = read_dataset(kind, path, aliases)
    check_label_typos(records)
    return keep_classes(records, classes)


def prepare_records(kind: str, path: str | Path, val_fraction: float, test_fraction: float, seed: int,
                    aliases: dict[str, str] | None = None, folds: int = 0, fold: int = 0,
                    classes: Sequence[str] = (), duplicates: str = "auto",
                    distance: int = DEFAULT_DISTANCE, quota: str = "groups") -> list[Record]:
    """Read, then split by group (near-duplicates joined, official splits kept), checking that no group straddles
    splits."""
    records = read_records(kind, path, aliases, classes)
    return split_records(records, val_fraction, test_fraction, seed, folds, fold,
                         resolve_mode(duplicates, kind, records), distance, quota)


# The split rule of cards recorded before these keys existed: no near-duplicate grouping, quotas counted in groups,
# all training groups.
RULE_DEFAULTS = {"duplicates": "off", "duplicate_distance": DEFAULT_DISTANCE, "split_quota": "groups",
                 "train_fraction": 1.0}


def split_records(records: list[Record], val_fraction: float, test_fraction: float, seed: int, folds: int = 0,
                  fold: int = 0, duplicates: str = "off", distance: int = DEFAULT_DISTANCE,
                  quota: str = "groups") -> list[Record]:
    """Group K-fold (fold `fold` is test) or group fractions, over groups that join near-duplicate images
    (`duplicates`: phash, or off; `resolve_mode` decides `auto`), each split's share of a class counted in groups
    or items (`quota`, `records.assign_splits`); official splits kept; leaks refused."""
    if duplicates not in ("phash", "off"):
        raise ValueError(f"split_records takes a resolved duplicates mode, not {duplicates!r}")
    if duplicates == "phash":
        records = group_near_duplicates(records, distance)
    if folds:
        records = assign_folds(records, folds, fold, val_fraction, seed, quota)
    else:
        records = assign_splits(records, val_fraction, test_fraction, seed, quota=quota)
    validate_splits(records)
    return records
