"""FETAL_PLANES_DB (Burgos-Artizzu et al. 2020, Zenodo 3904280): the label CSV with `Images/`, or the zip.

CSV: ';'-separated, columns Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train (the header says
`Train ` with a trailing space). Official split: Train=1 -> train (validation patients are carved from these),
Train=0 -> test. Groups are patients, so no patient is in two splits.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import BadInputError
from .images import ZIP_SEPARATOR
from .records import Record
from .tables import read_table

CSV_NAME = "FETAL_PLANES_DB_data.csv"
COLUMNS = ("Image_name", "Patient_num", "Plane", "Train")
LABEL_COLUMNS = ("Plane", "Brain_plane")


def read_fetal_planes(path: str | Path, label_column: str = "Plane", check_images: bool = True) -> list[Record]:
    """Records for every row of the CSV; `path` is the unpacked folder or the Zenodo zip."""
    if label_column not in LABEL_COLUMNS:
        raise BadInputError(f"label column {label_column!r} unknown", f"use one of {LABEL_COLUMNS}")
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        csv_bytes, image_of, names = _from_zip(path)
    elif path.is_dir():
        csv_path = path / CSV_NAME
        if not csv_path.is_file():
            raise BadInputError(f"{csv_path} not found", f"point to the folder holding {CSV_NAME} and Images/, or the zip")
        csv_bytes = csv_path.read_bytes()
        image_dir = path / "Images"
        image_of = lambda stem: str(image_dir / f"{stem}.png")  # noqa: E731
        names = {p.stem for p in image_dir.glob("*.png")} if image_dir.is_dir() else set()
    else:
        raise BadInputError(f"FETAL_PLANES_DB not found at {path}",
                            "download FETAL_PLANES_ZENODO.zip (Zenodo record 3904280) and give the zip or its folder")
    frame = read_table(csv_bytes, CSV_NAME, COLUMNS, sep=";")
    bad_split = sorted(set(frame["Train"]) - {"0", "1"})
    if bad_split:
        raise BadInputError(f"{CSV_NAME}: column Train has values {bad_split}", "Train must be 1 (train) or 0 (test)")
    if check_images:
        missing = [s for s in frame["Image_name"] if s not in names]
        if missing:
            raise BadInputError(f"{len(missing)} of {len(frame)} images listed in {CSV_NAME} are missing, e.g. "
                                f"{image_of(missing[0])}",
                                "unpack the whole Zenodo archive (Images/ beside the CSV) or give the zip itself")
    return [Record(source=image_of(row.Image_name), label=getattr(row, label_column), group=f"patient{row.Patient_num}",
                   split="train" if row.Train == "1" else "test",
                   extras={"operator": row.Operator, "machine": row.US_Machine} if "Operator" in frame else {})
            for row in frame.itertuples(index=False)]


def _from_zip(path: Path):
    archive = zipfile.ZipFile(path)
    members = archive.namelist()
    csv_members = [m for m in members if m.endswith(CSV_NAME)]
    if not csv_members:
        raise BadInputError(f"{path} holds no {CSV_NAME}", "give the FETAL_PLANES_ZENODO.zip archive from Zenodo")
    prefix = csv_members[0][: -len(CSV_NAME)]
    images = {m[len(prefix) + len("Images/"):-4] for m in members
              if m.startswith(prefix + "Images/") and m.endswith(".png")}
    image_of = lambda stem: f"{path}{ZIP_SEPARATOR}{prefix}Images/{stem}.png"  # noqa: E731
    return archive.read(csv_members[0]), image_of, images
