from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class RunFacts:
    """What a saved file records about the run that made it (metadata)."""
    cfg: object
    model: object  # BaseModel
    index: object  # DatasetIndex
    plan: object  # TrainingPlan
    step: int
    started_at: float


class TrainingMethod:
    """Base of every method. Subclasses implement prepare() and save(), and may override the rest; the rules
    that need no model (what is trained, learning rates) come from the method's torch-free spec."""

    def __init__(self, cfg):
        from .spec import spec_for

        self.cfg = cfg
        self.spec = spec_for(cfg.method)

    @property
    def trains_text_encoder(self) -> bool:
        """Something in the text encoders learns (their weights, LoRA layers, new token rows): they run, with
        gradients, every step."""
        return self.spec.text_encoder_learns(self.cfg)

    def prepare(self, model) -> list[dict]:
        """Make the trainable parts trainable; return optimizer parameter groups ({"params", "lr"})."""
        raise NotImplementedError

    def trainable_modules(self, model) -> dict[str, torch.nn.Module]:
        """The modules that hold trainable parameters, by a stable name (used for resume state)."""
        mods = {"unet": model.unet}
        if self.trains_text_encoder:
            mods.update({f"text_encoder_{i}": te for i, te in enumerate(model.text_encoders) if te is not None})
        return mods

    def load_dataset(self, model, reporter, paths, device=None):
        """The training examples (a trainer.data.DatasetIndex). DreamBooth adds its class images here,
        generating missing ones with the model borrowed onto `device` (None: where it is)."""
        from ..data import scan_dataset

        return scan_dataset(self.cfg.dataset)

    def batch_captions(self, batch) -> list[str]:
        """The prompts the text encoder sees for a batch (textual inversion rewrites them)."""
        return self.prompts(batch.captions)

    def prompts(self, captions: list[str]) -> list[str]:
        """The prompts of these captions, one each, as batch_captions makes them; what the loop encodes ahead
        when text-encoder outputs are cached (only for methods whose text encoders do not learn)."""
        return list(captions)

    def example_weights(self, batch, device) -> torch.Tensor:
        """Per-example loss weights: each image's concept loss_weight, times dreambooth.prior_loss_weight for
        regularisation (class) images, as Kohya weighs reg_data_dir images. DreamBooth also evens out the
        two kinds per batch."""
        weights = torch.tensor(batch.loss_weights, dtype=torch.float32, device=device)
        is_class = torch.tensor(batch.is_class, dtype=torch.bool, device=device)
        return torch.where(is_class, weights * self.cfg.dreambooth.prior_loss_weight, weights)

    def after_optimizer_step(self, model) -> None:
        """Hook for methods that must repair something after each update (textual inversion)."""

    def state_parameters(self, model) -> dict[str, torch.nn.Parameter]:
        """The parameters a resumable state holds, by stable name (by default: those that learn)."""
        return {f"{mod_name}.{p_name}": p
                for mod_name, mod in self.trainable_modules(model).items()
                for p_name, p in mod.named_parameters() if p.requires_grad}

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.state_parameters(model).items()}

    def load_trainable_state(self, model, state: dict[str, torch.Tensor]) -> None:
        params = self.state_parameters(model)
        if set(params) != set(state):
            raise ValueError("the saved training state does not match this job's trainable parameters "
                             f"({len(state)} saved, {len(params)} expected); was the job file changed?")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k])

    def save(self, path: Path, run: RunFacts, dtype: torch.dtype) -> Path:
        raise NotImplementedError


def run_metadata_fields(run: RunFacts) -> dict:
    """The export-metadata fields every method shares (Kohya's ss_* names for them are set by the exporter)."""
    from ..export.metadata import LOSS_SETTING_KEYS

    cfg, tr, plan, index = run.cfg, run.cfg.training, run.plan, run.index
    repeats_images: dict[str, tuple[int, int]] = {}
    for item in index.instance_items:
        r, n = repeats_images.get(item.subset, (item.repeats, 0))
        repeats_images[item.subset] = (r, n + 1)
    res = cfg.dataset.resolution
    return dict(
        prediction_type=run.model.prediction_type, resolution=(res, res), training_started_at=run.started_at,
        steps=run.step, epoch=plan.epoch_of(max(run.step - 1, 0)), max_train_steps=plan.total_steps,
        num_epochs=plan.epochs, learning_rate=tr.learning_rate, optimizer=tr.optimizer,
        lr_scheduler=tr.lr_scheduler, mixed_precision=tr.mixed_precision, num_train_images=index.num_repeated,
        num_batches_per_epoch=plan.batches_per_epoch, batch_size=tr.batch_size,
        tag_frequency=index.tag_frequency(), dataset_dirs=repeats_images, seed=tr.seed,
        loss_settings={entry.setting: cfg.get(entry.setting) for entry in LOSS_SETTING_KEYS},
        clip_skip=tr.clip_skip if tr.clip_skip > 1 else None, base_model_name=run.model.name,
        base_model_hash=run.model.hash)
