import io
import struct
import zlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from fpc_keras.data.images import ImageSpec, fit_image, read_image, unfit_image
from fpc_keras.errors import BadInputError


def _png(array, mode=None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG") if mode else Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_modes_become_uint8_with_requested_channels(tmp_path):
    gray16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("P", (8, 8)).save(tmp_path / "palette.png")
    Image.new("L", (1, 1), 7).save(tmp_path / "one.png")  # no scan: refused (tests/test_bad_inputs.py)
    g16 = read_image(str(tmp_path / "g16.png"), 3)
    assert g16.dtype == np.uint8 and g16.shape == (64, 64, 3) and g16.max() == 255 and g16.min() == 0
    assert read_image(str(tmp_path / "rgba.png"), 3)[0, 0].tolist() == [200, 0, 0]
    assert read_image(str(tmp_path / "cmyk.jpg"), 3)[0, 0, 0] > 200  # CMYK (0,255,255,0) is red
    assert read_image(str(tmp_path / "palette.png"), 1).shape == (8, 8, 1)
    with pytest.raises(BadInputError, match="1x1 pixels, too small"):
        read_image(str(tmp_path / "one.png"), 3)


@pytest.mark.parametrize("content, words", [
    (b"", "empty (0-byte)"),
    (b"not an image at all", "cannot be decoded"),
])
def test_unreadable_files_name_the_file(tmp_path, content, words):
    path = tmp_path / "bad file é.png"
    path.write_bytes(content)
    with pytest.raises(BadInputError) as info:
        read_image(str(path))
    assert str(path) in str(info.value) and words in str(info.value)
    assert "data.on_bad_input=skip" in str(info.value)
    assert "BytesIO" not in str(info.value)  # the decoder's buffer means nothing to the user


def test_truncated_png(tmp_path):
    data = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="cannot be decoded"):
        read_image(str(path))


def test_missing_file():
    with pytest.raises(BadInputError, match="image file not found: /no/such.png"):
        read_image("/no/such.png")


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb), without the memory to build one."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_claiming(20000, 20000))
    with pytest.raises(BadInputError, match="too large to decode safely"):
        read_image(str(path))


def test_zip_member(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("Images/x.png", _png(np.full((9, 11), 9, np.uint8)))
    assert read_image(f"{archive}::Images/x.png", 1).shape == (9, 11, 1)
    with pytest.raises(BadInputError, match="not in"):
        read_image(f"{archive}::Images/y.png")


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch", "stretch_crop"])
def test_fit_and_unfit_round_trip(mode):
    image = np.zeros((60, 100, 1), np.uint8)
    image[20:40, 30:70] = 255
    fitted = fit_image(image, (32, 32), mode)
    assert fitted.shape == (32, 32, 1)
    back = unfit_image(fitted.astype(np.float32), (60, 100), mode)
    assert back.shape == (60, 100, 1)
    inside = back[25:35, 40:60].mean()
    assert inside > 150  # the bright box comes back where it was


def test_pad_keeps_aspect_and_centres():
    image = np.full((10, 40, 3), 200, np.uint8)
    fitted = fit_image(image, (40, 40), "pad")
    assert fitted[0, 20].sum() == 0 and fitted[20, 20, 0] == 200  # black bars top and bottom


def test_stretch_crop_is_the_256_to_224_protocol():
    image = np.zeros((300, 500, 1), np.uint8)
    image[:, 250:] = 255  # right half bright
    fitted = fit_image(image, (224, 224), "stretch_crop")
    # stretched to 256x256 then the central 224 kept: the bright half starts at column 128 - 16 = 112
    assert fitted[100, 110, 0] < 50 and fitted[100, 114, 0] > 200


def test_image_spec_loads_to_model_grid(tmp_path):
    Image.new("L", (50, 30), 100).save(tmp_path / "a.png")
    out = ImageSpec((16, 24), 3, "stretch").load(str(tmp_path / "a.png"))
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
