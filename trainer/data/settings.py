"""The [dataset] settings the pipeline reads, with the documented defaults.

The pipeline accepts any object with these attributes (the config's [dataset] section); this dataclass is a
ready-made one for tests, the `caption` command and class-image folders.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DatasetSettings:
    dir: Path | str
    resolution: int = 512
    caption_extension: str = ".txt"
    repeats: int = 1
    default_caption: str = ""
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    random_crop: bool = False
    flip: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
