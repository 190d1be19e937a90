"""DreamBooth support: class ("prior") images — which folder, the shared cache, resumable batched generation
with the loaded base model — and the instance + class training index; LoRA's generated regularisation images
(dataset.reg_prompt) go through the same code. The methods are trainer/methods/dreambooth.py and lora.py; the
generation step that needs torch is trainer/dreambooth/generate.py."""
from .class_images import (CACHE_INFO_FILE, GENERATED_PREFIX, ClassImageSpec, ThrottledProgress, cache_root,
                           fill_class_folder, image_files, image_seed, shared_cache_folder)
from .dataset import (ClassImageSource, class_folder, class_index, class_spec, combined_index, dreambooth_source,
                      instance_index, planned_index, planned_reg_index, planned_with_class_images, reg_source,
                      required_class_images)

__all__ = [
    "CACHE_INFO_FILE", "GENERATED_PREFIX", "ClassImageSource", "ClassImageSpec", "ThrottledProgress", "cache_root",
    "class_folder", "class_index", "class_spec", "combined_index", "dreambooth_source", "fill_class_folder",
    "image_files", "image_seed", "instance_index", "planned_index", "planned_reg_index",
    "planned_with_class_images", "reg_source", "required_class_images", "shared_cache_folder",
]
