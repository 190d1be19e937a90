"""DreamBooth support: class ("prior") images — which folder, the shared cache, resumable batched generation
with the loaded base model — and the instance + class training index. The method itself is
trainer/methods/dreambooth.py."""
from .class_images import (CACHE_INFO_FILE, GENERATED_PREFIX, ClassImageSpec, ThrottledProgress, cache_root,
                           fill_class_folder, image_files, image_seed, shared_cache_folder)
from .dataset import (class_folder, class_index, class_spec, combined_index, instance_index, planned_index,
                      required_class_images)

__all__ = [
    "CACHE_INFO_FILE", "GENERATED_PREFIX", "ClassImageSpec", "ThrottledProgress", "cache_root", "class_folder",
    "class_index", "class_spec", "combined_index", "fill_class_folder", "image_files", "image_seed",
    "instance_index", "planned_index", "required_class_images", "shared_cache_folder",
]
