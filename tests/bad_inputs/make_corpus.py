"""Writes the bad-input corpus beside this file (committed; rerun to regenerate): files from scanners and archives
that break naive readers. `EXPECTED` in tests/test_bad_inputs.py says what each must give."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def scan(size: int = 48, seed: int = 0) -> np.ndarray:
    """A gray, ultrasound-like 8-bit image: speckle in a fan."""
    rng = np.random.default_rng(seed)
    image = rng.gamma(2.0, 40.0, (size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    image[np.abs(xx - size / 2) > (yy + 4) * 0.6] = 0
    return image.clip(0, 255).astype(np.uint8)


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    Image.fromarray(scan()).save(png, "PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (folder / "zero_byte.png").write_bytes(b"")
    Image.fromarray(scan().astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    rgba = np.dstack([np.repeat(scan()[..., None], 3, axis=2), np.full((48, 48), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.repeat(scan()[..., None], 3, axis=2)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.new("1", (20000, 20000)).save(folder / "huge_20000x20000.png", optimize=True)
    Image.new("L", (1, 1), 200).save(folder / "one_pixel.png")
    Image.fromarray(scan(seed=1)).save(folder / "scan with spaces é ü.png")


def write_tables(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "path,label,group\nimg/a.png,liver,s1\nimg/b.png,kidney,s2\n"
    (folder / "utf16.csv").write_bytes(rows.encode("utf-16"))  # Excel's "Unicode text": read
    (folder / "undecodable.csv").write_bytes(rows.encode() + b"img/\x81\x8d.png,liver,s3\n")  # no text encoding
    (folder / "wrong_delimiter.csv").write_text(rows.replace(",", " "))
    (folder / "duplicate_rows.csv").write_text(rows + "img/a.png,liver,s1\nimg/a.png,liver,s1\n")
    typos = "path,label,group\n" + "".join(f"img/a.png,liver,s{i}\n" for i in range(20)) + \
        "".join(f"img/b.png,kidney,k{i}\n" for i in range(20)) + "img/b.png,kidnye,k99\n"
    (folder / "label_typo.csv").write_text(typos)
    (folder / "img").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(scan()).save(folder / "img" / name)


def write_videos(folder: Path) -> None:
    from test_video import _frames, write_dicom, write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    write_mp4(folder / "zero_frames.mp4", _frames(1))
    data = (folder / "zero_frames.mp4").read_bytes()
    (folder / "zero_frames.mp4").write_bytes(data[: len(data) // 3])  # the header survives, no frame does
    write_dicom(folder / "no_pixel_data.dcm", _frames(), with_pixels=False)


if __name__ == "__main__":
    write_images(HERE / "images")
    write_tables(HERE / "tables")
    write_videos(HERE / "videos")
    print(f"corpus written under {HERE}")
