"""The dataset pipeline: scan a folder, load and bucket images, process captions, yield reproducible
batches, and cache VAE latents. No model libraries are imported here (torch only, for tensors)."""
from .buckets import bucket_for_image, make_buckets, resize_and_crop
from .captions import process_caption, split_tags
from .errors import DatasetError
from .images import IMAGE_EXTENSIONS, load_image_rgb
from .latent_cache import LatentCache
from .scan import DatasetIndex, ImageItem, scan_dataset
from .settings import DatasetSettings
from .train_data import Batch, TrainData

__all__ = [
    "IMAGE_EXTENSIONS", "Batch", "DatasetError", "DatasetIndex", "DatasetSettings", "ImageItem", "LatentCache",
    "TrainData", "bucket_for_image", "load_image_rgb", "make_buckets", "process_caption", "resize_and_crop",
    "scan_dataset", "split_tags",
]
