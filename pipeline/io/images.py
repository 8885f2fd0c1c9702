"""Decode an input image safely: size limits before decoding, every mode to RGB, EXIF orientation."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# We check the pixel count ourselves (before decoding) with a clear error row, so PIL's own
# decompression-bomb guard, which warns or raises at fixed sizes, is turned off.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 64_000_000  # 64 MP: above any camera photo we expect, far below a bomb


class BadImage(ValueError):
    """The input cannot be used as an image; the message is the reason in the error row."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes (JPEG, PNG, WebP, ...) to an upright RGB picture, or :class:`BadImage`."""
    if not data:
        raise BadImage("empty image: the image bytes are empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(
                    f"image too large: {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
    except BadImage:
        raise
    except Exception as e:  # PIL raises many types for bad data; all mean "not a usable image"
        raise BadImage(f"undecodable image: {type(e).__name__}: {e}") from None
    if image.width < 1 or image.height < 1:
        raise BadImage(f"image has no pixels: {image.width}x{image.height}")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency over white, 16/32-bit scaled rather than clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        span = max(values.max() - values.min(), 1e-12)
        return Image.fromarray(((values - values.min()) / span * 255.0).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
