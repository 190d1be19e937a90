"""A DreamBooth job's training examples: the subject ("instance") images, captioned with the instance prompt when
they have no caption of their own, plus class_images_per_instance x N class images captioned with the class
prompt. `planned_index` tells `trainer check` the same counts and sizes without generating anything."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data import DatasetError, DatasetIndex, ImageItem, scan_dataset
from .class_images import GENERATED_PREFIX, ClassImageSpec, image_files, shared_cache_folder

SHARED_CACHE_LABEL = "<shared class-image cache>"


def instance_index(cfg) -> DatasetIndex:
    """The subject images. Caption order: the .txt beside the image, a Kohya `N_name` folder, the instance
    prompt (dataset.default_caption, when set, wins over the instance prompt)."""
    dataset = cfg.dataset
    regularization = [dataset.reg_dir] if dataset.reg_dir else []
    regularization += [table["dir"] for table in dataset.concepts if table["is_regularization"]]
    if regularization:
        raise DatasetError("DreamBooth takes its class images from dreambooth.class_dir (or generates them): "
                           f"remove dataset.reg_dir / the is_regularization concepts ({regularization[0]})")
    caption = dataset.default_caption or cfg.dreambooth.instance_prompt
    return scan_dataset(dataclasses.replace(dataset, default_caption=caption))


def required_class_images(cfg, instance: DatasetIndex) -> int:
    """class_images_per_instance x the number of subject images, or 0 without prior preservation."""
    if not cfg.dreambooth.prior_preservation:
        return 0
    return cfg.dreambooth.class_images_per_instance * instance.num_images


def class_spec(cfg, model) -> ClassImageSpec:
    """What the class images of this job are made from. The model is known by its weights' hash when it is
    one file, else by its folder, hub id or builtin name; a replacement VAE changes the pictures too."""
    db = cfg.dreambooth
    identity = model.hash or str(cfg.model.base)
    if cfg.model.vae:
        identity += f"|vae={cfg.model.vae}"
    return ClassImageSpec(model=identity, prompt=db.class_prompt, negative_prompt=db.class_negative_prompt,
                          resolution=cfg.dataset.resolution, steps=db.class_steps,
                          guidance_scale=float(db.class_guidance_scale), sampler=db.class_sampler)


def class_folder(cfg, spec: ClassImageSpec) -> Path:
    """dreambooth.class_dir when set, else the shared cache folder for this spec."""
    return Path(cfg.dreambooth.class_dir).expanduser() if cfg.dreambooth.class_dir else shared_cache_folder(spec)


def class_index(cfg, folder: Path, needed: int) -> DatasetIndex:
    """The first `needed` usable images of the class folder (sorted by path), marked as class images."""
    db, dataset = cfg.dreambooth, cfg.dataset
    settings = dataclasses.replace(dataset, dir=folder, repeats=1, default_caption=db.class_prompt, concepts=[],
                                   masked_training=False)
    try:
        scanned = scan_dataset(settings)
    except DatasetError as error:
        raise DatasetError(f"class images (dreambooth.class_dir): {error}") from error
    usable = scanned.items
    warnings = [f"class images: {warning}" for warning in scanned.warnings]
    if len(usable) < needed:
        raise DatasetError(f"class image folder {folder} holds {len(usable)} usable images but "
                           f"{needed} are needed (dreambooth.class_images_per_instance = "
                           f"{db.class_images_per_instance} x the subject images); remove the broken files "
                           "listed above or lower class_images_per_instance")
    if len(usable) > needed:
        warnings.append(f"class image folder {folder} holds {len(usable)} images; the first {needed} are used "
                        "(raise dreambooth.class_images_per_instance to use more)")
    items = [dataclasses.replace(item, is_class=True) for item in usable[:needed]]
    return DatasetIndex(root=folder, items=items, skipped=scanned.skipped, warnings=warnings)


def combined_index(instance: DatasetIndex, classes: DatasetIndex | None) -> DatasetIndex:
    if classes is None:
        return instance
    return DatasetIndex(root=instance.root, items=instance.items + classes.items,
                        skipped=instance.skipped + classes.skipped, warnings=instance.warnings + classes.warnings)


def planned_index(cfg) -> DatasetIndex:
    """The index a DreamBooth run will train on, for `trainer check`: the class images a user folder already
    holds, plus stand-ins (resolution x resolution, like every generated one) for those still to be made. The
    shared cache needs no look: it only ever holds generated, square images."""
    instance = instance_index(cfg)
    needed = required_class_images(cfg, instance)
    if not needed:
        return instance
    res = cfg.dataset.resolution
    folder = Path(cfg.dreambooth.class_dir).expanduser() if cfg.dreambooth.class_dir else Path(SHARED_CACHE_LABEL)
    present = len(image_files(folder)) if cfg.dreambooth.class_dir else 0
    existing = class_index(cfg, folder, min(present, needed)).items if present else []
    missing = [ImageItem(folder / f"{GENERATED_PREFIX}{n:05d}.png", cfg.dreambooth.class_prompt, 1, res, res,
                         folder.name, is_class=True) for n in range(needed - len(existing))]
    warnings = [f"{len(missing)} class images will be generated before training"] if missing else []
    planned = DatasetIndex(root=folder, items=existing + missing, warnings=warnings)
    return combined_index(instance, planned)
