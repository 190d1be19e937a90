"""training.fit = "auto" and `trainer check --gpu 12GB`: will the job fit the GPU, and if not, which memory
savers make it fit. The savers are tried in order of their cost to speed, each kept on once it is on, until
the memory model's (trainer/memory.py) peak fits; the block-swap count is the smallest that fits. Pure
arithmetic on the config: deterministic, torch-free, the same answer in `check` and at the start of `run`.

Speed costs come from bench/gpu_suite.py where it has measured them, else from published figures or an
estimate, and each says which (SPEED_COSTS). nf4 (4-bit base) is not in the list yet: Kiln cannot train on a
4-bit base today."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from .config.values import format_value
from .memory import ARCHS, MemoryEstimate, estimate_memory

GIB = 1024**3
PCIE_GIB_S = 12.0  # effective host-to-GPU copy speed from pinned memory (PCIe 4.0 x16 peaks at ~25 GB/s)
SDXL_STEP_S = 1.5  # an SDXL LoRA step at 1024 px with gradient checkpointing on a mid-range card (estimate)


@dataclass(frozen=True)
class SpeedCost:
    slower: float  # fraction of step time added
    source: str    # "measured: ...", "published: ..." or "estimate: ..."


SPEED_COSTS: dict[str, SpeedCost] = {
    "cache_latents": SpeedCost(0.0, "published: Kohya's and diffusers' scripts cache to go faster"),
    "cache_text_encoder_outputs": SpeedCost(0.0, "published: Kohya's and diffusers' scripts cache to go faster"),
    "gradient_checkpointing": SpeedCost(0.20, "published: Hugging Face's GPU training guide, about 20 %"),
    "optimizer": SpeedCost(0.0, "published: bitsandbytes' 8-bit optimizers paper, the speed of 32-bit Adam"),
    "fp8": SpeedCost(0.05, "estimate: one upcast per layer and forward"),
    # per GiB of weights swapped: each swapped block is copied twice a step (forward, recompute), partly hidden
    # behind compute on the side stream; counted here as half hidden
    "blocks_to_swap": SpeedCost(0.5 * 2 / PCIE_GIB_S / SDXL_STEP_S,
                                f"estimate: 2 copies a step at ~{PCIE_GIB_S:g} GB/s, half hidden, per GiB"),
}


@dataclass
class Saver:
    key: str               # the schema key it sets (training.*)
    value: object
    label: str             # how the card names it
    cost: float            # fraction slower
    source: str


@dataclass
class FitPlan:
    gpu_gib: float
    fits: bool
    before: MemoryEstimate
    after: MemoryEstimate
    savers: list[Saver] = field(default_factory=list)
    reason: str = ""  # why it does not fit, when it does not

    @property
    def slower(self) -> float:
        total = 1.0
        for saver in self.savers:
            total *= 1 + saver.cost
        return total - 1

    def summary(self) -> str:
        """One line for the log and the card."""
        gpu = f"{self.gpu_gib:g} GiB"
        if not self.fits:
            return f"does not fit {gpu}: {self.reason}"
        if not self.savers:
            return f"fits {gpu} as written (peak about {self.before.vram_gib:.1f} GiB)"
        return (f"to fit {gpu}: {', '.join(s.label for s in self.savers)}; ~{self.slower * 100:.0f} % slower "
                f"(peak about {self.after.vram_gib:.1f} GiB, from {self.before.vram_gib:.1f})")

    def lines(self) -> list[str]:
        out = [self.summary()]
        out += [f"  {s.key} = {format_value(s.value)}: {s.label}, ~{s.cost * 100:.0f} % slower ({s.source})" for s in self.savers]
        if self.fits:
            out += [f"  {p.name}: about {p.gib:.1f} GiB" for p in self.after.phases]
        return out

    def overrides(self) -> list[str]:
        """The choice as `--set` overrides (what `run` applies)."""
        return [f"{s.key}={format_value(s.value)}" for s in self.savers]


def parse_gpu_size(text: str) -> float:
    """"12GB", "12 GiB", "12G", "12", "11.5" -> GiB. A card's "12 GB" is 12 GiB of memory (12,288 MiB)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:g|gb|gib)?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--gpu {text!r} is not a GPU memory size (write it like 12GB)")
    return float(m.group(1))


def candidates(cfg, arch: str) -> list[Saver]:
    """The savers this job could still turn on, cheapest first (the order of the issue: caches, gradient
    checkpointing, 8-bit optimizer state, fp8 base, blocks swapped)."""
    tr = cfg.training
    out = []

    def add(name: str, key: str, value, label: str) -> None:
        cost = SPEED_COSTS[name]
        out.append(Saver(key, value, label, cost.slower, cost.source))

    if not tr.cache_latents:
        add("cache_latents", "training.cache_latents", True, "latent cache")
    if not tr.cache_text_encoder_outputs:
        add("cache_text_encoder_outputs", "training.cache_text_encoder_outputs", True, "text-encoder output cache")
    if not tr.gradient_checkpointing:
        add("gradient_checkpointing", "training.gradient_checkpointing", True, "gradient checkpointing")
    eight_bit = {"adamw": "adamw8bit", "lion": "lion8bit"}.get(tr.optimizer)
    if eight_bit:
        add("optimizer", "training.optimizer", eight_bit, f"8-bit optimizer state ({eight_bit})")
    if tr.base_quantization == "none":
        add("fp8", "training.base_quantization", "fp8", "fp8 base")
    return out


def plan_fit(cfg, arch: str, gpu_gib: float, images: int = 0) -> FitPlan | None:
    """The cheapest savers that make `cfg` fit `gpu_gib`; None for an architecture the model does not know."""
    from .config.checks import job_problems

    before = estimate_memory(cfg, arch, images)
    if before is None:
        return None
    trial, chosen, est = copy.deepcopy(cfg), [], before

    def fits(estimate: MemoryEstimate) -> bool:
        return estimate.vram_gib <= gpu_gib

    def attempt(saver: Saver) -> MemoryEstimate | None:
        """The estimate with `saver` on as well, or None when the config checks refuse it with this job."""
        tried = copy.deepcopy(trial)
        _set(tried, saver.key, saver.value)
        if len(job_problems(tried, complete=False)) > len(job_problems(trial, complete=False)):
            return None
        return estimate_memory(tried, arch, images)

    for saver in candidates(cfg, arch):
        if fits(est):
            break
        tried = attempt(saver)
        if tried is None or tried.vram_gib >= est.vram_gib:  # refused here, or saves nothing for this job
            continue
        _set(trial, saver.key, saver.value)
        chosen.append(saver)
        est = tried
    blocks = len(ARCHS[arch].swap_blocks) if arch in ARCHS else 0
    if not fits(est) and blocks and trial.training.blocks_to_swap < blocks:
        swap = SPEED_COSTS["blocks_to_swap"]
        for count in range(trial.training.blocks_to_swap + 1, blocks + 1):
            saver = Saver("training.blocks_to_swap", count, f"{count} blocks swapped", 0.0, swap.source)
            tried = attempt(saver)
            if tried is None:
                break
            if fits(tried) or count == blocks:
                moved = next((line.gib for line in tried.parked if line.what.startswith("swapped")), 0.0)
                saver.cost = swap.slower * moved
                _set(trial, saver.key, count)
                chosen.append(saver)
                est = tried
                break
    plan = FitPlan(gpu_gib, fits(est), before, est, chosen)
    if not plan.fits:
        peak = est.peak
        largest = max(peak.lines, key=lambda line: line.gib)
        plan.reason = (f"about {est.vram_gib:.1f} GiB with every saver Kiln has on, while {peak.name} (the "
                       f"largest part: {largest.what}, {largest.gib:.1f} GiB); lower the resolution or batch "
                       "size, or use a larger GPU")
    return plan


def apply_fit(cfg, plan: FitPlan) -> None:
    """Turn the plan's savers on in `cfg` (the run's own config)."""
    for saver in plan.savers:
        _set(cfg, saver.key, saver.value)


def _set(cfg, key: str, value) -> None:
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
