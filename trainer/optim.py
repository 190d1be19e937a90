"""Optimizers and learning-rate schedules, chosen by name from the job file."""
from __future__ import annotations

import contextlib

import torch
from diffusers.optimization import get_scheduler

from .config.schema import LR_FREE_OPTIMIZERS, OPTIMIZER_NAMES as OPTIMIZERS


def build_optimizer(name: str, param_groups: list[dict], lr: float, weight_decay: float,
                    fused: bool = True) -> torch.optim.Optimizer:
    """param_groups: [{"params": [...], "lr": ...}]; a group without "lr" uses `lr`. `fused` picks torch's
    fused AdamW kernel (else the foreach one)."""
    if name in LR_FREE_OPTIMIZERS:
        # Prodigy and D-Adaptation estimate one step size for all groups and raise on differing group LRs;
        # every group takes `lr` (the config check warns that text_encoder_lr is then ignored).
        param_groups = [{k: v for k, v in group.items() if k != "lr"} for group in param_groups]
    if name == "adamw":
        kernel = {"fused": True} if fused else {"foreach": True}
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, **kernel)
    if name in ("adamw8bit", "lion8bit", "pagedadamw8bit"):
        import bitsandbytes as bnb  # imported late: it probes CUDA at import time

        cls = {"adamw8bit": bnb.optim.AdamW8bit, "lion8bit": bnb.optim.Lion8bit,
               "pagedadamw8bit": bnb.optim.PagedAdamW8bit}[name]
        return cls(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(param_groups, lr=lr, weight_decay=weight_decay)
    if name in ("dadaptadam", "dadaptlion"):
        import dadaptation

        cls = dadaptation.DAdaptAdam if name == "dadaptadam" else dadaptation.DAdaptLion
        return cls(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "came":
        from came_pytorch import CAME

        return CAME(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "adamwschedulefree":
        from schedulefree import AdamWScheduleFree

        optimizer = AdamWScheduleFree(param_groups, lr=lr, weight_decay=weight_decay)
        optimizer.train()  # schedule-free optimizers refuse to step outside train mode
        return optimizer
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # Fixed learning rate (not Adafactor's relative step) so the job's learning_rate and schedule apply.
        return Adafactor(param_groups, lr=lr, weight_decay=weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


@contextlib.contextmanager
def evaluation_weights(optimizer):
    """The weights to save or sample with. A schedule-free optimizer trains at an interpolated point and keeps
    the weights worth using elsewhere: its eval() swaps them in, train() swaps back. Others are a no-op."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
    swaps = callable(getattr(inner, "eval", None)) and callable(getattr(inner, "train", None))
    if swaps:
        inner.eval()
    try:
        yield
    finally:
        if swaps:
            inner.train()


def build_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       num_cycles: int, power: float):
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         num_cycles=num_cycles, power=power)
