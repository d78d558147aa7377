"""Class-per-folder and class-from-file-name-prefix readers, for images and for videos.

Prefix rule: the class is the part of the file name before the first '-' or '_', compared case-insensitively,
then mapped through an alias table (e.g. {"pneu": "pne"}). Labels are lower-case.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import BadInputError
from .records import Record

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".gif", ".webm", ".mkv", ".m4v", ".dcm")
PREFIX_PATTERN = re.compile(r"^([^-_]+)[-_]")
TRAILING_NUMBER = re.compile(r"[\W_]*\(?\d+\)?\W*$")


def prefix_label(name: str, aliases: dict[str, str] | None = None) -> str | None:
    """`Bowel--0056.png` -> `bowel`; None where the name has no '-' or '_' after a prefix."""
    match = PREFIX_PATTERN.match(Path(name).name)
    if not match:
        return None
    label = match.group(1).strip().lower()
    table = {k.lower(): v.lower() for k, v in (aliases or {}).items()}
    return table.get(label, label)


def group_of(path: Path, rule: str) -> str:
    """`file`: each file its own group; `stem`: files whose names differ only by a trailing number share one
    (`Cov_combatting_Image1.mp4`, `..._Image2.mp4` -> one source), so clips of one source stay together."""
    if rule == "file":
        return path.name
    stem = TRAILING_NUMBER.sub("", path.stem)
    return stem or path.stem


def files_under(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """The files under `root` (any depth, hidden ones left out) whose suffix is one of `extensions`, sorted."""
    if not root.is_dir():
        raise BadInputError(f"dataset folder not found: {root}", "give the folder that holds the images or videos")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                  and not p.name.startswith("."))


def read_folder(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, group_rule: str = "file",
                aliases: dict[str, str] | None = None) -> list[Record]:
    """One sub-folder per class (files in deeper folders belong to their top-level class folder)."""
    root = Path(root)
    table = {k.lower(): v.lower() for k, v in (aliases or {}).items()}
    records = []
    for path in files_under(root, extensions):
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            continue
        label = relative.parts[0].lower()
        label = table.get(label, label)
        records.append(Record(str(path), label, f"{label}/{group_of(path, group_rule)}"))
    return _non_empty(records, root, "one sub-folder per class (e.g. benign/, malignant/)", extensions)


def read_prefix(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, group_rule: str = "file",
                aliases: dict[str, str] | None = None) -> list[Record]:
    """Files anywhere under `root`, class from the file-name prefix."""
    root = Path(root)
    records, unlabeled = [], []
    for path in files_under(root, extensions):
        label = prefix_label(path.name, aliases)
        if label is None:
            unlabeled.append(path.name)
            continue
        records.append(Record(str(path), label, f"{label}/{group_of(path, group_rule)}"))
    if unlabeled:
        raise BadInputError(f"{len(unlabeled)} file(s) in {root} have no class prefix, e.g. {unlabeled[:3]}",
                            "name files CLASS-xxx or CLASS_xxx, or use a class-per-folder layout (folder:PATH)")
    return _non_empty(records, root, "files named CLASS-xxx.png or CLASS_xxx.png", extensions)


def _non_empty(records: list[Record], root: Path, layout: str, extensions: tuple[str, ...]) -> list[Record]:
    if not records:
        raise BadInputError(f"no labelled files ({', '.join(extensions)}) found in {root}", f"expected {layout}")
    return records
