"""Aspect-ratio buckets: the training sizes images are grouped into, which bucket each image gets, and the
resize-then-crop that turns an image into exactly its bucket's size.

A batch must be one size, but squashing every image into a square crops portraits and landscapes badly. Like
Kohya, we offer a set of sizes of roughly equal area (at most resolution^2) and give each image the size whose
aspect ratio is closest to its own.
"""
from __future__ import annotations

import math
from PIL import Image, ImageOps

from ..config.sections import DatasetSection
from .errors import DatasetError

Size = tuple[int, int]  # (width, height)

# The VAE downsamples by 8, so every side the model sees must be a multiple of 8.
LATENT_FACTOR = 8


def check_bucket_settings(settings: DatasetSection) -> None:
    """Raise DatasetError naming the [dataset] key when the size settings cannot work."""
    resolution, step = settings.resolution, settings.bucket_reso_steps
    if resolution < LATENT_FACTOR or resolution % LATENT_FACTOR:
        raise DatasetError(f"dataset.resolution = {resolution} must be a positive multiple of 8")
    if not settings.enable_bucket:
        return
    if step < LATENT_FACTOR or step % LATENT_FACTOR:
        raise DatasetError(f"dataset.bucket_reso_steps = {step} must be a positive multiple of 8")
    if settings.min_bucket_reso > settings.max_bucket_reso:
        raise DatasetError(f"dataset.min_bucket_reso = {settings.min_bucket_reso} is larger than "
                           f"dataset.max_bucket_reso = {settings.max_bucket_reso}")
    if settings.min_bucket_reso > resolution:
        raise DatasetError(f"dataset.min_bucket_reso = {settings.min_bucket_reso} is larger than "
                           f"dataset.resolution = {resolution}: no bucket could hold resolution^2 pixels")


def make_buckets(resolution: int, min_reso: int, max_reso: int, step: int) -> list[Size]:
    """Sizes (width, height) with sides multiples of `step` in [min_reso, max_reso] and area <= resolution^2:
    for each width the tallest such height, and the same pairs turned sideways; sorted by aspect ratio
    (tallest first)."""
    max_area = resolution * resolution
    first_width = math.ceil(min_reso / step) * step
    buckets: set[Size] = set()
    for width in range(first_width, max_reso + 1, step):
        height = min(max_reso, max_area // width) // step * step
        if height >= min_reso and height > 0:
            # Both orientations, so portrait and landscape images get mirror-image choices.
            buckets.update({(width, height), (height, width)})
    if not buckets:
        raise DatasetError(f"no bucket fits: dataset.resolution = {resolution}, min_bucket_reso = {min_reso}, "
                           f"max_bucket_reso = {max_reso}, bucket_reso_steps = {step}")
    return sorted(buckets, key=lambda size: (size[0] / size[1], size[0]))


def nearest_bucket(width: int, height: int, buckets: list[Size]) -> Size:
    """The bucket whose aspect ratio is nearest the image's (compared as log ratios, so 2:1 and 1:2 are
    equally far from square)."""
    image_ratio = math.log(width / height)
    return min(buckets, key=lambda size: abs(math.log(size[0] / size[1]) - image_ratio))


def no_upscale_bucket(width: int, height: int, resolution: int, max_reso: int, step: int) -> Size:
    """A bucket no larger than the image: shrink it (keeping its aspect) only as needed to fit resolution^2
    pixels and max_reso per side, then round each side down to `step` (never below one step)."""
    scale = min(1.0, math.sqrt(resolution * resolution / (width * height)), max_reso / width, max_reso / height)
    bucket_width = max(step, int(width * scale) // step * step)
    bucket_height = max(step, int(height * scale) // step * step)
    return bucket_width, bucket_height


def bucket_for_image(width: int, height: int, settings: DatasetSection, buckets: list[Size]) -> Size:
    """The training size of one image under the [dataset] settings; `buckets` comes from make_buckets."""
    if not settings.enable_bucket:
        return settings.resolution, settings.resolution
    if settings.bucket_no_upscale:
        return no_upscale_bucket(width, height, settings.resolution, settings.max_bucket_reso,
                                 settings.bucket_reso_steps)
    return nearest_bucket(width, height, buckets)


def fuller_buckets(images: list[Size], buckets: list[Size], samples: dict[Size, int], batch_size: int,
                   no_upscale: bool) -> list[Size]:
    """The buckets of dataset.full_batches: an image (width, height) whose bucket (`buckets`, one per image)
    holds fewer than `batch_size` samples per epoch (`samples`) moves to the bucket nearest its aspect ratio
    among those that hold at least that many; with no_upscale only to one no larger than the image on either
    side, so it is never upscaled. An image with no such bucket keeps its own (its batches are then topped up
    with repeats). The buckets that receive images only grow, so one pass is enough."""
    full = sorted(size for size, count in samples.items() if count >= batch_size)
    moved = []
    for (width, height), bucket in zip(images, buckets):
        choices = [size for size in full if not no_upscale or (size[0] <= width and size[1] <= height)]
        moved.append(bucket if samples.get(bucket, 0) >= batch_size or not choices
                     else nearest_bucket(width, height, choices))
    return moved


def cover_size(width: int, height: int, bucket: Size) -> Size:
    """The smallest size with the image's aspect that covers the bucket on both sides."""
    scale = max(bucket[0] / width, bucket[1] / height)
    return max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale))


def kept_fraction(width: int, height: int, bucket: Size) -> float:
    """How much of the image's area survives resize-to-cover and crop to the bucket (1.0 = nothing lost)."""
    cover_width, cover_height = cover_size(width, height, bucket)
    return (bucket[0] * bucket[1]) / (cover_width * cover_height)


def centre_crop_top_left(width: int, height: int, bucket: Size, flip: bool = False) -> tuple[int, int]:
    """(top, left) of the centre crop of an image of this size, as resize_and_crop reports it, without
    reading the image."""
    cover_width, cover_height = cover_size(width, height, bucket)
    spare_height, spare_width = cover_height - bucket[1], cover_width - bucket[0]
    left = spare_width // 2
    return spare_height // 2, spare_width - left if flip else left


def resize_and_crop(image: Image.Image, bucket: Size, crop_position: tuple[float, float] | None = None,
                    flip: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Resize `image` to cover `bucket`, crop it to exactly the bucket's size, and mirror it when `flip`.

    crop_position None crops the centre; (y, x) in [0, 1) picks the crop's top-left for random cropping.
    Returns the crop and its (top, left) in the resized image's pixels, SDXL's crop conditioning; for a
    flipped sample that is the crop's top-left in the mirrored resized image.
    """
    resized_width, resized_height = cover_size(image.width, image.height, bucket)
    if (resized_width, resized_height) != image.size:
        image = image.resize((resized_width, resized_height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    spare_height, spare_width = resized_height - bucket[1], resized_width - bucket[0]
    if crop_position is None:
        top, left = spare_height // 2, spare_width // 2
    else:
        top = min(spare_height, int(crop_position[0] * (spare_height + 1)))
        left = min(spare_width, int(crop_position[1] * (spare_width + 1)))
    crop = image.crop((left, top, left + bucket[0], top + bucket[1]))
    if flip:
        return ImageOps.mirror(crop), (top, spare_width - left)
    return crop, (top, left)
