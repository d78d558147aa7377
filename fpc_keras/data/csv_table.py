"""A labelled image list in a CSV: one row per image, with its class and, ideally, its study / patient id.

Columns (names compared case-insensitively): `path` (or `image`, `file`, `filename`), `label` (or `class`),
optional `group` (or `study`, `patient`, `study_id`, `patient_id`), optional `split` (train / val / test).
Paths are relative to the CSV's folder unless absolute. Rows without a group become their own group.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from .records import SPLITS, Record
from .tables import one_column_hint, read_table

ALIASES = {"path": ("path", "image", "file", "filename"), "label": ("label", "class"),
           "group": ("group", "study", "patient", "study_id", "patient_id"), "split": ("split",)}


def read_csv_dataset(csv_path: str | Path) -> list[Record]:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise BadInputError(f"CSV file not found: {csv_path}", "give the path of the label CSV (csv:PATH.csv)")
    frame = read_table(csv_path.read_bytes(), str(csv_path), ())
    columns = {_canonical(c): c for c in frame.columns if _canonical(c)}
    missing = [name for name in ("path", "label") if name not in columns]
    if missing:
        raise BadInputError(f"{csv_path} has no {' or '.join(missing)} column (it has {list(frame.columns)})",
                            "name the columns path,label[,group][,split] (aliases: image/file, class, study/patient)"
                            + one_column_hint(list(frame.columns)))
    records = []
    for number, row in enumerate(frame.to_dict("records"), start=2):
        source = Path(row[columns["path"]])
        source = source if source.is_absolute() else csv_path.parent / source
        split = row.get(columns.get("split", ""), "") or None
        if split is not None and split not in SPLITS:
            raise BadInputError(f"{csv_path} line {number}: split {split!r}", f"use one of {SPLITS} or leave it empty")
        group = row.get(columns.get("group", ""), "") or source.name
        records.append(Record(str(source), row[columns["label"]], str(group), split))
    if not records:
        raise BadInputError(f"{csv_path} has no rows", "add one row per image")
    missing_files = [r.source for r in records if not Path(r.source).is_file()]
    if missing_files:
        raise BadInputError(f"{len(missing_files)} image(s) listed in {csv_path} are missing, e.g. {missing_files[0]}",
                            "fix the paths (relative to the CSV's folder) or remove those rows")
    return records


def _canonical(column: str) -> str | None:
    name = column.strip().lower()
    return next((key for key, names in ALIASES.items() if name in names), None)
