"""Filling a job's class-image folder before training, with the base model already loaded: the one code path
for DreamBooth's class images and a LoRA job's generated regularisation images (a ClassImageSource each)."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..data import DatasetIndex
from .class_images import ThrottledProgress, fill_class_folder
from .dataset import ClassImageSource, class_folder, class_index, class_spec, combined_index


def with_class_images(cfg, training: DatasetIndex, source: ClassImageSource | None, model,
                      reporter, device=None) -> DatasetIndex:
    """`training` plus the source's class images, generated first where missing (None: `training`); the
    model is borrowed onto `device` while it generates (None: it generates where it is)."""
    if source is None or not source.needed:
        return training
    folder = provide_class_images(cfg, source, model, reporter, device)
    return combined_index(training, class_index(cfg, source, folder), source.pairs_with_subjects)


def provide_class_images(cfg, source: ClassImageSource, model, reporter, device=None) -> Path:
    """The source's folder, holding at least source.needed images: the main process generates what is missing
    (into the shared cache folder of the spec unless the source names its own), the others wait for it."""
    import torch.distributed as dist

    spec = class_spec(cfg, model, source.prompt)
    folder = class_folder(source, spec)
    if not dist.is_initialized() or dist.get_rank() == 0:
        progress = ThrottledProgress(reporter, "generating class images", folder=folder, what=source.what)
        with contextlib.closing(_LazyGenerator(model, spec, device)) as generate:
            made = fill_class_folder(folder, source.needed, generate, cfg.dreambooth.class_batch_size, progress,
                                     spec=None if source.dir else spec)
        reporter.info(f"{source.what}: {source.needed} in {folder} ({made} generated now)")
    if dist.is_initialized():
        dist.barrier()  # the other processes read the folder the main one filled
    return folder


class _LazyGenerator:
    """Builds the class-image pipeline on first use, so a job whose class images exist builds nothing and
    moves nothing: only then is the whole model borrowed onto `device` (the loop places each module later,
    by phase); close() puts it back."""

    def __init__(self, model, spec, device=None):
        self.model, self.spec, self.device, self.generator = model, spec, device, None
        self._borrowed = contextlib.ExitStack()

    def __call__(self, seeds):
        if self.generator is None:
            from .. import offload
            from .pipeline import ClassImageGenerator

            if self.device is not None:
                model = self.model
                self._borrowed.enter_context(offload.on_device([model.unet, model.vae, *model.text_encoders],
                                                               self.device))
            self.generator = ClassImageGenerator(self.model, self.spec)
        return self.generator(seeds)

    def close(self) -> None:
        self.generator = None
        self._borrowed.close()
