"""An exponential moving average of the trained weights (training.ema), for every method.

It averages what the method calls its trainable state (LoRA layers, the whole UNet of a full DreamBooth, the
new token's rows of textual inversion), so one class serves all three, and swaps the average into the model
for saving and sampling. diffusers' EMAModel is not used: it averages whole parameters (for textual
inversion the whole embedding table, 150-400 MB, when only a few rows learn) and by default warms its decay
up, so its average is not the plain one the user asked for."""
from __future__ import annotations

import contextlib

import torch


class WeightsEMA:
    """shadow <- decay x shadow + (1 - decay) x weights, every `every` optimizer steps, starting from the
    weights training starts with. Kept in fp32 on `device` (the CPU by default, to spare GPU memory)."""

    def __init__(self, method, model, decay: float, every: int, device):
        self.method, self.decay, self.every, self.device = method, decay, every, torch.device(device)
        self.start_from(method.trainable_state(model))

    def start_from(self, weights: dict[str, torch.Tensor]) -> None:
        self.shadow = {k: v.detach().to(self.device, torch.float32, copy=True)
                       for k, v in weights.items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model, step: int) -> None:
        """Called after optimizer step number `step` (1-based)."""
        if step % self.every:
            return
        live = self.method.trainable_state(model)
        for name, average in self.shadow.items():
            average.mul_(self.decay).add_(live[name].to(self.device, torch.float32), alpha=1 - self.decay)

    @contextlib.contextmanager
    def applied(self, model):
        """The model holds the averaged weights inside the block and its own, exactly, after it."""
        live = self.method.trainable_state(model)
        self.method.load_trainable_state(model, {**live, **self.shadow})
        try:
            yield
        finally:
            self.method.load_trainable_state(model, live)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "every": self.every, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("the saved EMA weights do not match this job's trainable parameters; "
                             "was the job file changed?")
        self.shadow = {k: v.to(self.device, torch.float32) for k, v in state["shadow"].items()}


def make_ema(training, method, model, device) -> WeightsEMA | None:
    if not training.ema:
        return None
    return WeightsEMA(method, model, training.ema_decay, training.ema_every_n_steps,
                      "cpu" if training.ema_on_cpu else device)


def swapped_in(ema: WeightsEMA | None, model, wanted: bool = True):
    """A context holding the EMA weights in the model when there is an EMA and it is wanted."""
    return ema.applied(model) if ema is not None and wanted else contextlib.nullcontext()
