"""The memory model behind `trainer check`: what a job needs on the GPU and in host RAM, as a breakdown by
component, from the parameter counts of the real architectures (Kiln's bundled configs) and per-dtype byte
sizes. Torch-free, so `check` answers in a second.

The GPU side is a list of phases in the order the loop runs them (trainer/loop.py, trainer/offload.py):
caching latents (the VAE alone), caching text-encoder outputs (the encoders alone), then training (the UNet
and what learns, without the parked VAE / encoders); the GPU peak is the largest phase. What each method
trains comes from its torch-free spec (trainer/methods/*_spec.py).

Exact: parameter counts (tests/test_memory.py rebuilds the bundled architectures and counts them), bytes per
dtype, gradients and optimizer state per parameter that learns. Estimated: activations, a constant per image at
the native resolution scaled by area and batch; their figures come from published measurements of SD training
until bench/gpu_suite.py measures them (docs/benchmarks.md). The RAM side is checked by bench/full_size.py."""
from __future__ import annotations

from dataclasses import dataclass, field

from .config.schema import BITSANDBYTES_KINDS
from .families import FAMILIES, MEMORY_VARIANTS, T5_XXL, T5_XXL_QUANTIZED, MemoryFacts, family

GIB = 1024**3
HALF, FULL = 2, 4  # bytes per value in fp16/bf16 and fp32


ArchFacts = MemoryFacts  # the name before the family layer
# Each family's facts (trainer/families: exact parameter counts, estimated activations), by family id.
ARCHS: dict[str, MemoryFacts] = {f.id: f.memory for f in FAMILIES.values() if f.memory is not None}
# Optimizer state, bytes per learning parameter: AdamW two fp32 moments; 8-bit AdamW two 8-bit moments (+ block
# scales); Lion one 8-bit moment; Prodigy four fp32 tensors (two moments, s, the initial weights); Adafactor
# factored second moments (rows + columns of each matrix, about nothing) and no first moment.
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.1, "lion8bit": 1.05, "prodigy": 16.0, "adafactor": 0.05}
PROCESS_RAM_GIB = 0.6  # python + torch + diffusers + transformers imported (bench/engine_step.py: 576-582 MiB)
CUDA_CONTEXT_GIB = 0.5  # CUDA context, cuBLAS workspaces and allocator slack


@dataclass
class MemoryLine:
    what: str
    gib: float
    note: str = ""

    def text(self, signed: bool = False) -> str:
        note = f"  ({self.note})" if self.note else ""
        return f"{self.what}: {self.gib:+.2f} GiB{note}" if signed else f"{self.what}: {self.gib:.2f} GiB{note}"


@dataclass
class MemoryPhase:
    """What the GPU holds during one phase of a run. The loop runs them one after the other, moving frozen
    modules off the GPU between them (trainer/offload.py), so the run's GPU peak is its largest phase."""
    name: str
    lines: list[MemoryLine] = field(default_factory=list)

    @property
    def gib(self) -> float:
        return sum(line.gib for line in self.lines)

    def add(self, what: str, gib: float, note: str = "") -> None:
        self.lines.append(MemoryLine(what, gib, note))


@dataclass
class MemoryEstimate:
    arch: str
    phases: list[MemoryPhase] = field(default_factory=list)  # GPU, in run order: caching, then training
    parked: list[MemoryLine] = field(default_factory=list)   # host RAM: modules waiting off the GPU while training
    ram: list[MemoryLine] = field(default_factory=list)      # host RAM at its peak (loading the model)
    savers: list[MemoryLine] = field(default_factory=list)   # GPU memory each saver removes from training (or would)
    notes: list[str] = field(default_factory=list)           # what the phases leave out

    def phase(self, name: str) -> MemoryPhase | None:
        return next((p for p in self.phases if p.name == name), None)

    @property
    def peak(self) -> MemoryPhase:
        return max(self.phases, key=lambda p: p.gib)

    @property
    def device(self) -> list[MemoryLine]:
        """What the GPU holds at its peak."""
        return self.peak.lines

    @property
    def vram_gib(self) -> float:
        return self.peak.gib

    total_gib = vram_gib  # the name `trainer check` used before the breakdown

    @property
    def ram_gib(self) -> float:
        return sum(line.gib for line in self.ram)

    def cpu_ram_gib(self) -> float:
        """Peak host RAM when training on the CPU: the training phase lives in RAM too, beside what is parked."""
        training = self.phase("training")
        parked = sum(line.gib for line in self.parked)
        return max(self.ram_gib, PROCESS_RAM_GIB + training.gib - CUDA_CONTEXT_GIB + parked)

    def lines(self) -> list[str]:
        peak = self.peak
        out = [f"GPU at its peak: about {self.vram_gib:.1f} GiB, while {peak.name} (one phase at a time; "
               "frozen modules wait in host RAM between them)"]
        for phase in self.phases:
            out.append(f"  {phase.name}: about {phase.gib:.1f} GiB{'  <- peak' if phase is peak else ''}")
            out += [f"    {line.text()}" for line in phase.lines]
        if self.parked:
            out.append("  parked in host RAM while training: " + ", ".join(line.text() for line in self.parked))
        out += [f"  note: {note}" for note in self.notes]
        out.append(f"host RAM at its peak: about {self.ram_gib:.1f} GiB (on a CPU-only machine "
                   f"{self.cpu_ram_gib():.1f} GiB)")
        out += [f"  {line.text()}" for line in self.ram]
        if self.savers:
            out.append("memory savers (GPU, while training):")
            out += [f"  {line.text(signed=True)}" for line in self.savers]
        return out


def lora_parameters(facts: ArchFacts, lora, with_text: bool) -> int:
    unet = facts.lora_attention + (facts.lora_ff if lora.train_ff else 0)
    n = unet * lora.rank
    if lora.train_conv:
        n += facts.lora_conv * (lora.conv_rank or lora.rank)
    if with_text:
        n += sum(facts.lora_text) * lora.rank
    return n


def captions_may_vary(cfg) -> bool:
    """Whether captions can differ from one sample to the next (shuffle, dropout, tag dropout, wildcards), as
    trainer.data.TrainData.captions_vary finds from the dataset: then text-encoder outputs are not cached. From
    the settings alone: wildcards count when they are on, whether or not a caption holds one."""
    d = cfg.dataset
    return bool(d.caption_dropout_rate or d.caption_tag_dropout_rate or d.shuffle_caption or d.wildcards
                or any(concept.get("shuffle_caption") for concept in d.concepts))


def estimate_memory(cfg, arch: str, images: int = 0, variant: str | None = None) -> MemoryEstimate | None:
    """The breakdown for `cfg` on family `arch`; None for an unknown family. `images`: dataset samples whose
    latents are cached (host RAM). `variant`: another size of the family (families.MEMORY_VARIANTS)."""
    from .methods.spec import spec_for

    facts = MEMORY_VARIANTS[variant][1] if variant in MEMORY_VARIANTS else ARCHS.get(arch)
    if facts is None:
        return None
    denoiser = "UNet" if family(arch).denoiser_component == "unet" else "transformer"
    tr, spec = cfg.training, spec_for(cfg.method)
    half = tr.mixed_precision in ("fp16", "bf16")
    frozen = HALF if half else FULL
    vae_bytes = HALF if tr.mixed_precision == "bf16" else FULL  # SD VAEs overflow in fp16: fp32 under fp16
    full_unet = spec.trains_full_unet(cfg)
    text_full = full_unet and spec.trains_text_encoder(cfg)  # a full fine-tune trains the text encoder whole
    text_learns = spec.text_encoder_learns(cfg)  # weights, LoRA layers or new token rows: runs every step
    latents_cached = tr.cache_latents
    text_cached = tr.cache_text_encoder_outputs and not text_learns and not captions_may_vary(cfg)
    est = MemoryEstimate(arch)

    # Activations kept for backward scale with area and batch (fp32 doubles them); the VAE's with its dtype.
    # The caches encode one image / one caption at a time.
    area = (cfg.dataset.resolution or facts.native) ** 2 / facts.native**2
    act = 1 if half else 2
    vae_act_image = facts.vae_activations * area * vae_bytes / HALF
    text_act_caption = facts.text_activations * act * (1 if text_learns else 0.3)  # no graph kept when frozen
    vae_weights = MemoryLine("VAE weights", facts.vae * vae_bytes / GIB, "fp32 under fp16" if vae_bytes == FULL
                             and half else "")
    text_weights = MemoryLine("text encoder weights", sum(facts.text_encoders) * (FULL if text_full else frozen)
                              / GIB, "fp32, it learns" if text_full else "")
    text_weights = quantized_t5(text_weights, arch, tr.t5_quantization, frozen)
    context = MemoryLine("CUDA context and allocator slack", CUDA_CONTEXT_GIB)

    caches = [("caching latents", latents_cached, vae_weights,
               MemoryLine("VAE encoder activations", vae_act_image, "one image at a time")),
              ("caching text-encoder outputs", text_cached, text_weights,
               MemoryLine("text encoder activations", text_act_caption, "one caption at a time"))]
    for name, cached, weights, activations in caches:
        if cached:  # the module alone on the GPU, then parked in host RAM while training
            est.phases.append(MemoryPhase(name, [weights, activations, context]))
            est.parked.append(weights)

    training = MemoryPhase("training")
    est.phases.append(training)
    # weights: frozen ones in the training dtype, learning ones in fp32
    fp8 = tr.base_quantization == "fp8" and half and not full_unet  # the config checks refuse the other cases
    if fp8:
        training.add(f"{denoiser} weights", (facts.fp8_layers + (facts.unet - facts.fp8_layers) * HALF) / GIB,
                     "fp8 base: linear/conv layers 1 B/param, norms fp16/bf16")
        if not tr.gradient_checkpointing:  # autograd keeps each layer's upcast weight until backward
            training.add(f"upcast {denoiser} layers kept for backward", facts.fp8_layers * HALF / GIB,
                         "fp8 base without gradient checkpointing")
    else:
        training.add(f"{denoiser} weights", facts.unet * (FULL if full_unet else frozen) / GIB,
                     "fp32, it learns" if full_unet else ("fp16/bf16" if half else "fp32"))
    if not text_cached:
        training.lines.append(text_weights)
    if not latents_cached:
        training.lines.append(vae_weights)
    learning = 0
    if spec.trains_lora(cfg):
        lora = lora_parameters(facts, cfg.lora, spec.trains_text_encoder(cfg))
        training.add(f"LoRA weights (rank {cfg.lora.rank})", lora * FULL / GIB, "fp32")
        learning += lora
    if spec.trains_embeddings(cfg):
        table = sum(facts.embeddings)  # the whole table gets gradients; the other rows are put back each step
        training.add("token-embedding tables in fp32, and their original rows", 2 * table * FULL / GIB)
        learning += table
    learning += (facts.unet if full_unet else 0) + (sum(facts.text_encoders) if text_full else 0)
    training.add("gradients", learning * FULL / GIB, f"{learning / 1e6:.1f} M parameters learn")
    opt_bytes = OPTIMIZER_BYTES.get(tr.optimizer, 8.0)
    training.add(f"optimizer state ({tr.optimizer})", learning * opt_bytes / GIB, f"{opt_bytes:g} B/param")
    full_act, ckpt_act = (a * area * tr.batch_size * act for a in facts.unet_activations)
    training.add(f"{denoiser} activations", ckpt_act if tr.gradient_checkpointing else full_act,
                 "gradient checkpointing" if tr.gradient_checkpointing else "estimate")
    vae_act = vae_act_image * tr.batch_size
    if not latents_cached:
        training.add("VAE encoder activations", vae_act, "latents encoded every step")
    text_act = text_act_caption * tr.batch_size
    if text_cached:
        if images:  # at most one entry per image (captions repeat); the UNet reads them from the device
            training.add(f"text-encoder output cache (up to {images} captions)",
                         images * facts.text_values * FULL / GIB)
    else:
        training.add("text encoder activations", text_act)
    training.lines.append(context)

    if tr.base_quantization in BITSANDBYTES_KINDS and not full_unet:
        add_quantized_base(training, facts, frozen, tr.base_quantization)
    if not full_unet:
        add_block_swap(est, training, tr, facts, 1.0 if fp8 else frozen)
    # what each saver removes from the training phase (negative) or would remove if it were on
    est.savers.append(MemoryLine("gradient_checkpointing", ckpt_act - full_act,
                                 "on" if tr.gradient_checkpointing else "off: would save this"))
    est.savers.append(MemoryLine("cache_latents", -(vae_act + vae_weights.gib),
                                 "on: the VAE waits in host RAM" if latents_cached else "off: would save this"))
    if not text_learns:
        why = ("on: the text encoders wait in host RAM" if text_cached else
               "on, but unused: captions vary (shuffle, dropout, wildcards)" if tr.cache_text_encoder_outputs
               else "off: would save this")
        est.savers.append(MemoryLine("cache_text_encoder_outputs", -(text_act + text_weights.gib), why))
    if half and not full_unet:
        fp8_saving = -facts.fp8_layers * (HALF - 1) / GIB
        est.savers.append(MemoryLine("base_quantization = fp8", fp8_saving if tr.gradient_checkpointing else 0.0,
                                     ("on" if fp8 else "off: would save this") if tr.gradient_checkpointing else
                                     "saves nothing without gradient checkpointing (backward keeps the upcast layers)"))
    if tr.optimizer not in ("adamw8bit", "lion8bit", "adafactor"):
        est.savers.append(MemoryLine("optimizer = adamw8bit", learning * (OPTIMIZER_BYTES["adamw8bit"] - opt_bytes)
                                     / GIB, "would save this"))
    if not half:
        frozen_params = facts.unet * (not full_unet) + sum(facts.text_encoders) * (not text_full and not text_cached)
        est.savers.append(MemoryLine("mixed_precision = bf16", -frozen_params * HALF / GIB,
                                     "half-precision frozen weights; activations halve too"))
    borrowed = ([vae_weights] if latents_cached else []) + ([text_weights] if text_cached else [])
    if borrowed and (cfg.sample.prompts or cfg.validation.split or cfg.validation.dir):
        est.notes.append(f"previews and validation borrow the parked {' and '.join(x.what for x in borrowed)} "
                         f"(+{sum(x.gib for x in borrowed):.2f} GiB) while they run, with their own activations "
                         "(not modelled)")

    # host RAM: Kiln loads the base model on the CPU before placing it (models.loading.base_load_dtype: straight
    # in bf16 under bf16 when only adapter layers learn, else in fp32); the latent cache lives there
    total_params = facts.unet + sum(facts.text_encoders) + facts.vae
    in_bf16 = tr.mixed_precision == "bf16" and spec.freezes_base(cfg)
    load_bytes = HALF if in_bf16 else FULL
    single_file = str(cfg.model.base).lower().endswith((".safetensors", ".ckpt", ".pt", ".bin"))
    # int8 / nf4 from a diffusers folder (or hub id): the loader quantizes the denoiser's linear layers as it
    # reads them (trainer/quantize_load.py), so they never sit in RAM in the load dtype; a single file is
    # converted whole first (assumed: a folder holds .safetensors weights, as diffusers saves them)
    as_read = tr.base_quantization in QUANTIZED_BYTES and not single_file and not full_unet
    est.ram.append(MemoryLine("python + libraries", PROCESS_RAM_GIB))
    loaded = total_params * load_bytes
    if as_read:
        loaded -= facts.linear_weights * (load_bytes - QUANTIZED_BYTES[tr.base_quantization])
    est.ram.append(MemoryLine(f"base model loaded in {'bf16' if in_bf16 else 'fp32'}", loaded / GIB,
                              f"denoiser linear layers {tr.base_quantization}, quantized as read" if as_read else ""))
    # Measured by bench/full_size.py (SD 1.5, docs/benchmarks.md): a single file is read whole (fp16 assumed,
    # as most are) before it becomes modules, +2.1 GiB in fp32 and in bf16; a diffusers folder loads per
    # component, +0.8 GiB into fp32 (a fifth of the fp32 model), +1.1 GiB into bf16 (0.55 of the bf16 model);
    # a denoiser quantized as read holds one layer at a time (bench/quantize_load_rss.py), so it leaves its share.
    read_whole = total_params - facts.unet if as_read else total_params
    transient = total_params * HALF if single_file else read_whole * (0.55 * HALF if in_bf16 else 0.2 * FULL)
    est.ram.append(MemoryLine("while loading", transient / GIB,
                              "the checkpoint file read whole" if single_file else "component state dicts"))
    if tr.cache_latents and images:
        side = (cfg.dataset.resolution or facts.native) // 8
        latent_bytes = HALF if half else FULL  # kept in the weight dtype (trainer.data.latent_cache)
        est.ram.append(MemoryLine(f"latent cache ({images} images)", images * family(arch).latent_channels * side * side * latent_bytes / GIB))
    return est


def add_block_swap(est: MemoryEstimate, training: MemoryPhase, tr, facts: MemoryFacts,
                   bytes_per_param: float) -> None:
    """training.blocks_to_swap (trainer/blockswap.py): the swapped blocks' frozen weights wait in host RAM,
    all but the two on the GPU at a time; the saver line says what the next count would save."""
    from .swap_blocks import swap_saving, swapped_indices

    sizes = facts.swap_blocks
    if not sizes:
        return
    count = min(tr.blocks_to_swap, len(sizes))
    saved = swap_saving(sizes, count) * bytes_per_param / GIB
    if count:
        training.add(f"denoiser blocks swapped to host RAM ({count} of {len(sizes)})", -saved,
                     "two of them on the GPU at a time")
        moved = sum(sizes[i] for i in swapped_indices(sizes, count)) * bytes_per_param / GIB
        est.parked.append(MemoryLine("swapped denoiser blocks (pinned)", moved,
                                     f"{count} blocks, copied in twice a step"))
    most = swap_saving(sizes, len(sizes)) * bytes_per_param / GIB
    est.savers.append(MemoryLine("blocks_to_swap", -saved if count else -most,
                                 f"on: {count} of {len(sizes)}" if count else
                                 f"off: all {len(sizes)} blocks would save this (needs gradient checkpointing)"))


# Bytes per linear weight when quantized: int8 1 B (its per-row scales are negligible); nf4 half a byte plus
# an fp32 scale per 64 weights (bitsandbytes' default blocksize, no double quantization).
QUANTIZED_BYTES = {"int8": 1.0, "nf4": 0.5 + 4 / 64}
T5_BYTES = {"fp8": 1.0, **QUANTIZED_BYTES}  # training.t5_quantization


def has_t5(arch: str) -> bool:
    return arch in FAMILIES and any(te.kind == T5_XXL for te in FAMILIES[arch].text_encoders)


def quantized_t5(weights: MemoryLine, arch: str, kind: str, frozen_bytes: int) -> MemoryLine:
    """The text encoders' weights with T5-XXL's linear layers stored in `kind` (training.t5_quantization)."""
    if kind not in T5_BYTES or not has_t5(arch):
        return weights
    saved = T5_XXL_QUANTIZED * (frozen_bytes - T5_BYTES[kind]) / GIB
    return MemoryLine(weights.what, weights.gib - saved, f"T5-XXL linear layers {kind} ({T5_BYTES[kind]:g} B/param)")


def add_quantized_base(training: MemoryPhase, facts: MemoryFacts, frozen_bytes: int, kind: str) -> None:
    """int8 / nf4 linear weights: QUANTIZED_BYTES each instead of the frozen dtype's."""
    if facts.linear_weights:
        per = QUANTIZED_BYTES[kind]
        training.add(f"{kind} linear layers (base_quantization)", -facts.linear_weights * (frozen_bytes - per) / GIB,
                     f"{facts.linear_weights / 1e6:.0f} M weights at {per:g} B")
