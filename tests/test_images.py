"""countclip.images: one decoder for every image the system reads, and pixel normalisation."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from countclip.images import ImageError, decode_image, normalize, open_image, read_image_file


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _huge_png_header(side: int) -> bytes:
    """A PNG whose header claims side x side pixels (the data after it is irrelevant: never decoded)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat)))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"<html><body>404</body></html>", "not_an_image"),
    (_png(Image.new("RGB", (32, 32), "red"))[:60], "corrupt_image"),
    (_huge_png_header(20_000), "too_many_pixels"),  # 400 MP: PIL's bomb check
    (_huge_png_header(7_000), "too_many_pixels"),  # 49 MP: over the 40 MP default
])
def test_bad_bytes_get_a_reason(data, reason):
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.reason == reason and str(info.value)


def test_decoded_images_are_rgb_and_upright():
    grey = _png(Image.new("L", (8, 4), 200))
    assert decode_image(grey).mode == "RGB" and decode_image(grey).size == (8, 4)
    rotated = Image.new("RGB", (8, 4), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    buffer = io.BytesIO()
    rotated.save(buffer, "JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (4, 8)


def test_pixel_cap_is_a_parameter():
    data = _png(Image.new("RGB", (100, 100)))
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageError, match="more than the 9,999 allowed"):
        decode_image(data, max_pixels=9_999)


def test_files_are_read_only_when_regular(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png(Image.new("RGB", (5, 5))))
    assert read_image_file(path).size == (5, 5)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        read_image_file(fifo)  # would block forever if opened
    with pytest.raises(FileNotFoundError):
        read_image_file(tmp_path)
    with pytest.raises(ImageError, match="larger than 10 bytes"):
        read_image_file(path, max_bytes=10)


def test_open_image_names_what_is_wrong(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png is not a readable image"):
        open_image(tmp_path / "notes.png")
    with pytest.raises(ValueError, match="does not exist"):
        open_image(str(tmp_path / "none.png"))
    with pytest.raises(ValueError, match=r"<3 bytes> is not a readable image"):
        open_image(b"abc")
    with pytest.raises(ValueError, match="got int"):
        open_image(3)
    assert open_image(Image.new("L", (2, 2))).mode == "RGB"


def test_normalize_standardises_channels():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.4, 0.8)
    out = normalize(pixels, mean, std)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    expected = (torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).view(1, 3, 1, 1).double()) \
        / torch.tensor(std).view(1, 3, 1, 1).double()
    assert torch.allclose(out.double(), expected, atol=1e-5)
