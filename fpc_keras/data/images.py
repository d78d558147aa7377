"""Image decoding and resizing with numpy and Pillow only (no TensorFlow).

The training pipeline, the evaluator and the TF-free edge runner all resize through `fit_image`, so a model sees
the same pixels wherever it runs. Every failure names the file and the fix.
"""
from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError

ZIP_SEPARATOR = "::"  # "archive.zip::member/path.png" addresses a file inside a zip without unpacking it
MAX_PIXELS = 100_000_000
MIN_SIDE = 8  # smaller is no scan (a thumbnail, a tracking pixel, a failed export)
SKIP_HINT = ("replace or remove the file, or count and skip such files: --on-bad-input skip on the command line, "
             "data.on_bad_input=skip in a config")


def read_bytes(source: str) -> bytes:
    """The bytes of a file, or of a member of a zip addressed as `archive.zip::member`."""
    if ZIP_SEPARATOR in source:
        archive, member = source.split(ZIP_SEPARATOR, 1)
        try:
            return _open_zip(archive).read(member)
        except KeyError:
            raise BadInputError(f"{member} is not in {archive}", "check the archive's contents") from None
    path = Path(source)
    if not path.is_file():
        raise BadInputError(f"image file not found: {source}", "check the path, or re-extract the dataset")
    return path.read_bytes()


@lru_cache(maxsize=8)
def _open_zip(archive: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BadInputError(f"cannot open zip archive {archive}: {exc}", "download the archive again") from None


def read_image(source: str, channels: int = 3) -> np.ndarray:
    """Decode any common image (8/16-bit, gray, RGB(A), palette, CMYK) to uint8 HxWxC with C = `channels`
    (0: as decoded, 1 for gray and 3 for colour)."""
    data = read_bytes(source)
    if not data:
        raise BadInputError(f"{source} is an empty (0-byte) file", SKIP_HINT)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadInputError(f"{source} is {width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit",
                                    "downsize the image before training, or " + SKIP_HINT)
            if min(width, height) < MIN_SIDE:
                raise BadInputError(f"{source} is {width}x{height} pixels, too small to be a scan (under "
                                    f"{MIN_SIDE} pixels a side)", SKIP_HINT)
            image.load()
            array = _to_uint8(image)
    except BadInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise BadInputError(f"{source} is too large to decode safely ({exc})",
                            "downsize the image before training, or " + SKIP_HINT) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(f"{source} cannot be decoded as an image ({_reason(exc)})", SKIP_HINT) from None
    if array.ndim == 2:
        array = array[:, :, None]
    if channels == 0:  # as decoded: gray stays one channel
        return np.ascontiguousarray(array)
    if channels == 1 and array.shape[2] == 3:
        array = np.asarray(Image.fromarray(array).convert("L"))[:, :, None]
    elif channels == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def image_size_of(source: str) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    try:
        with Image.open(io.BytesIO(read_bytes(source))) as image:
            return image.size[1], image.size[0]
    except (UnidentifiedImageError, OSError) as exc:
        raise BadInputError(f"{source} cannot be decoded as an image ({_reason(exc)})", SKIP_HINT) from None


def _reason(exc: Exception) -> str:
    """The decoder's message without the in-memory buffer it names (`<_io.BytesIO object at 0x...>`)."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))


def _to_uint8(image: Image.Image) -> np.ndarray:
    """Gray stays one channel, colour becomes RGB; 16-bit and float images are scaled by their own range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return ((array - low) * scale).round().astype(np.uint8)
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L"))
    if image.mode in ("LA", "RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, image).convert("RGB"))
    return np.asarray(image.convert("RGB"))


CROP_FRACTION = 0.875  # 224 of 256: the ImageNet evaluation crop, and Cheng & Malhi's protocol


def as_channels(frame: np.ndarray, channels: int) -> np.ndarray:
    """HxW or HxWxC (C = 1, 3 or 4) pixels with `channels` (1: luma, 3: gray copied) as HxWx`channels`."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if channels == 3 and frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    if channels == 1 and frame.shape[2] == 3:
        return np.round(frame @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[:, :, None]
    return np.ascontiguousarray(frame)


def _geometry(source: tuple[int, int], size: tuple[int, int], mode: str) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top): the source is resized, then placed at (left, top) on the
    output canvas (negative offsets crop). `pad` keeps aspect with black bars, `crop` keeps aspect and
    centre-crops, `stretch` ignores aspect, `stretch_crop` stretches to size / 0.875 and centre-crops."""
    (src_h, src_w), (height, width) = source, size
    if mode == "stretch":
        new_w, new_h = width, height
    elif mode == "stretch_crop":
        new_w, new_h = round(width / CROP_FRACTION), round(height / CROP_FRACTION)
    else:
        scale = (min if mode == "pad" else max)(height / src_h, width / src_w)
        new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    return new_w, new_h, (width - new_w) // 2, (height - new_h) // 2


def fit_image(array: np.ndarray, size: tuple[int, int], mode: str = "pad",
              resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize HxWxC uint8 to `size` (height, width) by `mode` (see `_geometry`)."""
    height, width = size
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    new_w, new_h, left, top = _geometry(array.shape[:2], size, mode)
    resized = image.resize((new_w, new_h), resample)
    out = Image.new(resized.mode, (width, height))
    out.paste(resized, (left, top))
    result = np.asarray(out)
    return result[:, :, None] if result.ndim == 2 else result


@dataclass(frozen=True)
class ImageSpec:
    """What the model expects: (height, width), channels, resize mode. Travels with the model (its card)."""
    size: tuple[int, int]
    channels: int = 3
    resize: str = "pad"

    @classmethod
    def from_card(cls, card: dict) -> "ImageSpec":
        """The spec a model card's `preprocessing` records."""
        pre = card["preprocessing"]
        return cls(tuple(pre["image_size"]), pre["channels"], pre["resize"])

    def load(self, source: str) -> np.ndarray:
        """Decode and resize one image to the model's input grid (uint8; the model takes it as float 0-255).
        A gray image is resized as one channel and then copied to three: the same pixels, a third of the work."""
        fitted = fit_image(read_image(source, 0 if self.channels == 3 else self.channels), self.size, self.resize)
        return np.repeat(fitted, 3, axis=2) if self.channels == 3 and fitted.shape[2] == 1 else fitted


def unfit_image(array: np.ndarray, original: tuple[int, int], mode: str = "pad",
                resample: int = Image.BILINEAR) -> np.ndarray:
    """Map a model-size HxW(xC) array (a mask or heat map) back onto the original image's pixel grid:
    the inverse of `fit_image` (padding removed, or the cropped margin left at zero)."""
    squeeze = array.ndim == 2
    plane = array.astype(np.float32) if squeeze else array[:, :, 0].astype(np.float32)
    new_w, new_h, left, top = _geometry(original, array.shape[:2], mode)
    canvas = Image.new("F", (new_w, new_h))
    canvas.paste(Image.fromarray(plane, mode="F"), (-left, -top))
    out = np.asarray(canvas.resize((original[1], original[0]), resample))
    return out if squeeze else out[:, :, None]
