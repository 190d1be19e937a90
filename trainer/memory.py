"""The memory model behind `trainer check`: what a job needs on the GPU and in host RAM, as a breakdown by
component, from the parameter counts of the real architectures (Kiln's bundled configs) and per-dtype byte
sizes. Torch-free, so `check` answers in a second.

Exact: parameter counts (tests/test_memory.py rebuilds the bundled architectures and counts them), bytes per
dtype, gradients and optimizer state per parameter that learns. Estimated: activations, a constant per image at
the native resolution scaled by area and batch; their figures come from published measurements of SD training
until bench/gpu_suite.py measures them (docs/benchmarks.md). The RAM side is checked by bench/full_size.py."""
from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3
HALF, FULL = 2, 4  # bytes per value in fp16/bf16 and fp32


@dataclass(frozen=True)
class ArchFacts:
    unet: int
    text_encoders: tuple[int, ...]
    vae: int
    native: int  # native resolution (px)
    # LoRA parameters per unit of rank: UNet attention + projections, feed-forward, 3x3 conv; each text encoder
    lora_attention: int
    lora_ff: int
    lora_conv: int
    lora_text: tuple[int, ...]
    embeddings: tuple[int, ...]  # token-embedding table of each text encoder (textual inversion trains it)
    # Estimated UNet activations kept for backward, GiB per image at the native size in fp16/bf16, without and
    # with gradient checkpointing; VAE encoder and text encoder activations per image (what the caches avoid).
    unet_activations: tuple[float, float]
    vae_activations: float
    text_activations: float


ARCHS: dict[str, ArchFacts] = {
    "sd15": ArchFacts(unet=859_520_964, text_encoders=(123_060_480,), vae=83_653_863, native=512,
                      lora_attention=249_216, lora_ff=174_720, lora_conv=578_560, lora_text=(165_888,),
                      embeddings=(37_945_344,), unet_activations=(3.0, 1.0), vae_activations=0.8,
                      text_activations=0.05),
    "sd2": ArchFacts(unet=865_910_724, text_encoders=(340_387_840,), vae=83_653_863, native=768,
                     lora_attention=257_408, lora_ff=174_720, lora_conv=578_560, lora_text=(423_936,),
                     embeddings=(50_593_792,), unet_activations=(5.0, 1.6), vae_activations=1.8,
                     text_activations=0.1),
    "sdxl": ArchFacts(unet=2_567_463_684, text_encoders=(123_060_480, 694_659_840), vae=83_653_863, native=1024,
                      lora_attention=1_495_040, lora_ff=1_164_800, lora_conv=378_880, lora_text=(165_888, 737_280),
                      embeddings=(37_945_344, 63_242_240), unet_activations=(14.0, 3.0), vae_activations=3.2,
                      text_activations=0.15),
}
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


@dataclass
class MemoryEstimate:
    arch: str
    device: list[MemoryLine] = field(default_factory=list)  # what lives on the GPU while training
    ram: list[MemoryLine] = field(default_factory=list)     # host RAM at its peak (loading the model)
    savers: list[MemoryLine] = field(default_factory=list)  # GPU memory each saver removes (or would)

    @property
    def vram_gib(self) -> float:
        return sum(line.gib for line in self.device)

    total_gib = vram_gib  # the name `trainer check` used before the breakdown

    @property
    def ram_gib(self) -> float:
        return sum(line.gib for line in self.ram)

    def cpu_ram_gib(self) -> float:
        """Peak host RAM when training on the CPU: the device side lives in RAM too."""
        return max(self.ram_gib, PROCESS_RAM_GIB + self.vram_gib - CUDA_CONTEXT_GIB)

    def lines(self) -> list[str]:
        out = [f"GPU while training: about {self.vram_gib:.1f} GiB"]
        out += [f"  {line.what}: {line.gib:.2f} GiB{f'  ({line.note})' if line.note else ''}" for line in self.device]
        out.append(f"host RAM at its peak: about {self.ram_gib:.1f} GiB (on a CPU-only machine "
                   f"{self.cpu_ram_gib():.1f} GiB)")
        out += [f"  {line.what}: {line.gib:.2f} GiB{f'  ({line.note})' if line.note else ''}" for line in self.ram]
        if self.savers:
            out.append("memory savers (GPU):")
            out += [f"  {line.what}: {line.gib:+.2f} GiB  ({line.note})" for line in self.savers]
        return out


def trained_parts(cfg) -> tuple[str, bool]:
    """("lora" | "full" | "embedding", trains the text encoder)."""
    if cfg.method == "textual_inversion":
        return "embedding", True
    if cfg.method == "dreambooth":
        return ("lora" if cfg.dreambooth.use_lora else "full"), bool(cfg.dreambooth.train_text_encoder)
    return "lora", bool(cfg.lora.train_text_encoder)


def lora_parameters(facts: ArchFacts, lora, with_text: bool) -> int:
    unet = facts.lora_attention + (facts.lora_ff if lora.train_ff else 0)
    n = unet * lora.rank
    if lora.train_conv:
        n += facts.lora_conv * (lora.conv_rank or lora.rank)
    if with_text:
        n += sum(facts.lora_text) * lora.rank
    return n


def estimate_memory(cfg, arch: str, images: int = 0) -> MemoryEstimate | None:
    """The breakdown for `cfg` on `arch` ("sd15" | "sd2" | "sdxl"); None for an unknown architecture.
    `images`: dataset samples whose latents are cached (host RAM)."""
    facts = ARCHS.get(arch)
    if facts is None:
        return None
    tr = cfg.training
    half = tr.mixed_precision in ("fp16", "bf16")
    frozen = HALF if half else FULL
    vae_bytes = HALF if tr.mixed_precision == "bf16" else FULL  # SD VAEs overflow in fp16: fp32 under fp16
    kind, with_text = trained_parts(cfg)
    est = MemoryEstimate(arch)
    dev = est.device

    # weights: frozen ones in the training dtype, learning ones in fp32
    unet_bytes = FULL if kind == "full" else frozen
    dev.append(MemoryLine("UNet weights", facts.unet * unet_bytes / GIB, "fp32, it learns" if kind == "full"
                          else ("fp16/bf16" if half else "fp32")))
    text_full = kind == "full" and with_text
    text_bytes = FULL if text_full else frozen
    dev.append(MemoryLine("text encoder weights", sum(facts.text_encoders) * text_bytes / GIB,
                          "fp32, it learns" if text_full else ""))
    dev.append(MemoryLine("VAE weights", facts.vae * vae_bytes / GIB))
    if kind == "lora":
        learning = lora_parameters(facts, cfg.lora, with_text)
        dev.append(MemoryLine(f"LoRA weights (rank {cfg.lora.rank})", learning * FULL / GIB, "fp32"))
    elif kind == "embedding":
        learning = sum(facts.embeddings)  # the whole table gets gradients; the other rows are put back each step
        dev.append(MemoryLine("token-embedding tables in fp32, and their original rows", 2 * learning * FULL / GIB))
    else:
        learning = facts.unet + (sum(facts.text_encoders) if with_text else 0)
    dev.append(MemoryLine("gradients", learning * FULL / GIB, f"{learning / 1e6:.1f} M parameters learn"))
    opt_bytes = OPTIMIZER_BYTES.get(tr.optimizer, 8.0)
    dev.append(MemoryLine(f"optimizer state ({tr.optimizer})", learning * opt_bytes / GIB, f"{opt_bytes:g} B/param"))

    # activations: per image at the native size, scaled by area and batch; fp32 doubles them
    scale = (cfg.dataset.resolution or facts.native) ** 2 / facts.native**2 * tr.batch_size * (1 if half else 2)
    full_act, ckpt_act = (a * scale for a in facts.unet_activations)
    dev.append(MemoryLine("UNet activations", ckpt_act if tr.gradient_checkpointing else full_act,
                          "gradient checkpointing" if tr.gradient_checkpointing else "estimate"))
    vae_act = facts.vae_activations * scale
    if not tr.cache_latents:
        dev.append(MemoryLine("VAE encoder activations", vae_act, "latents encoded every step"))
    text_act = facts.text_activations * scale * (1 if with_text else 0.3)  # no graph kept when frozen
    text_cached = tr.cache_text_encoder_outputs and not with_text
    if not text_cached:
        dev.append(MemoryLine("text encoder activations", text_act))
    dev.append(MemoryLine("CUDA context and allocator slack", CUDA_CONTEXT_GIB))

    # what each saver removes (negative) or would remove if it were on
    est.savers.append(MemoryLine("gradient_checkpointing", ckpt_act - full_act,
                                 "on" if tr.gradient_checkpointing else "off: would save this"))
    est.savers.append(MemoryLine("cache_latents", -vae_act, "on" if tr.cache_latents else "off: would save this"))
    if not with_text:
        est.savers.append(MemoryLine("cache_text_encoder_outputs", -text_act,
                                     "on" if text_cached else "off: would save this"))
    if tr.optimizer not in ("adamw8bit", "lion8bit", "adafactor"):
        est.savers.append(MemoryLine("optimizer = adamw8bit", learning * (OPTIMIZER_BYTES["adamw8bit"] - opt_bytes)
                                     / GIB, "would save this"))
    if not half:
        frozen_params = facts.unet * (kind != "full") + sum(facts.text_encoders) * (not text_full)
        est.savers.append(MemoryLine("mixed_precision = bf16", -frozen_params * HALF / GIB,
                                     "half-precision frozen weights; activations halve too"))

    # host RAM: Kiln loads the base model in fp32 on the CPU before placing it; the latent cache lives there
    total_params = facts.unet + sum(facts.text_encoders) + facts.vae
    est.ram.append(MemoryLine("python + libraries", PROCESS_RAM_GIB))
    est.ram.append(MemoryLine("base model loaded in fp32", total_params * FULL / GIB))
    # Measured by bench/full_size.py (SD 1.5, docs/benchmarks.md): a single file is read whole (fp16 assumed,
    # as most are) before it becomes modules, +2.1 GiB; a diffusers folder loads per component, +0.8 GiB.
    single_file = str(cfg.model.base).lower().endswith((".safetensors", ".ckpt", ".pt", ".bin"))
    transient = total_params * HALF if single_file else 0.2 * total_params * FULL
    est.ram.append(MemoryLine("while loading", transient / GIB,
                              "the checkpoint file read whole" if single_file else "component state dicts"))
    if tr.cache_latents and images:
        side = (cfg.dataset.resolution or facts.native) // 8
        latent_bytes = HALF if half else FULL  # kept in the weight dtype (trainer.data.latent_cache)
        est.ram.append(MemoryLine(f"latent cache ({images} images)", images * 4 * side * side * latent_bytes / GIB))
    return est
