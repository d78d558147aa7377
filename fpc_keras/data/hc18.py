"""HC18 (van den Heuvel et al. 2018, Zenodo 1327317): images, ellipse outlines -> filled masks, pixel sizes, HC.

Layout: `training_set/NNN_HC.png`, `training_set/NNN_HC_Annotation.png` (an outline, not filled) and
`training_set_pixel_size_and_HC.csv`; `test_set/` with `test_set_pixel_size.csv` has no annotations.
Several images of one subject (`010_HC.png`, `010_2HC.png`) share the group `010`.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..biometry import ellipse_from_outline, ellipse_mask
from ..errors import BadInputError
from .images import read_bytes
from .records import Record
from .tables import read_table

SETS = {"training_set": "training_set_pixel_size_and_HC.csv", "test_set": "test_set_pixel_size.csv"}
SUBJECT = re.compile(r"^(\d+)")


def read_hc18(root: str | Path) -> list[Record]:
    """Records for every image listed in the HC18 CSVs present under `root`."""
    root = Path(root)
    found = [(folder, csv) for folder, csv in SETS.items() if (root / csv).is_file()]
    if not found:
        raise BadInputError(f"no HC18 CSV ({' or '.join(SETS.values())}) in {root}",
                            "give the HC18 folder that holds training_set/ and its CSV")
    records = []
    for folder, csv_name in found:
        frame = read_table((root / csv_name).read_bytes(), str(root / csv_name), ("filename", "pixel size(mm)"))
        for row in frame.to_dict("records"):
            records.append(_record(root / folder, row))
    return records


def _record(folder: Path, row: dict) -> Record:
    name = row["filename"]
    image = folder / name
    if not image.is_file():
        raise BadInputError(f"{image} is listed in the HC18 CSV but missing", "restore the file or remove its row")
    annotation = folder / name.replace(".png", "_Annotation.png")
    extras = {"pixel_mm": _number(row["pixel size(mm)"], name)}
    if row.get("head circumference (mm)"):
        extras["hc_mm"] = _number(row["head circumference (mm)"], name)
    if annotation.is_file():
        extras["mask"] = str(annotation)
    match = SUBJECT.match(name)
    return Record(str(image), None, match.group(1) if match else name, extras=extras)


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadInputError(f"HC18 CSV row {name}: {text!r} is not a number", "fix the CSV value") from None


def read_mask(annotation: str) -> np.ndarray:
    """The expert's outline -> a filled ellipse mask (bool, image size). Outlines cut by the image border are
    completed by the fit, which a flood fill would get wrong."""
    try:
        outline = np.asarray(Image.open(io.BytesIO(read_bytes(annotation))).convert("L"))
        return ellipse_mask(outline.shape, ellipse_from_outline(outline))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"annotation {annotation} cannot be turned into a mask: {exc}",
                            "check that it is the HC18 outline PNG") from None
