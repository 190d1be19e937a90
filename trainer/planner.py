"""training.fit = "auto" and `trainer check --gpu 12GB`: will the job fit the GPU, and if not, which memory
savers make it fit. The savers are tried in order of their cost to speed, each kept on once it is on, until
the memory model's (trainer/memory.py) peak fits: the caches, gradient checkpointing, 8-bit optimizer state,
an 8-bit base (fp8; int8 only where fp8 is refused, e.g. in fp32, and only when it fits by itself, since int8
layers cannot be swapped), the smallest block-swap count that fits, and last a 4-bit (nf4) base, which takes
the place of the 8-bit base and the swapping (nf4 layers cannot be swapped either). For SD 3 / Flux / Chroma, before
swapping: an fp8 T5-XXL, else an nf4 one, where caching caption embeddings (T5 alone on the GPU) does not fit
by itself (no step time: T5 encodes each caption once; the embeddings change slightly). Pure arithmetic on the
config: deterministic, torch-free, the same answer in `check` and at the start of `run`.

Speed costs come from bench/gpu_suite.py where it has measured them, else from published figures or an
estimate, and each says which (SPEED_COSTS)."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from .config.values import format_value
from .memory import ARCHS, MemoryEstimate, estimate_memory, has_t5

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
    # a quantized T5-XXL (fp8 or nf4) is chosen only for the phase that caches its outputs: T5 then encodes each
    # caption once, before training, and no step runs it
    "t5": SpeedCost(0.0, "estimate: nothing per step, T5-XXL encodes each caption once, before training"),
    # bitsandbytes' quantized layers: no figure is published for diffusion training; Hugging Face's note on its
    # 4-bit layers (google/flan-t5-large discussion 17) says the (de)quantizing makes them slower than half
    # precision in most cases. Counted high so that swapping, cheaper where it fits, comes first.
    "int8": SpeedCost(0.25, "estimate: LLM.int8 layers split each matmul into int8 and 16-bit outlier parts, "
                            "slower than half precision; no published figure for diffusion training"),
    "nf4": SpeedCost(0.30, "estimate: each 4-bit weight is dequantized for every forward and recompute, slower "
                           "than half precision; no published figure for diffusion training"),
    # per GiB of weights swapped: each swapped block is copied twice a step (forward, recompute), partly hidden
    # behind compute on the side stream; counted here as half hidden
    "blocks_to_swap": SpeedCost(0.5 * 2 / PCIE_GIB_S / SDXL_STEP_S,
                                f"estimate: 2 copies a step at ~{PCIE_GIB_S:g} GB/s, half hidden, per GiB"),
}


QUANT, SWAP, T5Q = "training.base_quantization", "training.blocks_to_swap", "training.t5_quantization"
TEXT_CACHING = "caching text-encoder outputs"  # the memory model's phase
# What a quantized T5 does to the result (docs/lora.md; measured on Kiln's tiny T5 in tests/test_t5_quantization.py)
T5_EFFECT = ("quantized T5-XXL: the cached caption embeddings differ slightly from the full-precision encoder's "
             "(cosine similarity about 0.999 for fp8, 0.87 for nf4, measured on Kiln's tiny random T5; not measured "
             "on the real T5-XXL), and the LoRA learns against those")
# What a 4-bit base does to the result, for the log, `check` and the card (docs/lora.md says it at length).
NF4_EFFECT = ("4-bit base: the LoRA learns against a copy of the model rounded to 4 bits and is applied to the "
              "full-precision model, which differs from what it learned against (QLoRA's trade: usually a small "
              "loss of fidelity, more than with an 8-bit base)")


@dataclass
class Saver:
    key: str               # the schema key it sets (training.*)
    value: object
    label: str             # how the card names it
    cost: float            # fraction slower
    source: str
    why: str = ""          # for a saver that replaces others: what it replaces and why


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

    @property
    def four_bit(self) -> bool:
        return any(s.key == QUANT and s.value == "nf4" for s in self.savers)

    def lines(self) -> list[str]:
        out = [self.summary()]
        out += [f"  {s.key} = {format_value(s.value)}: {s.label}, ~{s.cost * 100:.0f} % slower ({s.source})"
                + (f"; {s.why}" if s.why else "") for s in self.savers]
        if self.four_bit:
            out.append(f"  {NF4_EFFECT}")
        if any(s.key == T5Q for s in self.savers):
            out.append(f"  {T5_EFFECT}")
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
    """The savers this job could still turn on before swapping, cheapest first: caches, gradient
    checkpointing, 8-bit optimizer state, an 8-bit base (fp8, else int8). Swapping and nf4 follow in
    plan_fit."""
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
        add("fp8", QUANT, "fp8", "fp8 base")
        add("int8", QUANT, "int8", "int8 base")  # tried only where fp8 is refused or saves nothing
    return out


def plan_fit(cfg, arch: str, gpu_gib: float, images: int = 0) -> FitPlan | None:
    """The cheapest savers that make `cfg` fit `gpu_gib`; None for an architecture the model does not know."""
    before = estimate_memory(cfg, arch, images)
    if before is None:
        return None
    search = _Search(cfg, arch, images, gpu_gib, before)
    for saver in candidates(cfg, arch):
        if search.fits():
            break
        if saver.key == QUANT and search.has(QUANT):  # int8 only where fp8 was not taken
            continue
        tried = search.attempt(saver)
        if tried is None or tried.vram_gib >= search.est.vram_gib:  # refused here, or saves nothing for this job
            continue
        if saver.value == "int8" and tried.vram_gib > gpu_gib:  # int8 layers cannot be swapped: only if enough
            continue
        search.take(saver, tried)
    if not search.fits() and has_t5(arch):
        search.quantize_t5()
    if not search.fits():
        search.swap_blocks()
    swapped = search.est
    if not search.fits():
        search.four_bit_instead()
    plan = FitPlan(gpu_gib, search.fits(), before, search.est, search.chosen)
    if not plan.fits:
        plan.reason = search.reason(swapped)
    return plan


class _Search:
    """plan_fit's state: the job with the savers chosen so far (`trial`), them, and its estimate."""

    def __init__(self, cfg, arch: str, images: int, gpu_gib: float, before: MemoryEstimate):
        self.cfg, self.arch, self.images, self.gpu_gib = cfg, arch, images, gpu_gib
        self.trial, self.chosen, self.est = copy.deepcopy(cfg), [], before
        self.refused_four_bit = ""  # why the checks refuse an nf4 base for this job, when they do
        self.nf4_estimate: MemoryEstimate | None = None  # the job with an nf4 base, when it was tried
        self.swap_refused = ""  # why the checks refuse swapping for this job, when they do
        self.refusal = ""  # the checks' first new problem with the last saver attempted, if they refused it

    def fits(self, estimate: MemoryEstimate | None = None) -> bool:
        return (estimate or self.est).vram_gib <= self.gpu_gib

    def has(self, key: str) -> bool:
        return any(s.key == key for s in self.chosen)

    def attempt(self, saver: Saver, trial=None) -> MemoryEstimate | None:
        """The estimate with `saver` on as well, or None when the config checks refuse it with this job."""
        trial = self.trial if trial is None else trial
        tried = copy.deepcopy(trial)
        _set(tried, saver.key, saver.value)
        problems = self.new_problems(trial, tried)
        self.refusal = problems[0] if problems else ""
        return None if problems else estimate_memory(tried, self.arch, self.images)

    @staticmethod
    def new_problems(trial, tried) -> list[str]:
        from .config.checks import job_problems

        known = set(job_problems(trial, complete=False))
        return [p for p in job_problems(tried, complete=False) if p not in known]

    def take(self, saver: Saver, estimate: MemoryEstimate) -> None:
        _set(self.trial, saver.key, saver.value)
        self.chosen.append(saver)
        self.est = estimate

    def swap_blocks(self) -> None:
        """The smallest block-swap count that fits, or every block when none does."""
        blocks = len(ARCHS[self.arch].swap_blocks) if self.arch in ARCHS else 0
        swap = SPEED_COSTS["blocks_to_swap"]
        for count in range(self.trial.training.blocks_to_swap + 1, blocks + 1):
            saver = Saver(SWAP, count, f"{count} blocks swapped", 0.0, swap.source)
            tried = self.attempt(saver)
            if tried is None:  # refused with this job (torch.compile, an int8 base the user chose, ...)
                self.swap_refused = self.refusal
                return
            if self.fits(tried) or count == blocks:
                moved = next((line.gib for line in tried.parked if line.what.startswith("swapped")), 0.0)
                saver.cost = swap.slower * moved
                self.take(saver, tried)
                return

    def four_bit_instead(self) -> None:
        """nf4 in place of the 8-bit base and the swapping this search chose (nf4 layers cannot be swapped;
        what the user set stays, so a job written with blocks swapped gets no nf4). Taken when it fits."""
        if self.trial.training.base_quantization == "nf4":
            return
        trial = copy.deepcopy(self.trial)
        _set(trial, QUANT, self.cfg.training.base_quantization)
        _set(trial, SWAP, self.cfg.training.blocks_to_swap)
        cost = SPEED_COSTS["nf4"]
        replaced = [s.label for s in self.chosen if s.key in (QUANT, SWAP)]
        had_swapped = self.has(SWAP)
        why = (f"in place of {' and '.join(replaced)}: " if replaced else "") + (
            f"swapping every block still needs about {self.est.vram_gib:.1f} GiB" if had_swapped else
            f"blocks cannot be swapped in this job ({self.swap_refused or 'it has none to swap'})")
        saver = Saver(QUANT, "nf4", "nf4 base (4-bit)", cost.slower, cost.source, why)
        estimate = self.attempt(saver, trial)
        if estimate is None:
            self.refused_four_bit = self.refusal
            return
        self.nf4_estimate = estimate
        if not self.fits(estimate):
            return
        self.trial = trial
        self.chosen = [s for s in self.chosen if s.key not in (QUANT, SWAP)]
        self.take(saver, estimate)

    def quantize_t5(self) -> None:
        """An fp8 T5-XXL, else an nf4 one, when caching caption embeddings (T5 alone on the GPU) does not fit by
        itself: no saver of the denoiser's changes that phase. What the user set stays."""
        phase = self.est.phase(TEXT_CACHING)
        if phase is None or phase.gib <= self.gpu_gib or self.trial.training.t5_quantization != "none":
            return
        cost = SPEED_COSTS["t5"]
        why = ""
        for kind, label in (("fp8", "fp8 T5-XXL"), ("nf4", "nf4 T5-XXL (4-bit)")):
            saver = Saver(T5Q, kind, label, cost.slower, cost.source, why)
            tried = self.attempt(saver)
            if tried is None:
                return
            caching = tried.phase(TEXT_CACHING).gib
            if caching <= self.gpu_gib or kind == "nf4":
                self.take(saver, tried)
                return
            why = f"fp8 T5-XXL leaves caching its outputs at about {caching:.1f} GiB"

    def reason(self, swapped: MemoryEstimate) -> str:
        """Why the job does not fit even with every saver on: the peak phase and its largest part, and what
        the 4-bit base would have left."""
        peak = swapped.peak
        largest = max(peak.lines, key=lambda line: line.gib)
        nf4 = self.nf4_estimate
        four_bit = (f"; with an nf4 base instead, about {nf4.vram_gib:.1f} GiB, while {nf4.peak.name}" if nf4 else
                    f"; an nf4 base is refused for this job ({self.refused_four_bit})" if self.refused_four_bit
                    else "")
        return (f"about {swapped.vram_gib:.1f} GiB with every saver Kiln has on, while {peak.name} (the largest "
                f"part: {largest.what}, {largest.gib:.1f} GiB){four_bit}; lower the resolution or batch size, or "
                "use a larger GPU")


def apply_fit(cfg, plan: FitPlan) -> None:
    """Turn the plan's savers on in `cfg` (the run's own config)."""
    for saver in plan.savers:
        _set(cfg, saver.key, saver.value)


def _set(cfg, key: str, value) -> None:
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
