"""What each method needs from a job, without torch: its schema sections, the values it requires, the
warnings it gives, its learning-rate groups, what it trains (the memory model and the loop's caches read it) and the dataset a run
will plan with. The config checks, `trainer check` and the training classes all read these specs, so each
rule is written once. One spec per method lives next to its training class (lora_spec.py, ...)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config.schema import LR_FREE_OPTIMIZERS
from ..config.values import format_value

_OPTIMIZER_NAMES = {"prodigy": "Prodigy", "dadaptadam": "D-Adaptation Adam", "dadaptlion": "D-Adaptation Lion"}


def show(cfg, name: str) -> str:
    """`section.key = value`, as messages quote a setting."""
    return f"{name} = {format_value(cfg.get(name))}"


def required(cfg, names_and_reasons: list[tuple[str, str]]) -> list[str]:
    return [f"{name} is required when {reason} (it is empty)" for name, reason in names_and_reasons
            if not cfg.get(name)]


def typical_lr_warning(cfg, high: float, advice: str) -> list[str]:
    """A warning when learning_rate is above `high` for this kind of training; LR-free optimizers are judged
    by their own rule (learning_rate only scales the step size they find)."""
    lr, optimizer = cfg.training.learning_rate, cfg.training.optimizer
    if optimizer in LR_FREE_OPTIMIZERS:
        if not 0.1 <= lr <= 10:
            return [f"{show(cfg, 'training.learning_rate')} with training.optimizer = {format_value(optimizer)}: "
                    f"{_OPTIMIZER_NAMES[optimizer]} finds its own step size and learning_rate only scales it; "
                    "1.0 is usual"]
        return []
    return [f"{show(cfg, 'training.learning_rate')} is {advice}"] if lr > high else []


@dataclass(frozen=True)
class MethodSpec:
    """One method's rules. Callables take the JobConfig."""
    name: str
    sections: tuple[str, ...]  # the method's own schema sections (besides model/dataset/training/output/sample)
    requirements: Callable[[object], list[str]]  # values still missing: errors
    warnings: Callable[[object], list[str]]  # legal but probably mistaken values
    trains_lora: Callable[[object], bool]
    trains_text_encoder: Callable[[object], bool]
    trains_full_unet: Callable[[object], bool]  # every UNet weight learns (memory terms)
    trains_embeddings: Callable[[object], bool] = lambda cfg: False  # new token rows in the embedding tables

    def freezes_base(self, cfg) -> bool:
        """No base weight learns, only adapter (LoRA) layers added to it: the loop may then read the base
        straight into a half-precision training dtype (models.loading.base_load_dtype). A full fine-tune, full
        DreamBooth and textual inversion (new rows of the embedding tables) learn from fp32 base weights."""
        return self.trains_lora(cfg) and not self.trains_full_unet(cfg) and not self.trains_embeddings(cfg)

    def text_encoder_learns(self, cfg) -> bool:
        """Anything inside the text encoders learns (their weights or LoRA layers, or new token rows): they run
        with gradients every step, so their outputs cannot be cached and they stay on the device."""
        return self.trains_text_encoder(cfg) or self.trains_embeddings(cfg)

    def learning_rates(self, cfg) -> dict[str, float]:
        """The optimizer's LR groups: the UNet (or embedding) at learning_rate, the text encoder at
        text_encoder_lr, which falls back to learning_rate when 0. LR-free optimizers take one for all."""
        training = cfg.training
        rates = {"unet": training.learning_rate}
        if self.trains_text_encoder(cfg):
            rates["text_encoder"] = training.text_encoder_lr or training.learning_rate
        return rates

    def planned_dataset(self, cfg):
        """The examples a run will train on (a trainer.data.DatasetIndex), known before any model loads."""
        from ..data import scan_dataset

        return scan_dataset(cfg.dataset)


def spec_for(method: str) -> MethodSpec:
    """The spec of a method name (as in the job's `method`)."""
    from .dreambooth_spec import DREAMBOOTH
    from .finetune_spec import FINETUNE
    from .lora_spec import LORA
    from .textual_inversion_spec import TEXTUAL_INVERSION

    specs = {s.name: s for s in (LORA, DREAMBOOTH, FINETUNE, TEXTUAL_INVERSION)}
    if method not in specs:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(specs)}")
    return specs[method]


def common_warnings(cfg) -> list[str]:
    """Warnings every method shares: an LR-free optimizer ignores text_encoder_lr; a schedule-free one makes
    its own schedule, so another on top of it fights it."""
    training, warnings = cfg.training, []
    if training.optimizer in LR_FREE_OPTIMIZERS and training.text_encoder_lr and \
            spec_for(cfg.method).trains_text_encoder(cfg):
        warnings.append(f"{show(cfg, 'training.text_encoder_lr')} is ignored with training.optimizer = "
                        f"{format_value(training.optimizer)}: {_OPTIMIZER_NAMES[training.optimizer]} finds one step "
                        "size for everything it trains")
    if training.optimizer == "adamwschedulefree" and training.lr_scheduler not in ("constant",
                                                                                  "constant_with_warmup"):
        warnings.append(f"{show(cfg, 'training.lr_scheduler')} with training.optimizer = \"adamwschedulefree\": "
                        'schedule-free AdamW replaces the schedule; use "constant" (warmup is fine)')
    return warnings
