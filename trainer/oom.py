"""A CUDA out-of-memory in a run becomes one message, not a traceback: the phase that ran out (as the memory
model names its phases), what the model predicted for it, and what the planner would turn on to fit the card
(trainer/planner.py), so the user's next step is one setting, not a search."""
from __future__ import annotations

from .config.values import format_value
from .memory import estimate_memory
from .planner import plan_fit

# The run's reporter phases (and the caching messages) as the memory model's phases
PHASES = {"loading": "training", "training": "training", "saving": "training", "sampling": "training",
          "encoding images to latents": "caching latents", "encoding captions": "caching text-encoder outputs"}
SHARE = 0.8  # when the model thought the job fitted: the savers that take a fifth off its prediction


class GpuMemoryError(Exception):
    """The GPU ran out of memory; the message says where and what to change."""

    traceback_useful = False  # the worker logs no traceback: the message is the whole story


def out_of_memory_message(cfg, arch: str | None, phase: tuple[str, str], step: int, gpu_gib: float | None) -> str:
    name, message = phase
    where = f"while {message}" if name == "caching" and message else f"while {name}"
    if name == "training":
        where += f" (step {step + 1})"
    head = f"the GPU ran out of memory {where}"
    est = estimate_memory(cfg, arch) if arch else None
    if est is None:
        return f"{head}; turn on gradient checkpointing and the caches, or lower the batch size or resolution"
    modelled = est.phase(PHASES.get(message if name == "caching" else name, "training")) or est.peak
    head += f"; the memory model predicted {modelled.gib:.1f} GiB for {modelled.name}"
    gpu = cfg.training.gpu_memory_gib or gpu_gib
    if not gpu:
        return (f"{head}. To see what would fit: trainer check JOB --gpu SIZE (your card's memory), or set "
                "training.fit = \"auto\"")
    head += f" on a {gpu:.1f} GiB card"
    plan = plan_fit(cfg, arch, gpu)
    if plan.fits and not plan.savers:  # the model under-estimated this job: ask for a margin
        plan = plan_fit(cfg, arch, est.vram_gib * SHARE)
        head += " (it expected the job to fit, so it under-estimated this one)"
    if not plan.savers:
        return f"{head}; no saver is left to turn on: lower the batch size or resolution"
    settings = ", ".join(f"{s.key} = {format_value(s.value)}" for s in plan.savers)
    return (f"{head}. The planner would add: {', '.join(s.label for s in plan.savers)} ({settings}); or set "
            "training.fit = \"auto\" to let the run choose")
