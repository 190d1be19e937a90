"""Dataset sizes left at 0 in a job mean "what suits the model": its family's native resolution."""
from __future__ import annotations

from dataclasses import replace

FALLBACK_RESOLUTION = 512  # while the family is unknown (a hub id offline, say)


def native_dataset_sizes(data, native_resolution: int | None):
    """A copy of a [dataset] section with resolution / min_bucket_reso / max_bucket_reso = 0 resolved for a
    family of `native_resolution` px (FALLBACK_RESOLUTION when None)."""
    resolution = data.resolution or native_resolution or FALLBACK_RESOLUTION
    low = data.min_bucket_reso or max(64, resolution // 2 // 64 * 64)
    high = data.max_bucket_reso or resolution * 2
    return replace(data, resolution=resolution, min_bucket_reso=low, max_bucket_reso=high)
