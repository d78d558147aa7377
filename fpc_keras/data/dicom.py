"""DICOM stills and cine loops through pydicom: the frames, and the pixel size the file states.

Ultrasound DICOM states its pixel size in `SequenceOfUltrasoundRegions` (PhysicalDeltaX/Y, in cm when the unit
code is 3) more often than in `PixelSpacing` (mm, row then column); either gives millimetres per pixel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import BadInputError

DECODE_HINT = ("re-encode it (e.g. ffmpeg -i in.avi out.mp4), or count and skip such files: --on-bad-input skip on the "
               "command line, data.on_bad_input=skip in a config")
CENTIMETRES = 3  # PhysicalUnitsXDirection code for cm


def open_dicom(path: str | Path):
    """The dataset of a DICOM file that holds pixels, or a BadInputError naming the file."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable DICOM file ({exc})", DECODE_HINT) from None
    if "PixelData" not in dataset:
        raise BadInputError(f"{path} is a DICOM file without pixel data",
                            "export the image or cine loop with its pixels (not a structured report or a header)")
    return dataset


def dicom_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Each frame as uint8 HxW or HxWxC (a still is one frame)."""
    dataset = open_dicom(path)
    try:
        pixels = dataset.pixel_array
    except Exception as exc:
        raise BadInputError(f"{path}: DICOM pixel data cannot be decoded ({exc})",
                            "install the decoder it names (e.g. pylibjpeg) or export uncompressed") from None
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) == 1:
        pixels = pixels[None]
    for frame in pixels:
        yield to_uint8(frame)


def dicom_pixel_mm(path: str | Path) -> float | None:
    """Millimetres per pixel from the file's ultrasound regions or PixelSpacing; None when it states none."""
    dataset = open_dicom(path)
    for region in getattr(dataset, "SequenceOfUltrasoundRegions", []) or []:
        dx, dy = getattr(region, "PhysicalDeltaX", None), getattr(region, "PhysicalDeltaY", None)
        if dx and dy and int(getattr(region, "PhysicalUnitsXDirection", 0)) == CENTIMETRES:
            return _square(path, 10 * abs(float(dx)), 10 * abs(float(dy)))
    spacing = getattr(dataset, "PixelSpacing", None)
    if spacing is not None and len(spacing) == 2:
        return _square(path, float(spacing[1]), float(spacing[0]))
    return None


def _square(path: str | Path, across: float, down: float) -> float:
    if across <= 0 or abs(across - down) > 1e-3 * across:
        raise BadInputError(f"{path} states pixels of {across:.4g} x {down:.4g} mm (across x down)",
                            "a circumference in mm needs square pixels: resample the image, or give --pixel-mm")
    return across


def to_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    frame = frame.astype(np.float64)
    low, high = frame.min(), frame.max()
    return ((frame - low) * (255.0 / (high - low) if high > low else 0)).astype(np.uint8)
