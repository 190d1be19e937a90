"""One GPU run that measures what a CPU cannot: Kiln's LoRA training speed and peak VRAM on the full-size SD 1.5
(512 px, batch 1 and 4) and SDXL (1024 px, batch 1, every saver on) architectures in fp16 and bf16 with 8-bit
AdamW; the same SD 1.5 jobs through a reference loop written the way the diffusers training examples write it
(so Kiln's speed is a ratio); the speed levers one at a time; the memory savers (fp8, int8 and nf4 bases, 3 and 6 blocks
swapped) against the plain SDXL savers case, peak VRAM vs the memory model's prediction and it/s; the transformer
families at 1024 px (Flux.1-dev with the fp8 base, and with 16 blocks swapped; SD 3.5 Medium), few steps each;
DreamBooth class-image generation batched vs one image at a time; Florence-2-large captioning (images/s through Kiln's
caption runner, batch 8, 64 new tokens). Random weights from the bundled configs: the shapes, time and memory of
the real models.

Writes gpu_suite.json and gpu_suite.md to --out (default: $OUT when set, else bench/results/).
  GPU (docs/benchmarks.md has the install line):  python3 bench/gpu_suite.py
  CPU, toy size, the whole code path (the test suite runs this):  python bench/gpu_suite.py --smoke
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.random_models import pipeline_class, save_random_model  # noqa: E402
from trainer.atomic import write_text_atomic  # noqa: E402
from trainer.progress import RunReporter  # noqa: E402


@dataclass
class Case:
    name: str
    arch: str
    resolution: int
    batch: int
    precision: str
    savers: bool = False  # gradient checkpointing on top of the default latent + text-encoder caches
    overrides: dict = field(default_factory=dict)  # "section.key": value (speed levers)
    reference: bool = False  # also time the diffusers-example loop on the same job
    mixed_aspect: bool = False  # train on the mixed-aspect dataset (buckets with short last batches)
    model: str = ""  # the bundled config of a transformer family's full-size model (trainer/models/configs/)
    variant: str | None = None  # the memory model's size of the family (families.MEMORY_VARIANTS), if not its default
    steps: int | None = None  # timed steps, where fewer than the suite's: a 12 B Flux step costs seconds

    @property
    def base_key(self) -> str:  # which prepared model the case trains
        return self.model or self.arch


FP8_BASE = {"training.base_quantization": "fp8"}
QUANTIZED = {kind: {"training.base_quantization": kind} for kind in ("int8", "nf4")}  # bitsandbytes' layers


def swap(blocks: int) -> dict:
    return {"training.blocks_to_swap": blocks}


def full_cases() -> list[Case]:
    cases = []
    for precision in ("fp16", "bf16"):
        for batch in (1, 4):
            cases.append(Case(f"sd15-512-bs{batch}-{precision}", "sd15", 512, batch, precision, reference=True))
        cases.append(Case(f"sdxl-1024-bs1-{precision}-savers", "sdxl", 1024, 1, precision, savers=True))
    # every saver plus the fp8 base (base_quantization): the frozen UNet layers in float8 (the 8 GB target's lever)
    cases.append(Case("sdxl-1024-bs1-bf16-savers-fp8", "sdxl", 1024, 1, "bf16", savers=True,
                      overrides=FP8_BASE))
    # training.blocks_to_swap: N = 0 is the savers case; 3 and 6 of SDXL's six 10-layer transformers in host RAM
    cases += [Case(f"sdxl-1024-bs1-bf16-savers-swap{n}", "sdxl", 1024, 1, "bf16", savers=True, overrides=swap(n))
              for n in (3, 6)]
    # int8 / nf4 (bitsandbytes) bases: their peak and it/s against the plain savers case and the fp8 one
    cases += [Case(f"sdxl-1024-bs1-bf16-savers-{kind}", "sdxl", 1024, 1, "bf16", savers=True, overrides=QUANTIZED[kind])
              for kind in QUANTIZED]
    return cases + flow_cases(1024, "flux-dev", "sd35-medium", swapped=16, steps=3)


def flow_cases(resolution: int, flux: str, sd3: str, swapped: int, steps: int | None) -> list[Case]:
    """The transformer families, every saver on (caches, gradient checkpointing): Flux.1 LoRA with the fp8 base
    (sd-scripts' 16 GB setting), the same with blocks swapped (its 12 GB one), and an SD 3.5 LoRA. `flux` and
    `sd3` name the models: bundled configs at full size, tiny models in the smoke run. Last among the training
    cases: each model is built, used and deleted in turn (Flux.1-dev in bf16 is 34 GB on a 64 GB disk)."""
    flux_name = f"{flux}-{resolution}-bs1-bf16-savers-fp8"
    variant = "sd3.5-medium" if sd3 == "sd35-medium" else None
    return [Case(flux_name, "flux", resolution, 1, "bf16", savers=True, overrides=FP8_BASE, model=flux, steps=steps),
            Case(f"{flux_name}-swap{swapped}", "flux", resolution, 1, "bf16", savers=True,
                 overrides={**FP8_BASE, **swap(swapped)}, model=flux, steps=steps),
            Case(f"{sd3}-{resolution}-bs1-bf16-savers", "sd3", resolution, 1, "bf16", savers=True, model=sd3,
                 variant=variant, steps=steps)]


def smoke_cases() -> list[Case]:
    """The same kinds of case at toy size on the tiny models."""
    return [Case("sd15-64-bs2-fp16", "sd15", 64, 2, "fp16", reference=True),
            Case("sdxl-64-bs1-bf16-savers", "sdxl", 64, 1, "bf16", savers=True),
            Case("sdxl-64-bs1-bf16-savers-fp8", "sdxl", 64, 1, "bf16", savers=True, overrides=FP8_BASE),
            Case("sdxl-64-bs1-bf16-savers-swap6", "sdxl", 64, 1, "bf16", savers=True, overrides=swap(6)),
            *[Case(f"sdxl-64-bs1-bf16-savers-{kind}", "sdxl", 64, 1, "bf16", savers=True, overrides=QUANTIZED[kind])
              for kind in QUANTIZED],
            *flow_cases(64, "tiny-flux", "tiny-sd3", swapped=4, steps=None)]


def lever_cases(arch: str, resolution: int, batch: int) -> list[Case]:
    """Each speed lever flipped from its default, alone, on one fp16 job; compare with the plain case of the
    same size (the two adamw cases with each other, and full_batches with buckets: both bucket the mixed-aspect
    dataset). Slowest last: torch.compile compiles for minutes."""
    from trainer.config.schema import FIELDS_BY_NAME

    bucketed = {"dataset.enable_bucket": True, "dataset.bucket_reso_steps": max(8, resolution // 8)}
    flips = {"channels_last": {"training.channels_last": True},
             "tf32-off": {"training.tf32": False},
             "cudnn_benchmark": {"training.cudnn_benchmark": True},
             "adamw-fused": {"training.optimizer": "adamw"},
             "adamw-foreach": {"training.optimizer": "adamw", "training.fused_optimizer": False},
             "buckets": bucketed,
             "full_batches": {**bucketed, "dataset.full_batches": True},
             "torch_compile": {"training.torch_compile": True}}
    return [Case(f"{arch}-{resolution}-bs{batch}-fp16-{label}", arch, resolution, batch, "fp16", overrides=overrides,
                 mixed_aspect=any(key.startswith("dataset.") for key in overrides))
            for label, overrides in flips.items() if all(key in FIELDS_BY_NAME for key in overrides)]


class StepClock(RunReporter):
    """A silent reporter that notes when each step ends and its loss, and the GPU peak of each phase of the job:
    loading, caching (latents, then captions) and training (from the UNet's placement to the end: steps,
    saving), as trainer/memory.py models them."""

    def __init__(self):
        super().__init__(console=False)
        self.times: list[float] = []
        self.losses: list[float] = []
        self.phase_peaks: dict[str, dict] = {}
        self.order = ["loading"]  # the phases in the order the job went through them

    def step(self, step, loss, lr, epoch):
        sync()
        self.times.append(time.perf_counter())
        self.losses.append(float(loss))

    def phase(self, name, **info):
        if name == "caching":
            self.enter("caching")
        super().phase(name, **info)

    def enter(self, name: str) -> None:
        self.note_peak()
        if name != self.order[-1]:
            self.order.append(name)

    def note_peak(self) -> None:
        """The current phase's peak so far (the highest of its visits); the counters start again."""
        if not torch.cuda.is_available():
            return
        sync()
        seen, now = self.phase_peaks.get(self.order[-1], {}), memory_figures()
        self.phase_peaks[self.order[-1]] = {k: max(v, seen.get(k, 0.0)) for k, v in now.items()}
        torch.cuda.reset_peak_memory_stats()

    def job_peaks(self) -> dict:
        """The peaks over the whole job: the highest phase's."""
        if not self.phase_peaks:
            return memory_figures()
        return {k: max(p[k] for p in self.phase_peaks.values()) for k in ("peak_allocated_gib", "peak_reserved_gib")}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_memory() -> None:
    import gc

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # one precision per process in accelerate; the suite runs several jobs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory_figures() -> dict:
    if not torch.cuda.is_available():
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def timing(stamps: list[float], warmup: int, batch: float) -> dict:
    """it/s from the median step after `warmup`, and images/s from `batch` samples a step (a mean, with
    buckets)."""
    steps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    median = statistics.median(steps)
    return {"it_per_s": round(1 / median, 3), "images_per_s": round(batch / median, 3), "timed_steps": len(steps)}


def job_dict(case: Case, base: Path, data: Path, out: Path, steps: int, smoke: bool) -> dict:
    training = {"max_steps": steps, "batch_size": case.batch, "learning_rate": 1e-4, "optimizer": "adamw8bit",
                "mixed_precision": case.precision, "cache_latents": True, "cache_text_encoder_outputs": True,
                "gradient_checkpointing": case.savers, "seed": 1, "cpu_mixed_precision": smoke}
    job = {"method": "lora", "model": {"base": str(base)},
           "dataset": {"dir": str(data), "resolution": case.resolution, "enable_bucket": False},
           "training": training, "lora": {"rank": 16, "alpha": 8},
           "output": {"dir": str(out), "name": case.name, "save_precision": "fp16", "overwrite": True,
                      "keep_states": 0}}
    if case.model:  # the transformer families' LoRA reloads in diffusers from its diffusers-layout copy
        job["output"]["save_diffusers"] = True
    for key, value in case.overrides.items():
        section, name = key.split(".")
        job[section][name] = value
    return job


def run_kiln(case: Case, base: Path, data: Path, work: Path, steps: int, warmup: int, smoke: bool) -> dict:
    from trainer import loop
    from trainer.config import parse_job
    from trainer.loop import default_paths, train

    cfg = parse_job(job_dict(case, base, data, work / "out", steps, smoke), source=f"<gpu_suite {case.name}>")
    reset_memory()
    clock = StepClock()
    real_place = loop.place_model

    def place_after_caching(*args):  # the training phase starts where the loop places the UNet
        clock.enter("training")
        real_place(*args)

    started = time.perf_counter()
    with mock.patch.object(loop, "place_model", place_after_caching):
        result = train(cfg, default_paths(cfg), clock)
    clock.note_peak()
    per_batch = samples_per_batch(cfg)
    figures = {"wall_s": round(time.perf_counter() - started, 1), **clock.job_peaks(),
               "phases": clock.order, "phase_peaks": clock.phase_peaks, **timing(clock.times, warmup, per_batch),
               "samples_per_batch": per_batch,
               "loss_finite": all(math.isfinite(x) for x in clock.losses)}
    figures["predicted_vram_gib"], figures["predicted_phases_gib"] = predicted_vram(cfg, case.arch, case.variant)
    del result
    reset_memory()
    figures["export_loads"] = export_loads(case, base, work / "out" / f"{case.name}.safetensors")
    return figures


def samples_per_batch(cfg) -> float:
    """The job's mean batch over an epoch: training.batch_size unless buckets leave short last batches (which
    cost about a full batch's time on a GPU, so images/s counts the samples actually trained)."""
    from trainer.data import TrainData, scan_dataset

    summary = TrainData(scan_dataset(cfg.dataset), cfg.dataset, cfg.training.batch_size, cfg.training.seed).summary()
    return round(summary["samples_per_epoch"] / summary["batches_per_epoch"], 3)


def predicted_vram(cfg, arch: str, variant: str | None = None) -> tuple[float | None, dict]:
    """What `trainer check`'s memory model predicts for this job on a GPU: its peak and each phase's (None and
    {} where it has no model)."""
    try:
        from trainer.memory import estimate_memory
    except ImportError:
        return None, {}
    estimate = estimate_memory(cfg, arch, variant=variant)
    if estimate is None:
        return None, {}
    return round(estimate.vram_gib, 2), {phase.name: round(phase.gib, 2) for phase in estimate.phases}


def export_loads(case: Case, base: Path, lora_file: Path) -> bool:
    """The exported LoRA loads into a fresh diffusers pipeline of the base model and changes its denoiser (the
    transformer families: their diffusers-layout copy)."""
    from trainer.families import family

    dtype = torch.float16 if torch.cuda.is_available() else torch.float32
    pipe = pipeline_class(case.arch).from_pretrained(base, torch_dtype=dtype)
    denoiser = getattr(pipe, family(case.arch).denoiser_component)
    before = sum(1 for n, _ in denoiser.named_parameters() if "lora_" in n)
    pipe.load_lora_weights(str(lora_file.with_name(f"{lora_file.stem}-diffusers") if case.model else lora_file))
    after = sum(1 for n, _ in denoiser.named_parameters() if "lora_" in n)
    del pipe
    return before == 0 and after > 0


def run_reference(case: Case, base: Path, steps: int, warmup: int, smoke: bool) -> dict:
    """The same LoRA job written the way diffusers' train_text_to_image_lora.py writes it: VAE and text encoder
    run every step, frozen weights in the training dtype, peft adapter, 8-bit AdamW, accelerate."""
    import bitsandbytes as bnb
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    from trainer.loop import enable_cpu_fp16
    from trainer.methods.lora import UNET_ATTENTION

    reset_memory()
    accelerator = Accelerator(mixed_precision=case.precision, cpu=not torch.cuda.is_available())
    if smoke and case.precision == "fp16":
        enable_cpu_fp16(accelerator)  # accelerate has no fp16 autocast on a CPU
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[case.precision]
    device = accelerator.device
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.to(device, dtype=dtype)
    # Kiln's LoRA targets, so both loops train the same adapter.
    unet.add_adapter(LoraConfig(r=16, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=list(UNET_ATTENTION)))
    cast_training_params(unet, dtype=torch.float32)
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = bnb.optim.AdamW8bit(lora_params, lr=1e-4, weight_decay=1e-2)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    unet.train()
    generator = torch.Generator(device).manual_seed(0)
    pixels = torch.rand((case.batch, 3, case.resolution, case.resolution), generator=generator, device=device)
    pixels = (pixels * 2 - 1).to(dtype)
    input_ids = tokenizer(["a photo of a kiln shape"] * case.batch, padding="max_length",
                          max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    input_ids = input_ids.to(device)
    stamps, losses = [], []
    started = time.perf_counter()
    for _ in range(steps):
        with accelerator.accumulate(unet):
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (case.batch,), device=device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            hidden = text_encoder(input_ids, return_dict=False)[0]
            pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            avg_loss = accelerator.gather(loss.repeat(case.batch)).mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(lora_params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
        losses.append(avg_loss.item())  # the example's per-step loss logging: one host sync, as Kiln has
        sync()
        stamps.append(time.perf_counter())
    figures = {"wall_s": round(time.perf_counter() - started, 1), **memory_figures(),
               **timing(stamps, warmup, case.batch), "loss_finite": all(math.isfinite(x) for x in losses)}
    del unet, vae, text_encoder, optimizer, accelerator
    reset_memory()
    return figures


def run_class_generation(base: Path, resolution: int, images: int, steps: int, batch: int, work: Path) -> dict:
    """DreamBooth class images through Kiln's generator: `images` at once in batches of `batch`, then singly."""
    from trainer.config import parse_job
    from trainer.dreambooth.class_images import ClassImageSpec
    from trainer.dreambooth.pipeline import ClassImageGenerator
    from trainer.models import load_base_model

    reset_memory()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    cfg = parse_job({"method": "dreambooth", "model": {"base": str(base)}, "dataset": {"dir": str(work)},
                     "dreambooth": {"instance_prompt": "sks dog", "class_prompt": "a dog"}}, source="<gpu_suite>")
    model = load_base_model(cfg.model, device=device, dtype=dtype)
    spec = ClassImageSpec(model=str(base), prompt="a photo of a dog", negative_prompt="", resolution=resolution,
                          steps=steps, guidance_scale=7.5, sampler="ddim")
    generate = ClassImageGenerator(model, spec)
    generate([0])  # warm-up: kernels, allocator
    figures = {}
    for label, size in (("batched", batch), ("one_at_a_time", 1)):
        sync()
        started = time.perf_counter()
        for first in range(0, images, size):
            generate(list(range(first, min(first + size, images))))
        sync()
        figures[f"{label}_images_per_s"] = round(images / (time.perf_counter() - started), 3)
    figures["speedup"] = round(figures["batched_images_per_s"] / figures["one_at_a_time_images_per_s"], 2)
    figures.update(memory_figures())
    del generate, model
    reset_memory()
    return figures


def run_captioning(work: Path, smoke: bool) -> dict:
    """Florence-2 captions through Kiln's caption runner (processor, generate, decode, edits, files written):
    Florence-2-large's shapes with random weights on the GPU (768 px, 577 image tokens, 3 beams), a tiny one
    for --smoke. Random weights stop at random places, so min_new_tokens makes every caption the full length."""
    from PIL import Image

    from trainer.caption import CaptionOptions
    from trainer.caption.florence2 import Florence2Captioner
    from trainer.caption.runner import caption_dataset
    from trainer.caption.tiny_vlm import save_tiny_florence2

    reset_memory()
    settings = dict(images=4, batch=2, new_tokens=4) if smoke else dict(images=32, batch=8, new_tokens=64)
    model = save_tiny_florence2(work / "florence2", large=not smoke)
    folder = work / "caption-images"
    folder.mkdir()
    for i in range(settings["images"] + settings["batch"]):  # the first batch warms up
        Image.new("RGB", (96, 80) if smoke else (1024, 768), (30 + i * 5, 90, 160)).save(folder / f"{i:03d}.png")
    options = CaptionOptions(dir=str(folder), method="florence2", model=str(model), batch_size=settings["batch"],
                             max_tokens=settings["new_tokens"], trigger="sks")
    options.validate()
    captioner = Florence2Captioner(options)
    captioner.generation["min_new_tokens"] = settings["new_tokens"]
    warm = sorted(folder.glob("*.png"))[:settings["batch"]]
    captioner.caption_batch(warm, [Image.open(p).convert("RGB") for p in warm])
    for path in warm:
        path.unlink()
    sync()
    started = time.perf_counter()
    report = caption_dataset(options, captioner)
    sync()
    seconds = time.perf_counter() - started
    figures = {"settings": ", ".join(f"{k} {v}" for k, v in settings.items()),
               "dtype": str(captioner.runtime.dtype).replace("torch.", ""),
               "captioned": len(report.captioned), "failed": len(report.failed),
               "images_per_s": round(len(report.captioned) / seconds, 3), **memory_figures()}
    del captioner
    reset_memory()
    return figures


class FlowModels(dict):
    """The transformer families' models, built when a case first needs one; building one deletes the one before
    (one full-size Flux.1 or SD 3.5 at a time fits the GPU machine's 64 GB disk beside the SD models)."""

    def __init__(self, work: Path, smoke: bool):
        super().__init__()
        self.work, self.smoke = work, smoke

    def __missing__(self, key: str) -> Path:
        from bench.random_models import save_random_flow_model
        from trainer.models import save_tiny_model

        self.drop()
        folder = self.work / f"model-{key}"
        if self.smoke:  # "tiny-flux": Kiln's tiny Flux
            self[key] = save_tiny_model(folder, arch=key.removeprefix("tiny-"))
        else:  # built on the GPU in bf16: seconds, and never an fp32 copy in host RAM
            self[key] = save_random_flow_model(folder, key, device="cuda", dtype=torch.bfloat16)
        return self[key]

    def drop(self) -> None:
        import shutil

        for folder in self.values():
            shutil.rmtree(folder, ignore_errors=True)
        self.clear()


def prepare_models(archs: set[str], work: Path, smoke: bool) -> dict[str, Path]:
    from trainer.models import save_tiny_model

    bases = {}
    for arch in sorted(archs):
        folder = work / f"model-{arch}"
        if smoke:
            bases[arch] = save_tiny_model(folder, arch=arch)
        else:
            bases[arch] = save_random_model(folder, arch, device="cuda" if torch.cuda.is_available() else "cpu")
    return bases


def prepare_data(resolutions: set[int], work: Path, n: int) -> dict[int, Path]:
    from tests.helpers import make_dataset

    return {res: make_dataset(work / f"data-{res}", n=n, size=res) for res in sorted(resolutions)}


def prepare_mixed_data(resolutions: set[int], work: Path) -> dict[int, Path]:
    """Per resolution 5 squares, 2 portraits (3:4) and 1 landscape (4:3): at batch 4 the buckets hold 5, 2 and 1
    samples, so 4 batches carry 8 samples; with dataset.full_batches 2 full batches do."""
    from PIL import Image

    from tests.helpers import make_dataset

    folders = {}
    for res in sorted(resolutions):
        folder = make_dataset(work / f"mixed-{res}", n=5, size=res)
        for name, size in (("portrait_0", (res * 3 // 4, res)), ("portrait_1", (res * 3 // 4, res)),
                           ("landscape_0", (res, res * 3 // 4))):
            Image.new("RGB", size, (40 + len(name) * 9, 120, 200)).save(folder / f"{name}.png")
            (folder / f"{name}.txt").write_text(f"kiln shape, {name}")
        folders[res] = folder
    return folders


def environment() -> dict:
    import accelerate
    import diffusers
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with contextlib.suppress(ImportError):
        import bitsandbytes
        info["bitsandbytes"] = bitsandbytes.__version__
    return info


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# gpu_suite ({'smoke, CPU toy size' if report['smoke'] else 'full size'}) - {env['device']}, "
             f"torch {env['torch']}, {env['date']}", "",
             "| case | it/s | samples/batch | images/s | peak alloc GiB | peak reserved GiB | predicted GiB | "
             "loss finite | export loads | reference images/s | Kiln / reference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["training"]:
        ref = row.get("reference") or {}
        ratio = round(row["images_per_s"] / ref["images_per_s"], 2) if ref else ""
        lines.append(f"| {row['case']} | {row['it_per_s']} | {row['samples_per_batch']} | {row['images_per_s']} | "
                     f"{row['peak_allocated_gib']} | "
                     f"{row['peak_reserved_gib']} | {row['predicted_vram_gib']} | {row['loss_finite']} | "
                     f"{row['export_loads']} | {ref.get('images_per_s', '')} | {ratio} |")
    lines += ["", "| case | phase | peak alloc GiB | peak reserved GiB | predicted GiB |", "|---|---|---|---|---|"]
    for row in report["training"]:
        lines += [f"| {row['case']} | {phase} | {measured.get('peak_allocated_gib')} | "
                  f"{measured.get('peak_reserved_gib')} | {predicted} |"
                  for phase, measured, predicted in phase_rows(row)]
    gen = report.get("class_generation")
    if gen:
        lines += ["", "| class images | batched images/s | one at a time images/s | speed-up |", "|---|---|---|---|",
                  f"| {gen['settings']} | {gen['batched_images_per_s']} | {gen['one_at_a_time_images_per_s']} | "
                  f"{gen['speedup']} |"]
    caption = report.get("captioning")
    if caption:
        lines += ["", "| Florence-2 captioning | dtype | images/s | peak alloc GiB |", "|---|---|---|---|",
                  f"| {caption['settings']} | {caption['dtype']} | {caption['images_per_s']} | "
                  f"{caption.get('peak_allocated_gib', '')} |"]
    if report["skipped"]:
        lines += ["", "skipped (time budget): " + ", ".join(report["skipped"])]
    lines += ["", f"total wall time: {report['wall_s']} s"]
    return "\n".join(lines) + "\n"


def phase_rows(row: dict) -> list[tuple[str, dict, float | str]]:
    """(phase, measured peaks, predicted GiB) per phase: the measured loading / caching / training, against the
    model's caching phases (their largest) and its training phase."""
    predicted = row.get("predicted_phases_gib") or {}
    caching = [gib for name, gib in predicted.items() if name.startswith("caching")]
    model = {"loading": "", "caching": max(caching) if caching else "", "training": predicted.get("training", "")}
    measured = row.get("phase_peaks") or {}
    return [(phase, measured.get(phase, {}), model[phase]) for phase in ("loading", "caching", "training")]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy size on the CPU: the whole code path, in seconds")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_suite.json / gpu_suite.md")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 20; smoke 1)")
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="start no training case after this many seconds (the rest are listed as skipped)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; use --smoke for the CPU code path")
    out = args.out or Path(os.environ.get("OUT") or REPO / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    warmup = 1 if smoke else 5
    steps = warmup + 1 + (args.steps or (1 if smoke else 20))
    core = smoke_cases() if smoke else full_cases()
    # Smoke: one lever at 64 px, and full_batches at 128 px (the smallest size whose buckets differ).
    levers = ([c for c in lever_cases("sd15", 64, 2) if c.name.endswith("channels_last")]
              + [c for c in lever_cases("sd15", 128, 2) if c.name.endswith("full_batches")]
              if smoke else lever_cases("sd15", 512, 4))
    core, levers = ([c for c in cases if args.only in c.name] for cases in (core, levers))
    started = time.perf_counter()
    report = {"smoke": smoke, "environment": environment(), "training": [], "skipped": []}

    def save() -> None:  # after every part, so a run cut short still leaves its figures
        report["wall_s"] = round(time.perf_counter() - started, 1)
        write_text_atomic(out / "gpu_suite.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(out / "gpu_suite.md", markdown(report))

    def train_case(case: Case) -> None:
        if time.perf_counter() - started > args.budget_s:
            report["skipped"].append(case.name)
            return
        print(f"[{time.perf_counter() - started:6.1f}s] {case.name}", flush=True)
        images = (mixed if case.mixed_aspect else data)[case.resolution]
        base = flow_models[case.model] if case.model else bases[case.arch]
        case_steps = warmup + 1 + case.steps if case.steps else steps
        row = {"case": case.name, **asdict(case), **run_kiln(case, base, images, work, case_steps, warmup, smoke)}
        if case.reference:
            row["reference"] = run_reference(case, bases[case.arch], steps, warmup, smoke)
        report["training"].append(row)
        print(f"         {json.dumps(row)}", flush=True)
        save()

    with tempfile.TemporaryDirectory(prefix="kiln-gpu-suite-") as tmp:
        work = Path(tmp)
        bases = prepare_models({c.arch for c in core + levers if not c.model} | {"sd15"}, work, smoke)
        flow_models = FlowModels(work, smoke)
        data = prepare_data({c.resolution for c in core + levers if not c.mixed_aspect}, work, n=4 if smoke else 8)
        mixed = prepare_mixed_data({c.resolution for c in levers if c.mixed_aspect}, work)
        for case in core:
            train_case(case)
        flow_models.drop()
        gen = (dict(resolution=64, images=2, steps=2, batch=2) if smoke
               else dict(resolution=512, images=8, steps=30, batch=4))
        print(f"[{time.perf_counter() - started:6.1f}s] class images {gen}", flush=True)
        report["class_generation"] = {"settings": ", ".join(f"{k} {v}" for k, v in gen.items()),
                                      **run_class_generation(bases["sd15"], work=work, **gen)}
        save()
        print(f"[{time.perf_counter() - started:6.1f}s] Florence-2 captioning", flush=True)
        report["captioning"] = run_captioning(work, smoke)
        save()
        for case in levers:
            train_case(case)
    save()
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
