"""Validation: a held-out set's denoising loss at fixed noises and timesteps ([validation]), so two validations
(and two runs) compare like for like; the best one, and the checkpoint saved with it; early stopping. The loss
is the run's own (validation.loss = "training") or plain MSE ("mse"); docs/evaluation.md says which and why.

The held-out images come from a seeded split of the subject images (validation.split) or from a folder
(validation.dir). `split_validation` is what both `trainer check` and `trainer run` call, so the step count
shown is the one trained."""
from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

from .data import DatasetError, DatasetIndex, scan_dataset
from .families import adapter_for


def split_validation(cfg, index: DatasetIndex) -> tuple[DatasetIndex, DatasetIndex | None]:
    """(training index, validation index or None). A split holds out round(split x subject images), at least
    one, chosen by validation.seed; class images always stay in training."""
    val = cfg.validation
    if val.dir:
        try:
            held = scan_dataset(dataclasses.replace(cfg.dataset, dir=val.dir))
        except DatasetError as e:  # the scanner names dataset.dir; here the folder is validation.dir's
            raise DatasetError(f"{cfg.source}: validation.dir: " + str(e).replace("dataset.dir", "validation.dir"))
        return index, _once_each(held)
    if not val.split:
        return index, None
    subjects = sorted(index.instance_items, key=lambda item: str(item.path))
    count = max(1, round(val.split * len(subjects)))
    if count >= len(subjects):
        raise DatasetError(f"{cfg.source}: validation.split = {val.split:g} of {len(subjects)} subject image(s) "
                           f"leaves nothing to train on; add images, lower the split or use validation.dir")
    held = set(random.Random(val.seed).sample([str(item.path) for item in subjects], count))
    training = dataclasses.replace(index, items=[it for it in index.items if str(it.path) not in held])
    validation = dataclasses.replace(index, items=[it for it in subjects if str(it.path) in held], warnings=[],
                                     skipped=[])
    return training, _once_each(validation)


def _once_each(index: DatasetIndex) -> DatasetIndex:
    """Every validation image counted once (repeats are a training matter)."""
    return dataclasses.replace(index, items=[dataclasses.replace(it, repeats=1) for it in index.items])


class Validator:
    """Runs the fixed validation loss and remembers the best. Its record (best, patience) is part of the
    resumable state, so early stopping after a resume decides exactly as a straight run."""

    def __init__(self, cfg, model, method, index: DatasetIndex, text=None):
        """`text`: the run's TextConditioner; when it caches, the held-out prompts are read from its cache (the
        loop encodes them ahead with the training ones) and the parked text encoders stay parked."""
        from .data import TrainData

        self.cfg, self.model, self.method = cfg, model, method
        self.text = text if text is not None and text.cache is not None else None
        # Each held-out image once in its own bucket: dataset.full_batches would weigh some twice.
        self.data = TrainData(index, dataclasses.replace(cfg.dataset, full_batches=False), cfg.training.batch_size,
                              cfg.validation.seed)
        self.objective = None  # validation.loss = "mse": the plain yardstick, comparable between runs
        if cfg.validation.loss == "training":
            # The loss the run optimises, as sd-scripts validates: a Huber run is judged by Huber, and min-SNR
            # or debiased weighting is kept. The timesteps and noises are fixed, so each draw's weight is the
            # same at every validation and the numbers of one run compare like for like; the weighting is
            # kept so that early stopping and the best checkpoint follow what training minimises.
            # model.noise_scheduler is the run's (zero terminal SNR already applied by the loop).
            self.objective = adapter_for(model.arch).objective(cfg.training, model)
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.best_path: str | None = None  # the checkpoint saved at the best step, when there is one
        self.since_best = 0

    def validate(self, step: int, autocast) -> tuple[float, bool]:
        """The validation loss of the model as it is after `step`; (loss, whether it is a new best)."""
        import torch

        from . import offload
        from .evaluate import fixed_denoising_loss

        modules = [m for m in (self.model.unet, *self.model.text_encoders) if m is not None]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()  # no dropout: the same weights give the same number
        device = offload.device_of(self.model.unet)
        try:
            torch.manual_seed(self.cfg.validation.seed)  # prompts a method draws (textual inversion's templates)
            # The held-out images are encoded at each validation: the VAE is borrowed when it is parked.
            with autocast(), offload.on_device([self.model.vae], device):
                loss = fixed_denoising_loss(
                    self.model, self.data, seed=self.cfg.validation.seed, captions=self.method.batch_captions,
                    clip_skip=self.cfg.training.clip_skip, objective=self.objective,
                    example_weights=self.method.example_weights if self.objective is not None else None,
                    text=self.text)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        improved = loss < self.best_loss
        if improved:
            self.best_loss, self.best_step, self.best_path, self.since_best = loss, step, None, 0
        else:
            self.since_best += 1
        return loss, improved

    def saved(self, step: int, path: Path) -> bool:
        """A checkpoint was written at `step`; True when it is the best one (that step's validation is)."""
        if step != self.best_step:
            return False
        self.best_path = str(path)
        return True

    @property
    def best(self) -> dict | None:
        if self.best_step is None:
            return None
        return {"step": self.best_step, "loss": self.best_loss, "path": self.best_path}

    def should_stop(self) -> bool:
        patience = self.cfg.validation.early_stopping_patience
        return bool(patience) and self.since_best >= patience

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "best_path": self.best_path,
                "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def is_validation_due(cfg, done: int, saving: bool) -> bool:
    """At each save (so every checkpoint has its loss) and every validation.every_n_steps steps."""
    every = cfg.validation.every_n_steps
    return saving or bool(every and done % every == 0)
