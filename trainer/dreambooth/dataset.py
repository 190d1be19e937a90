"""The training examples of jobs with generated class images: a DreamBooth job's subject ("instance") images,
captioned with the instance prompt when they have no caption of their own, plus class_images_per_instance x N
class images captioned with the class prompt; and a LoRA job's training images plus the regularisation images
made from dataset.reg_prompt. Both describe what they need as a ClassImageSource, and one code path scans,
plans and (trainer/dreambooth/generate.py) fills it. `planned_with_class_images` tells `trainer check` the same
counts and sizes without generating anything."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data import DatasetError, DatasetIndex, ImageItem, scan_dataset
from .class_images import GENERATED_PREFIX, ClassImageSpec, image_files, shared_cache_folder

SHARED_CACHE_LABEL = "<shared class-image cache>"


@dataclasses.dataclass(frozen=True)
class ClassImageSource:
    """The generated class images a job trains with: how many, from which prompt, in which folder, and the
    keys that messages name. DreamBooth's (dreambooth_source) and a LoRA job's regularisation images
    (reg_source) differ only in these values and in how they pair with the training images."""
    prompt: str
    needed: int
    dir: str  # the user's folder; "" = the shared cache folder of the spec
    dir_key: str
    count_key: str
    count_rule: str  # how `needed` follows from the training images, for messages
    what: str  # "class images" / "regularisation images"
    pairs_with_subjects: bool  # regularisation images pair with the subject samples as Kohya's do (TrainData)


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


def dreambooth_source(cfg, instance: DatasetIndex) -> ClassImageSource | None:
    """A DreamBooth job's class images, or None without prior preservation."""
    db = cfg.dreambooth
    needed = required_class_images(cfg, instance)
    if not needed:
        return None
    key = "dreambooth.class_images_per_instance"
    return ClassImageSource(db.class_prompt, needed, db.class_dir, "dreambooth.class_dir", key,
                            f"{key} = {db.class_images_per_instance} x the subject images", "class images",
                            pairs_with_subjects=False)


def reg_source(cfg, training: DatasetIndex) -> ClassImageSource | None:
    """A LoRA job's generated regularisation images (dataset.reg_prompt set), or None. Per training image
    dataset.reg_images_per_image of them, or with 0 as many as an epoch pairs: one per training sample
    (images x repeats), since regularisation samples are cut to the training samples of an epoch."""
    dataset = cfg.dataset
    if not dataset.reg_prompt.strip():
        return None
    key, per_image = "dataset.reg_images_per_image", dataset.reg_images_per_image
    if per_image:
        needed, rule = per_image * training.num_images, f"{key} = {per_image} x the training images"
    else:
        needed, rule = training.num_repeated, f"{key} = 0: one per training sample, the images x their repeats"
    return ClassImageSource(dataset.reg_prompt.strip(), needed, dataset.reg_dir, "dataset.reg_dir", key, rule,
                            "regularisation images", pairs_with_subjects=True)


def class_spec(cfg, model, prompt: str) -> ClassImageSpec:
    """What class images of `prompt` are made from (the dreambooth.class_* generation settings). The model is
    known by its weights' hash when it is one file, else by its folder, hub id or builtin name; a replacement
    VAE changes the pictures too."""
    db = cfg.dreambooth
    identity = model.hash or str(cfg.model.base)
    if cfg.model.vae:
        identity += f"|vae={cfg.model.vae}"
    return ClassImageSpec(model=identity, prompt=prompt, negative_prompt=db.class_negative_prompt,
                          resolution=cfg.dataset.resolution, steps=db.class_steps,
                          guidance_scale=float(db.class_guidance_scale), sampler=db.class_sampler)


def class_folder(source: ClassImageSource, spec: ClassImageSpec) -> Path:
    """The source's own folder when set, else the shared cache folder for this spec."""
    return Path(source.dir).expanduser() if source.dir else shared_cache_folder(spec)


def class_index(cfg, source: ClassImageSource, folder: Path, needed: int | None = None) -> DatasetIndex:
    """The first `needed` (by default source.needed) usable images of the class folder (sorted by path),
    captioned with the source's prompt when they have no caption, marked as class images."""
    needed = source.needed if needed is None else needed
    settings = dataclasses.replace(cfg.dataset, dir=folder, repeats=1, default_caption=source.prompt, concepts=[],
                                   reg_dir="", reg_prompt="", masked_training=False)
    try:
        scanned = scan_dataset(settings)
    except DatasetError as error:
        raise DatasetError(f"{source.what} ({source.dir_key}): {error}") from error
    usable = scanned.items
    warnings = [f"{source.what}: {warning}" for warning in scanned.warnings]
    if len(usable) < needed:
        raise DatasetError(f"{source.what} folder {folder} holds {len(usable)} usable images but {needed} are "
                           f"needed ({source.count_rule}); remove the broken files listed above or lower "
                           f"{source.count_key}")
    if len(usable) > needed:
        warnings.append(f"{source.what} folder {folder} holds {len(usable)} images; the first {needed} are used "
                        f"(raise {source.count_key} to use more)")
    items = [dataclasses.replace(item, is_class=True) for item in usable[:needed]]
    return DatasetIndex(root=folder, items=items, skipped=scanned.skipped, warnings=warnings)


def combined_index(instance: DatasetIndex, classes: DatasetIndex | None,
                   pairs_with_subjects: bool = False) -> DatasetIndex:
    if classes is None:
        return instance
    return dataclasses.replace(instance, items=instance.items + classes.items,
                               skipped=instance.skipped + classes.skipped,
                               warnings=instance.warnings + classes.warnings,
                               reg_pairs_with_subjects=pairs_with_subjects)


def planned_with_class_images(cfg, training: DatasetIndex, source: ClassImageSource | None) -> DatasetIndex:
    """The index a run will train on, for `trainer check`: the class images a user folder already holds, plus
    stand-ins (resolution x resolution, like every generated one) for those still to be made. The shared cache
    needs no look: it only ever holds generated, square images."""
    if source is None or not source.needed:
        return training
    res = cfg.dataset.resolution
    folder = Path(source.dir).expanduser() if source.dir else Path(SHARED_CACHE_LABEL)
    present = len(image_files(folder)) if source.dir else 0
    existing = class_index(cfg, source, folder, min(present, source.needed)).items if present else []
    missing = [ImageItem(folder / f"{GENERATED_PREFIX}{n:05d}.png", source.prompt, 1, res, res, folder.name,
                         is_class=True) for n in range(source.needed - len(existing))]
    warnings = [f"{len(missing)} {source.what} will be generated before training"] if missing else []
    planned = DatasetIndex(root=folder, items=existing + missing, warnings=warnings)
    return combined_index(training, planned, source.pairs_with_subjects)


def planned_index(cfg) -> DatasetIndex:
    """A DreamBooth run's index for `trainer check`: the subject images plus the class images."""
    instance = instance_index(cfg)
    return planned_with_class_images(cfg, instance, dreambooth_source(cfg, instance))


def planned_reg_index(cfg) -> DatasetIndex:
    """A LoRA run's index for `trainer check`: the dataset, plus the regularisation images of
    dataset.reg_prompt (with it, scan_dataset leaves dataset.reg_dir to them)."""
    training = scan_dataset(cfg.dataset)
    return planned_with_class_images(cfg, training, reg_source(cfg, training))
