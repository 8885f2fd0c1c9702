"""Decoding inputs: clear reasons for bad bytes, every mode to RGB, EXIF orientation, size limits."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.io.images import decode_image
from pipeline.row_errors import RowFailed as BadImage

from .data import encoded, truncated_jpeg


def save(picture: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty image"),
        (b"\x00" * 100, "undecodable image"),
        (np.random.default_rng(0).bytes(5000), "undecodable image"),
        (truncated_jpeg(), "undecodable image"),
        (b"GIF89a" + b"\x00" * 20, "undecodable image"),
    ],
)
def test_bad_bytes_give_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode_image(data)


def test_pixel_limit_is_checked_before_decoding():
    # A 4000x4000 PNG of one colour is a few kB: a small file that would decode to 48 MB.
    data = save(Image.new("RGB", (4000, 4000), "white"), "PNG")
    assert len(data) < 100_000
    with pytest.raises(BadImage, match="image too large: 4000x4000 = 16000000 pixels, over the limit of 1000000"):
        decode_image(data, max_pixels=1_000_000)
    assert decode_image(data, max_pixels=16_000_000).size == (4000, 4000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_formats(fmt):
    picture = decode_image(encoded(30, 50, fmt))
    assert picture.mode == "RGB" and picture.size == (50, 30)


def test_modes_become_rgb():
    gray = decode_image(save(Image.new("L", (8, 6), 100), "PNG"))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (100, 100, 100)
    cmyk = decode_image(save(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((3, 3))[0] > 200 and cmyk.getpixel((3, 3))[1] < 60


def test_transparency_goes_over_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    picture = decode_image(save(rgba, "PNG"))
    assert picture.getpixel((0, 0)) == (255, 255, 255)
    assert picture.getpixel((1, 1)) == (255, 0, 0)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((2, 2), 1)
    picture = decode_image(save(palette, "PNG", transparency=0))
    assert picture.getpixel((0, 0)) == (255, 255, 255) and picture.getpixel((2, 2)) == (0, 255, 0)


def test_16_bit_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    picture = decode_image(save(Image.fromarray(values), "PNG"))
    assert [picture.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_is_applied():
    picture = Image.new("RGB", (60, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    upright = decode_image(save(picture, "JPEG", exif=exif))
    assert upright.size == (20, 60)


def test_extreme_aspect_ratios_decode():
    assert decode_image(encoded(1, 4000)).size == (4000, 1)
    assert decode_image(encoded(1, 1)).size == (1, 1)


def test_importing_the_pipeline_leaves_pils_guard_alone():
    """Nothing changes process-wide state at import: PIL's decompression-bomb limit is raised only in
    decode's call path, and only to the limit the caller asked for."""
    import subprocess
    import sys

    script = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; import pipeline.cli, pipeline.stages.preprocess; "
              "assert Image.MAX_IMAGE_PIXELS == before, Image.MAX_IMAGE_PIXELS; "
              "from pipeline.io.images import decode_image; import io; b = io.BytesIO(); "
              "Image.new('RGB', (8, 8)).save(b, 'PNG'); decode_image(b.getvalue(), max_pixels=10**9); "
              "assert Image.MAX_IMAGE_PIXELS == 10**9; print('ok')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
