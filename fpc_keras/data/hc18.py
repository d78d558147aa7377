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
from ..io import atomic_write_text
from .images import read_bytes
from .records import Record
from .sweeps import PLANE_LABELS
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
    return Record(str(image), PLANE_LABELS[0], match.group(1) if match else name, extras=extras)


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


CHALLENGE_COLUMNS = ("filename", "center_x_mm", "center_y_mm", "semi_axes_a_mm", "semi_axes_b_mm", "angle_rad")


def challenge_rows(items: list[dict]) -> list[dict]:
    """Evaluated items (with `ellipse` [cx, cy, a, b, angle] in pixels and `pixel_mm`) -> rows of the HC18
    challenge's result CSV: centre and semi-axes in mm, angle in radians; items without an ellipse get empty
    cells (the challenge scores them as failures)."""
    rows = []
    for item in items:
        row = {"filename": Path(item["source"]).name}
        ellipse, pixel_mm = item.get("ellipse"), item.get("pixel_mm")
        if ellipse and pixel_mm:
            cx, cy, a, b, angle = ellipse
            row.update(center_x_mm=cx * pixel_mm, center_y_mm=cy * pixel_mm, semi_axes_a_mm=a * pixel_mm,
                       semi_axes_b_mm=b * pixel_mm, angle_rad=angle)
        rows.append({key: row.get(key, "") for key in CHALLENGE_COLUMNS})
    return rows


def write_challenge_csv(path: str | Path, items: list[dict]) -> Path:
    """Write the HC18 challenge result CSV (one row per evaluated image) atomically."""
    import csv

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CHALLENGE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in challenge_rows(items):
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())
    return Path(path)
