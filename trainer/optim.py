"""Optimizers and learning-rate schedules, chosen by name from the job file."""
from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

OPTIMIZERS = ("adamw8bit", "adamw", "lion8bit", "prodigy", "adafactor")


def build_optimizer(name: str, param_groups: list[dict], lr: float, weight_decay: float,
                    fused: bool = True) -> torch.optim.Optimizer:
    """param_groups: [{"params": [...], "lr": ...}]; a group without "lr" uses `lr`. `fused` picks torch's
    fused AdamW kernel (else the foreach one)."""
    if name == "adamw":
        kernel = {"fused": True} if fused else {"foreach": True}
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, **kernel)
    if name in ("adamw8bit", "lion8bit"):
        import bitsandbytes as bnb  # imported late: it probes CUDA at import time

        cls = bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.Lion8bit
        return cls(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "prodigy":
        from prodigyopt import Prodigy

        if len({g.get("lr", lr) for g in param_groups}) > 1:
            # Prodigy estimates one step size for all groups and fails at its first step otherwise.
            raise ValueError("optimizer = \"prodigy\" uses one learning rate for everything it trains: set "
                             "training.text_encoder_lr = 0 (or equal to training.learning_rate)")

        return Prodigy(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # Fixed learning rate (not Adafactor's relative step) so the job's learning_rate and schedule apply.
        return Adafactor(param_groups, lr=lr, weight_decay=weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       num_cycles: int, power: float):
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         num_cycles=num_cycles, power=power)
