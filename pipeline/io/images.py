"""Decode an input image safely: size limits before decoding, every mode to RGB, EXIF orientation."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..row_errors import ErrorKind, RowFailed

DEFAULT_MAX_PIXELS = 64_000_000  # 64 MP: above any camera photo we expect, far below a bomb


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes (JPEG, PNG, WebP, ...) to an upright RGB picture, or :class:`RowFailed` saying why not.

    The pixel count is checked against ``max_pixels`` from the header, before decoding; PIL's own
    decompression-bomb guard (it refuses pictures over twice its limit at open) is raised to
    ``max_pixels`` where that is larger, so ours is the limit that applies."""
    if not data:
        raise RowFailed(ErrorKind.EMPTY_IMAGE, "the image bytes are empty")
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's bomb warnings: our limit is checked here instead
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise RowFailed(ErrorKind.IMAGE_TOO_LARGE,
                                f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
    except RowFailed:
        raise
    except Image.DecompressionBombError as e:  # over twice PIL's limit, which is not above ours: over ours too
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{pixels.group(1)} pixels" if pixels else str(e)
        raise RowFailed(ErrorKind.IMAGE_TOO_LARGE, f"{size}, over the limit of {max_pixels}") from None
    except Exception as e:  # PIL raises many types for bad data; all mean "not a usable image"
        raise RowFailed(ErrorKind.UNDECODABLE_IMAGE, f"{type(e).__name__}: {e}") from None
    if image.width < 1 or image.height < 1:
        raise RowFailed(ErrorKind.NO_PIXELS, f"{image.width}x{image.height}")
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
