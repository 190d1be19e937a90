"""Reading image files: which files count as images, checking them, and decoding to 8-bit RGB.

Training needs plain 8-bit RGB. Files come in many modes (alpha, palette, 16-bit, CMYK, float) and with EXIF
orientation; each is converted here so that what the model sees is what an image viewer shows.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".webp")

# EXIF orientations 5-8 rotate by 90 degrees, so the displayed width and height swap.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}

_WHITE = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# Images whose header claims more pixels than this are refused before decoding: a decompression bomb (a tiny
# file that expands to gigabytes) or far beyond any training size. Pillow's own default limit, fixed here so a
# change of Pillow's global setting elsewhere does not switch the check off.
MAX_IMAGE_PIXELS = 89_478_485
_PILLOW_PIXEL_COUNT = re.compile(r"\((\d+) pixels\)")


class ImageTooLarge(Exception):
    """The header claims more than MAX_IMAGE_PIXELS; nothing was decoded."""


def is_image_file(path: Path) -> bool:
    """True when the file name has an accepted image extension (any letter case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def decoded_size(path: Path) -> tuple[int, int]:
    """Fully decode the file (so truncated data is caught now, not mid-training) and return its displayed
    (width, height), that is after EXIF orientation. Raises ImageTooLarge, before decoding, when the header
    claims more than MAX_IMAGE_PIXELS, and whatever Pillow raises for a bad file."""
    try:
        opened = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as error:  # Pillow refuses above twice its limit, saying how many pixels
        claimed = _PILLOW_PIXEL_COUNT.search(str(error))
        raise ImageTooLarge(f"{claimed.group(1) if claimed else 'too many'} pixels") from error
    with opened as image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageTooLarge(f"{width}x{height} px ({width * height} pixels)")
        # A JPEG is checked at 1/8 scale: every byte is still decoded (a truncated file still fails), in a
        # fraction of the time, which is most of `check` on a large dataset (issue 25).
        drafted = image.format == "JPEG" and image.draft(image.mode, (width // 8, height // 8)) is not None
        image.load()
        if not drafted:
            width, height = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def has_alpha(path: Path) -> bool:
    """True when the file's image has transparency (an alpha channel, or a transparent palette colour)."""
    with Image.open(path) as image:
        return image.mode in _ALPHA_MODES or "transparency" in image.info


def load_mask(image_path: Path, mask_file: Path | None) -> Image.Image | None:
    """The training mask of an image as 8-bit greyscale (255 = train), upright as EXIF says and at the
    image's size: the mask file when given, else the image's alpha channel, else None."""
    with Image.open(image_path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
    if mask_file is not None:
        with Image.open(mask_file) as opened:
            opened.load()
            mask = to_rgb(ImageOps.exif_transpose(opened)).convert("L")
        # A mask saved at another size still covers the same picture.
        return mask if mask.size == upright.size else mask.resize(upright.size, Image.Resampling.BILINEAR)
    if upright.mode in _ALPHA_MODES or "transparency" in upright.info:
        return upright.convert("RGBA").getchannel("A")
    return None


def load_image_rgb(path: Path | str) -> Image.Image:
    """Open an image file as 8-bit RGB, upright as EXIF says, transparency composited over white."""
    with Image.open(path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
    return to_rgb(upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB without clipping high-bit-depth data."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if mode == "P" or (mode in ("L", "RGB") and "transparency" in image.info):
        # Palette and colour-keyed images may carry transparency; expand it to an alpha channel first.
        image = image.convert("RGBA")
        mode = image.mode
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK (Pillow undoes Adobe's inverted CMYK when reading), YCbCr, LAB, HSV.
    return image.convert("RGB")


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map single-channel integer or float pixels to 0..255.

    16-bit data (0..65535) is divided by 257 so that white stays white; float data in 0..1 is multiplied by
    255; 32-bit integer data that fits in 8 bits is kept as is.
    """
    data = values.astype(np.float64)
    peak = float(data.max()) if data.size else 0.0
    if values.dtype.kind == "f":
        scale = 255.0 if peak <= 1.0 else 1.0
    elif values.dtype.itemsize == 2 or 255 < peak <= 65535:
        scale = 1.0 / 257.0
    elif peak > 65535:
        scale = 255.0 / peak
    else:
        scale = 1.0
    return np.clip(np.rint(data * scale), 0, 255).astype(np.uint8)
