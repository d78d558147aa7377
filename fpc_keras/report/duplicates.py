"""The report's near-duplicate section: what `fpc-keras datasets KIND:PATH --duplicates --out reports/duplicates/
NAME.json` found in each dataset, with thumbnails of the largest clusters and of every cluster filed under two
labels, drawn from the dataset when it is on this machine (the JSON holds paths only, never pixels)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.datasets import parse_data_spec
from ..data.folders import VIDEO_EXTENSIONS
from ..data.images import read_image
from ..data.video import read_video
from ..io import read_json

THUMB = 64
SHOWN = 6  # clusters drawn per dataset, besides the mixed-label ones
PER_CLUSTER = 8


def duplicate_sections(folder: str | Path) -> list[dict]:
    """One section per `folder/*.json`: counts, and thumbnail strips where the dataset's images can be read."""
    sections = []
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        summary = read_json(path)
        root = Path(parse_data_spec(summary["data"])[1])
        clusters = summary["mixed_label_clusters"] + [c for c in summary["top_clusters"][:SHOWN]
                                                      if len(c["labels"]) == 1]
        strips = [{"labels": "/".join(c["labels"]), "size": len(c["items"]), "png": strip(root, c["items"])}
                  for c in clusters] if root.is_dir() else []
        sections.append({**summary, "name": path.stem, "root": str(root), "root_found": root.is_dir(),
                         "strips": strips})
    return sections


def strip(root: Path, items: list[str]) -> str:
    """The first images of a cluster side by side, as a PNG data URI."""
    canvas = Image.new("L", (THUMB * min(len(items), PER_CLUSTER), THUMB))
    for index, item in enumerate(items[:PER_CLUSTER]):
        canvas.paste(grey_thumbnail(root / item), (index * THUMB, 0))
    return png_uri(canvas)


def thumbnail_uri(path: str | Path) -> str:
    """One image, THUMB pixels a side in grey, as a PNG data URI."""
    return png_uri(grey_thumbnail(Path(path)))


def grey_thumbnail(path: Path) -> Image.Image:
    """An image, or a video's 8th frame (its first frames are often blank), THUMB pixels a side in grey."""
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return Image.fromarray(read_video(str(path), (THUMB, THUMB), 1, "pad", max_frames=8)[-1][..., 0])
    pixels = read_image(str(path), 1)[..., 0]
    return Image.fromarray(np.ascontiguousarray(pixels)).resize((THUMB, THUMB))


def png_uri(canvas: Image.Image) -> str:
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
