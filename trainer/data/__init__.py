"""The dataset pipeline: scan a folder, load and bucket images, process captions, yield reproducible
batches, and cache VAE latents.

The scan (scan, images, buckets, captions) needs only Pillow and numpy, so the UI process, which must never
load torch, imports it directly. Names from the torch-using modules (train_data, latent_cache) are therefore
imported on first use, not when this package is imported.
"""
from __future__ import annotations

import importlib
from typing import Any

from .buckets import bucket_for_image, make_buckets, resize_and_crop
from .captions import process_caption, split_tags
from .errors import DatasetError
from .images import IMAGE_EXTENSIONS, load_image_rgb
from .scan import DatasetIndex, ImageItem, scan_dataset
from .settings import dataset_settings

# name -> module that defines it; these modules import torch.
_TORCH_NAMES = {"Batch": ".train_data", "TrainData": ".train_data", "LatentCache": ".latent_cache"}

__all__ = [
    "IMAGE_EXTENSIONS", "Batch", "DatasetError", "DatasetIndex", "ImageItem", "LatentCache", "TrainData",
    "bucket_for_image", "dataset_settings", "load_image_rgb", "make_buckets", "process_caption",
    "resize_and_crop", "scan_dataset", "split_tags",
]


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(_TORCH_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
