"""The one training loop. Every method (LoRA, DreamBooth, textual inversion) runs through `train`: set-up, then
one `for` loop whose whole step is visible below; the details live in named helpers."""
from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list

from . import checkpoint, diffusion, offload
from .blockswap import BlockSwapper
from .families import adapter_for
from .fp8 import settle as settle_fp8, store_unet_fp8
from .ema import make_ema, swapped_in
from .config.native import apply_native_sizes
from .data import LatentCache, TrainData
from .methods import make_method
from .methods.base import RunFacts
from .models import load_base_model
from .models.loading import base_load_dtype
from .inputs import check_inputs, final_files
from .oom import GpuMemoryError, out_of_memory_message
from .optim import build_lr_scheduler, build_optimizer, evaluation_weights
from .plan import build_plan, warmup_steps
from .preflight import guess_arch
from .config.schema import BITSANDBYTES_KINDS
from .quantize import quantize_linear_layers
from .quantize_load import QuantizedLoad
from .t5_quantize import quantize_text_encoders
from .paths import RunPaths, default_paths  # noqa: F401  (callers import them from here)
from .progress import RunReporter
from .sampling import generate_samples
from .validation import Validator, is_validation_due, split_validation

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "no": torch.float32}


class TrainingError(Exception):
    """A problem found while training (after validation passed), with advice for the user."""


@dataclass
class RunResult:
    status: str  # "done" | "stopped"
    step: int
    total_steps: int
    outputs: list[Path]
    model: object = field(default=None, repr=False)  # the trained BaseModel, for callers that inspect it
    ema: object = field(default=None, repr=False)  # its WeightsEMA when training.ema is on
    early_stopped: bool = False  # stopped by validation.early_stopping_patience (after saving, like a stop)
    best_validation: dict | None = None  # {"step", "loss", "path"} of the best validation loss


class NoControls:
    def poll(self) -> list[str]:
        return []


def train(cfg, paths: RunPaths, reporter: RunReporter | None = None, controls=None,
          resume: bool = False) -> RunResult:
    reporter = reporter or RunReporter(console=False)
    try:
        return _train(cfg, paths, reporter, controls, resume)
    except torch.OutOfMemoryError:  # one message: where it ran out and what would fit (no traceback)
        card = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
        message = out_of_memory_message(cfg, guess_arch(cfg), reporter.current_phase, reporter.steps_done, card)
        raise GpuMemoryError(message) from None


def _train(cfg, paths: RunPaths, reporter: RunReporter, controls, resume: bool) -> RunResult:
    controls = controls or NoControls()
    started_at = time.time()
    tr = cfg.training
    reporter.state("running")

    # --- set-up ---------------------------------------------------------------------------------------
    check_inputs(cfg, paths.output_dir, paths.state_dir, resume)  # the same gate as `trainer check`
    if resume and (finished := finished_run(cfg, paths.output_dir)) is not None:
        checkpoint.remove_output_leftovers(paths.output_dir, cfg.output.name)
        reporter.info(f"{finished.outputs[0]} exists: this run finished (killed after its final save, before it "
                      "could say so); nothing to resume")
        return finished
    acc = make_accelerator(cfg, reporter)
    if acc.is_main_process:  # a save killed in an earlier run left its temporary file
        checkpoint.remove_output_leftovers(paths.output_dir, cfg.output.name)
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    if world != tr.num_processes:  # `check` planned num_processes; a run of another size would not be that plan
        raise TrainingError(launch_mismatch(cfg, world))
    weight_dtype = DTYPES[acc.mixed_precision]
    wandb = import_wandb(cfg) if acc.is_main_process else None  # fails early, before the model loads

    # training.fit = "auto" plans before the load where the family is known from the job (as `check` does): the
    # plan may choose how the base is stored, and an int8 / nf4 base is quantized as it is read
    planned_arch = guess_arch(cfg) if tr.fit == "auto" else None
    if planned_arch is not None:
        apply_native_sizes(cfg, planned_arch)
        fit_to_gpu(cfg, planned_arch, device, reporter)
    reporter.phase("loading", message=f"loading base model {cfg.model.base}")
    # an int8 / nf4 base is quantized on the host as it is read, where the weights' layout allows it
    quantize = (QuantizedLoad(tr.base_quantization, weight_dtype, device)
                if tr.base_quantization in BITSANDBYTES_KINDS else None)
    model = load_base_model(cfg.model, device="cpu",
                            dtype=base_load_dtype(cfg, weight_dtype, acc.mixed_precision), quantize=quantize)
    if model.load_note:
        reporter.info(model.load_note)
    apply_native_sizes(cfg, model.arch)  # resolution / bucket sizes left at 0 follow the model
    # the family and size this run trains at: the UI's time estimates compare later jobs with this one's speed
    reporter.phase("loading", arch=model.arch, resolution=cfg.dataset.resolution,
                   message=f"{model.arch} model loaded; training at {cfg.dataset.resolution} px")
    if tr.fit == "auto" and planned_arch is None:  # the family was known only once the model loaded
        fit_to_gpu(cfg, model.arch, device, reporter)
    if model.notice:
        reporter.warning(model.notice)
    use_zero_terminal_snr(cfg, model)
    adapter = adapter_for(model.arch)  # the family's torch side: conditioning, objective, the denoiser call
    objective = adapter.objective(tr, model)
    method = make_method(cfg)
    torch.manual_seed(tr.seed)  # the initial LoRA / embedding weights come from the job's seed
    param_groups = method.prepare(model)
    cast_model(model, method, weight_dtype, acc.mixed_precision)  # on the CPU: each module goes to the device
    if tr.gradient_checkpointing:                                 # when its phase needs it (below)
        enable_gradient_checkpointing(model, method)
    if tr.base_quantization == "fp8":
        store_unet_fp8(model, method, weight_dtype)  # after the adapter layers exist, before the move
    if tr.t5_quantization != "none":  # frozen, on the host: the caching phase moves it to the device
        stored = quantize_text_encoders(model, tr.t5_quantization, weight_dtype)
        if stored:
            reporter.info(f"{tr.t5_quantization} T5-XXL: {stored / 1e6:.0f} M of its parameters stored "
                          f"{tr.t5_quantization}")
        else:  # SD 3 run without its optional T5
            reporter.warning(f'training.t5_quantization = "{tr.t5_quantization}": this model runs without '
                             "T5-XXL; nothing to quantize")
    apply_speed_levers(tr, model)

    # DreamBooth class images / generated regularisation images borrow the whole model while they are made.
    index, held_out = split_validation(cfg, method.load_dataset(model, reporter, paths, device))
    for w in index.warnings:
        reporter.warning(w)
    data = TrainData(index, cfg.dataset, tr.batch_size, tr.seed)
    plan = build_plan(cfg, data, world)
    reporter.info(f"{world} process(es) on {device}; effective batch {plan.effective_batch_size}; "
                  f"{plan.total_steps} steps")
    encode = LatentEncoder(model.vae)
    text = adapter.text_conditioner(model, cache=tr.cache_text_encoder_outputs and not method.trains_text_encoder
                                    and not data.captions_vary, clip_skip=tr.clip_skip)
    validator = Validator(cfg, model, method, held_out, text) if held_out is not None else None
    # Kohya's order: the caches first, each with only its own module on the device, then the UNet. The peak
    # is the larger of the caching and the training phase, not their sum.
    idle = build_caches(cfg, model, method, data, text, validator, acc, paths, reporter)
    offload.park(idle)
    # what the load left in full precision (or a plan made after the load chose): onto the device layer by layer
    if tr.base_quantization in BITSANDBYTES_KINDS:
        quantized = quantize_linear_layers(model.unet, device, tr.base_quantization, weight_dtype)
        if quantized:
            reporter.info(f"{tr.base_quantization} base: {quantized / 1e6:.0f} M denoiser parameters in "
                          f"{tr.base_quantization} linear layers")
    swapper = BlockSwapper(model.unet, tr.blocks_to_swap, device) if tr.blocks_to_swap else None
    if swapper is not None:
        reporter.info(f"{len(swapper.blocks)} denoiser blocks swapped: {swapper.swapped_bytes / 2**30:.2f} GiB of "
                      "frozen weights wait in host RAM and visit the GPU as they run")
    place_model(model, device, idle, swapper)

    try:
        optimizer = build_optimizer(tr.optimizer, param_groups, tr.learning_rate, tr.weight_decay,
                                    fused=tr.fused_optimizer)
    except ValueError as exc:  # a setting the optimizer cannot take: one line for the user, not a traceback
        raise TrainingError(str(exc)) from exc
    lr_scheduler = build_lr_scheduler(tr.lr_scheduler, optimizer, warmup_steps(tr, plan.total_steps), plan.total_steps,
                                      tr.lr_num_cycles, tr.lr_power)
    trainable = [p for g in param_groups for p in g["params"]]
    # DDP wraps only modules that learn (it refuses one without trainable parameters: textual inversion's UNet).
    # placed already (place_model): accelerate's placement would also bring the swapped blocks' weights
    wrapped = {name: acc.prepare(ddp_syncs_only_what_learns(mod), device_placement=[False])
               if any(p.requires_grad for p in mod.parameters())
               else mod for name, mod in method.trainable_modules(model).items()}
    unet = wrapped["unet"]
    if method.trains_text_encoder:
        text.text_encoders = [wrapped.get(f"text_encoder_{i}") for i in range(len(model.text_encoders))]
    optimizer = acc.prepare(optimizer)
    ema = make_ema(tr, method, model, device)

    start_step = 0
    if resume:
        start_step = restore_state(paths.state_dir, method, model, optimizer, lr_scheduler, acc, reporter, ema,
                                   validator)
    outputs: list[Path] = []

    def save(step: int, final: bool) -> None:
        reporter.phase("saving")
        if acc.is_main_process:
            stem = cfg.output.name if final else f"{cfg.output.name}-step{step:08d}"
            run = RunFacts(cfg, model, index, plan, step, started_at)
            with evaluation_weights(optimizer):  # schedule-free: save the evaluation point
                written = save_weights(method, run, paths.output_dir, stem, ema, cfg)
            if validator is not None and validator.saved(step, written[0][0]):  # the weights validation judged
                reporter.best_checkpoint(validator.best)
            for path, what in written:
                outputs.append(path)
                reporter.saved(path, step, f"final {what}" if final else what, [str(p) for p in outputs])
            if not final and cfg.output.keep_last_n_saves:
                best_step = validator.best_step if validator is not None else None
                prune_checkpoints(cfg, paths.output_dir, step, outputs, reporter, spare=best_step)
            if not final:
                state = checkpoint.save_state(paths.state_dir, step, training_state(
                    step, method, model, optimizer, lr_scheduler, acc, ema, validator), cfg.output.keep_states)
                reporter.saved(state, step, "training state", [str(p) for p in outputs])
        acc.wait_for_everyone()
        if not final:
            reporter.phase("training")

    def sample(step: int) -> None:
        if acc.is_main_process and cfg.sample.prompts:
            reporter.phase("sampling")
            with evaluation_weights(optimizer), swapped_in(ema, model, cfg.sample.with_ema):
                for path, prompt in generate_samples(model, cfg, step, paths.samples_dir, acc.autocast):
                    reporter.sample(path, step, prompt.prompt)
            reporter.phase("training")
        acc.wait_for_everyone()

    def validate(step: int) -> bool:
        """The validation loss now (rank 0; the others wait); whether early stopping says stop."""
        stop = False
        if acc.is_main_process:
            with swapped_in(ema, model, tr.ema_save == "ema"):  # judge the weights that get saved
                loss, _ = validator.validate(step, acc.autocast)
            reporter.validation(step, loss, validator.best)
            stop = validator.should_stop()
        return share_decision(acc, stop)

    # --- the loop -------------------------------------------------------------------------------------
    if acc.is_main_process:
        reporter.open_tensorboard(paths.log_dir)
        if wandb is not None:
            reporter.open_wandb(wandb, cfg.logging.wandb_project, cfg.logging.wandb_run_name or cfg.output.name,
                                cfg.to_dict(), paths.log_dir)
    reporter.start_training(start_step, plan.total_steps, plan.epochs)
    for m in (unet, *text.text_encoders):
        if m is not None:  # None: a text encoder the model runs without (SD3's T5)
            m.train(mode=m in wrapped.values())
    stop_requested = early_stopped = False
    step = start_step
    if start_step == 0 and cfg.sample.at_first_step:
        sample(0)
    for step in range(start_step, plan.total_steps):
        step_loss = torch.zeros((), device=device)
        for micro in range(plan.grad_accum):
            batch_index = plan.global_batch_index(step, micro, rank)
            noise_gen = seed_batch(tr.seed, batch_index, device)
            batch = data.batch_at(batch_index)
            # cached latents are kept in the weight dtype; the step computes in fp32 as it does for fresh ones
            latents = (batch.latents.to(device, torch.float32) if batch.latents is not None
                       else encode(batch.pixels, noise_gen))
            noise = objective.noise(latents, noise_gen)
            timesteps = objective.draw_timesteps(latents, noise_gen)
            noisy = objective.noisy(latents, noise, timesteps, noise_gen)
            target = objective.target(latents, noise, timesteps)
            last_micro = micro == plan.grad_accum - 1
            with no_sync(acc, wrapped.values(), active=not last_micro), acc.autocast():
                cond = text.encode(method.batch_captions(batch), device)
                pred = objective.prediction(adapter.predict(unet, noisy, timesteps, cond, batch), noisy, timesteps)
                losses = objective.losses(pred, target, timesteps, batch.pixel_weights)
                loss = (losses * method.example_weights(batch, device)).mean() / plan.grad_accum
                acc.backward(loss)
                if tr.base_quantization == "fp8":
                    settle_fp8(model.unet)
                step_loss += loss.detach()
        # One host sync per step, before the update: a NaN/inf loss stops the run instead of being trained on.
        loss_value = acc.reduce(step_loss, "mean").item()
        if not math.isfinite(loss_value):
            raise TrainingError(non_finite_advice(step + 1, acc.mixed_precision))
        if tr.max_grad_norm:
            acc.clip_grad_norm_(trainable, tr.max_grad_norm)
        optimizer.step()
        if not acc.optimizer_step_was_skipped:  # fp16 overflow steps are skipped by the grad scaler
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(model)

        done = step + 1
        if ema is not None:
            ema.update(model, done)
        reporter.step(done, loss_value, lr_scheduler.get_last_lr()[0], plan.epoch_of(step))
        commands = poll_commands(acc, controls, reporter)
        stop_requested = "stop" in commands
        out, smp = cfg.output, cfg.sample
        saving = done < plan.total_steps and (stop_requested or "save" in commands or
                                              is_due(plan, done, out.save_every_n_steps, out.save_every_n_epochs))
        if validator is not None and done < plan.total_steps and is_validation_due(cfg, done, saving):
            early_stopped = validate(done)
            saving, stop_requested = saving or early_stopped, stop_requested or early_stopped
        if saving:
            save(done, final=False)
        if done < plan.total_steps and ("sample" in commands or
                                        is_due(plan, done, smp.every_n_steps, smp.every_n_epochs)):
            sample(done)
        if stop_requested:
            break

    reporter.close()
    best = validator.best if validator is not None else None
    if stop_requested and step + 1 < plan.total_steps:
        reporter.finish()
        why = (f"early stopping: no better validation loss in {cfg.validation.early_stopping_patience} "
               f"validations; the best is step {best['step']} ({best['path']})" if early_stopped else
               "to continue: Continue in the Jobs tab, or the same command with --resume")
        reporter.info(f"stopped — saved at step {step + 1}/{plan.total_steps}; {why}")
        unet, text.text_encoders = None, list(model.text_encoders)
        wrapped.clear()
        leave_process_group(acc)
        return RunResult("stopped", step + 1, plan.total_steps, outputs, model, ema, early_stopped, best)
    if validator is not None:
        validate(plan.total_steps)
    save(plan.total_steps, final=True)
    if acc.is_main_process:
        checkpoint.remove_output_leftovers(paths.output_dir, cfg.output.name)
    sample(plan.total_steps)
    reporter.finish()
    best = validator.best if validator is not None else None  # now with the final file when it is the best
    unet, text.text_encoders = None, list(model.text_encoders)  # the DDP wrappers go first (leave_process_group)
    wrapped.clear()
    leave_process_group(acc)
    return RunResult("done", plan.total_steps, plan.total_steps, outputs, model, ema, False, best)


# --- helpers ------------------------------------------------------------------------------------------

def finished_run(cfg, output_dir: Path) -> RunResult | None:
    """A `--resume` of a run whose final files all exist: that run finished its last step and saved (a kill
    between the final save and the exit leaves exactly this), so it is done, with the step its final file
    records. None otherwise. With output.overwrite the final file may be an earlier run's, so it says nothing
    there: the resume continues from the newest state and replaces it."""
    finals = final_files(cfg, output_dir)
    if cfg.output.overwrite or not all(path.is_file() for path in finals):
        return None
    step = checkpoint.final_step(finals[0])
    return RunResult("done", step, step, finals)


def leave_process_group(acc: Accelerator) -> None:
    """Every rank leaves the process group together: on several machines a rank whose gloo threads are still up
    when machine 0's rendezvous store goes away aborts (SIGABRT) at exit. The DDP wrappers are freed first,
    while the group is up (the caller drops its own references): one freed only when train() returns, after
    the group was destroyed, tears the gloo group down with its peer gone, and was seen to hang a finished
    rank for good (two CPU ranks beside another distributed run)."""
    acc.free_memory()  # accelerate's own references to the prepared models and optimizers
    gc.collect()
    acc.end_training()


def make_accelerator(cfg, reporter) -> Accelerator:
    precision = cfg.training.mixed_precision
    cuda = torch.cuda.is_available()
    cpu_amp = not cuda and precision != "no" and cfg.training.cpu_mixed_precision
    if not cuda and precision != "no" and not cpu_amp:
        reporter.warning(f"no CUDA GPU: training in fp32 on the CPU (mixed_precision = {precision!r} needs a GPU, "
                         "or training.cpu_mixed_precision = true); this is very slow for real models")
        precision = "no"
    # A long pause on rank 0 keeps the other ranks waiting in a collective: allow a day, not the default 30 min.
    patience = InitProcessGroupKwargs(timeout=timedelta(hours=24))
    acc = Accelerator(mixed_precision=precision, cpu=not cuda, kwargs_handlers=[patience])
    if cpu_amp and precision == "fp16":
        enable_cpu_fp16(acc)
    return acc


def enable_cpu_fp16(acc: Accelerator) -> None:
    """accelerate keeps mixed_precision = "fp16" on a CPU but turns its autocast and grad scaler off, although
    torch runs both there. Switching them on gives the CPU the GPU's fp16 code path (autocast in accelerate's
    autocast() and prepared models, scaled backward, unscale before clipping, skipped overflow steps)."""
    acc.native_amp = True
    acc.scaler = torch.amp.GradScaler("cpu")


def launch_mismatch(cfg, world: int) -> str:
    n = cfg.training.num_processes
    return (f"{cfg.source}: training.num_processes = {n} but {world} process(es) started (`trainer run` on its own "
            f"is one); start the job from the app or with `trainer queue` (they launch {n}), or with `accelerate "
            f"launch --num_processes {n} -m trainer run ...`, or set training.num_processes = {world}")


def use_zero_terminal_snr(cfg, model) -> None:
    """training.zero_terminal_snr: rescale the model's noise schedule (training and previews share it)."""
    if not cfg.training.zero_terminal_snr:
        return
    if model.prediction_type != "v_prediction":
        raise TrainingError(f"{cfg.source}: training.zero_terminal_snr = true needs a v-prediction model, but "
                            f"{cfg.model.base} predicts {model.prediction_type!r}: at the last timestep an epsilon "
                            'model sees no image at all; set model.prediction_type = "v_prediction" (and train '
                            "long enough for the model to adapt) or turn zero_terminal_snr off")
    model.noise_scheduler = diffusion.zero_terminal_snr_scheduler(model.noise_scheduler)


def cast_model(model, method, weight_dtype, precision: str) -> None:
    """Frozen weights in the training dtype, trainable ones in fp32, the VAE in fp32 under fp16 (the SD VAEs
    overflow in fp16). Done on the CPU, before anything goes to the device."""
    trainable = set(method.trainable_modules(model).values())
    for mod in (model.unet, *model.text_encoders):
        if mod in trainable:
            # Casting only the frozen parameters: peft LoRA weights were made fp32 by the method.
            for p in mod.parameters():
                if not p.requires_grad and p.is_floating_point():  # not an int8 / nf4 base's quantized bytes
                    p.data = p.data.to(weight_dtype)
            frozen_part = any(not p.requires_grad for p in mod.parameters())
            if weight_dtype != torch.float32 and frozen_part and hasattr(mod, "get_input_embeddings"):
                cast_embedding_output(mod.get_input_embeddings(), weight_dtype)
        elif mod is not None:  # None: a text encoder the model runs without (SD3's T5)
            mod.to(dtype=weight_dtype)
    model.vae.to(dtype=torch.float32 if precision == "fp16" else weight_dtype)


def build_caches(cfg, model, method, data, text, validator, acc, paths, reporter) -> list:
    """The caching phase: the latents with only the VAE on the device, then every prompt the run can use
    with only the text encoders there. Returns the modules the caches leave idle while training (the loop
    parks them)."""
    tr, device, idle = cfg.training, acc.device, []
    if tr.cache_latents:
        reporter.phase("caching", message="encoding images to latents")
        vae_id = f"{model.name}:{model.hash}:{acc.mixed_precision}"
        cache_dir = paths.cache_dir / "latents" if tr.cache_latents_to_disk else None
        with offload.on_device([model.vae], device):
            cache = LatentCache(LatentEncoder(model.vae), vae_id, cache_dir, dtype=DTYPES[acc.mixed_precision])
            data.attach_latent_cache(cache)
        idle.append(model.vae)
    if text.cache is not None:
        reporter.phase("caching", message="encoding captions")
        # Captions do not vary, so epoch 0 holds every training caption; validation reads its epoch 0.
        captions = data.epoch_captions(0) + (validator.data.epoch_captions(0) if validator is not None else [])
        with offload.on_device(model.text_encoders, device), acc.autocast():  # as training would encode them
            text.precompute(method.prompts(captions), device)
        idle += model.text_encoders
    return idle


def fit_to_gpu(cfg, arch: str, device, reporter) -> None:
    """training.fit = "auto": the planner's savers for the job's GPU size, or the card this run is on (the
    same choice `trainer check --gpu` shows), turned on in `cfg` before anything is set up, and logged."""
    from .preflight import fit_run

    card = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    plan = fit_run(cfg, arch, card)
    if plan is None:
        reporter.info("training.fit = \"auto\": no GPU to fit (and no training.gpu_memory_gib); settings as written")
        return
    reporter.info(f"training.fit: {plan.summary()}")
    for line in plan.lines()[1:]:
        reporter.info(line.strip())
    if not plan.fits:
        reporter.warning(f"training.fit: {plan.summary()}; training goes on with every saver on")


def place_model(model, device, idle=(), swapper: BlockSwapper | None = None) -> None:
    """Every module that works while training on the training device; `idle` ones (parked) stay off it, and
    so do the swapped blocks' weights."""
    for mod in (model.unet, *model.text_encoders, model.vae):
        if mod is model.unet and swapper is not None:
            swapper.place(mod)
        elif mod is not None and mod not in idle:
            mod.to(device)


def apply_speed_levers(tr, model) -> None:
    """The GPU speed settings of [training] (each measured by bench/gpu_suite.py; none changes the math
    beyond rounding)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = tr.tf32
        torch.backends.cudnn.allow_tf32 = tr.tf32
        torch.backends.cudnn.benchmark = tr.cudnn_benchmark
    if tr.attention == "xformers":
        try:
            model.unet.enable_xformers_memory_efficient_attention()
        except (ImportError, ModuleNotFoundError, ValueError) as exc:
            raise TrainingError(f"training.attention = \"xformers\" but xformers cannot be used here ({exc}); "
                                "install it, or use training.attention = \"sdpa\"") from exc
    if tr.channels_last:
        model.unet.to(memory_format=torch.channels_last)
    if tr.torch_compile:
        model.unet.compile()  # in place: state_dict keys, peft and the exporters see the plain module


def cast_embedding_output(embedding: torch.nn.Module, dtype: torch.dtype) -> None:
    """A learning embedding table (textual inversion) stays fp32 inside a half-precision text encoder. Its
    output is cast to the encoder's dtype, so the new vectors are trained as the pipeline uses them at
    inference; CPU autocast would otherwise meet an fp32 input and a half layer-norm weight and refuse."""
    if embedding.weight.requires_grad and embedding.weight.dtype != dtype:
        embedding.register_forward_hook(lambda _module, _inputs, output: output.to(dtype))


def ddp_syncs_only_what_learns(module: torch.nn.Module) -> torch.nn.Module:
    """DDP broadcasts every parameter from rank 0 when it wraps a module. Every rank has loaded the same base
    weights, so only what learns needs it: the frozen ones are left out, which spares broadcasting the base
    model at start and lets an fp8 base work (float8 tensors cannot be broadcast: gloo says "Invalid scalar
    type"). Outside DDP this only marks names."""
    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
    return module


def enable_gradient_checkpointing(model, method) -> None:
    model.unet.enable_gradient_checkpointing()
    if method.trains_text_encoder:
        for te in model.text_encoders:
            if te is not None:
                te.gradient_checkpointing_enable()


class LatentEncoder:
    """pixels in [-1, 1] -> scaled latents, sampling the VAE's distribution with the caller's generator."""

    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        vae = self.vae
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        # Cached latents (no generator) take the distribution's mean: a pure function of the image, whatever
        # batch it was encoded in. The SD VAEs' spread is tiny, so this loses nothing worth keeping.
        latents = dist.sample(generator=generator) if generator is not None else dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).float()


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from several integers (seed, step, rank, stream)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def seed_batch(seed: int, index: int, device) -> torch.Generator:
    """All randomness of one micro-batch comes from its global index: the global RNG (dropout) is re-seeded
    and the noise/timestep generator is fresh. So a resumed run replays exactly, and a global batch gives the
    same result whether it is split across processes or accumulated in one."""
    torch.manual_seed(mix_seed(seed, index, 0))
    return torch.Generator(device).manual_seed(mix_seed(seed, index, 1))


def is_due(plan, done: int, every_n_steps: int, every_n_epochs: int) -> bool:
    """Whether a periodic save/sample falls on optimizer step `done`: every N steps, or at the end of every
    N-th epoch (an epoch ends at the step that consumes its last batch; one step may end several)."""
    if every_n_steps and done % every_n_steps == 0:
        return True
    if not every_n_epochs:
        return False
    finished = [done * plan.batches_per_step // plan.batches_per_epoch for done in (done - 1, done)]
    return finished[1] // every_n_epochs > finished[0] // every_n_epochs


@contextlib.contextmanager
def no_sync(acc: Accelerator, modules, active: bool):
    """Skip the DDP gradient all-reduce on all but the last micro-batch of an accumulated step."""
    with contextlib.ExitStack() as stack:
        if active:
            for m in modules:
                stack.enter_context(acc.no_sync(m))
        yield


def share_decision(acc: Accelerator, value):
    """Rank 0's decision, given to every process (they must all save or stop at the same step)."""
    if acc.num_processes > 1:
        box = [value]
        broadcast_object_list(box, from_process=0)
        value = box[0]
    return value


def poll_commands(acc: Accelerator, controls, reporter) -> list[str]:
    """Commands from the UI or signals, read by rank 0 and shared with every process (they must all save,
    sample and stop at the same step). A pause blocks here until resume or stop."""
    commands = controls.poll() if acc.is_main_process else []
    if acc.is_main_process and "pause" in commands and "stop" not in commands:
        reporter.state("paused")
        while True:
            time.sleep(0.25)
            more = controls.poll()
            if "resume" in more or "stop" in more:
                reporter.state("running")
                commands = [c for c in more if c != "resume"]
                break
    return share_decision(acc, commands)


def non_finite_advice(step: int, precision: str) -> str:
    tip = "use mixed_precision = \"bf16\" if your GPU supports it, or " if precision == "fp16" else ""
    return (f"the loss became NaN/inf at step {step}; training stopped instead of learning garbage. "
            f"Try a lower training.learning_rate, {tip}set training.max_grad_norm = 1.0")


def import_wandb(cfg):
    """The wandb module when logging.wandb asks for it (it is never required, so never imported otherwise)."""
    if not cfg.logging.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise TrainingError(f"{cfg.source}: logging.wandb = true but the wandb package is not installed; install "
                            "it (.venv/bin/python -m pip install wandb, then `wandb login`) or set logging.wandb = "
                            "false") from None
    return wandb


def prune_checkpoints(cfg, folder: Path, step: int, outputs: list[Path], reporter, spare: int | None) -> None:
    """output.keep_last_n_saves: older step files go (never the best by validation, `spare`)."""
    for old in checkpoint.prune_step_files(folder, cfg.output.name, cfg.output.keep_last_n_saves, step, spare):
        outputs[:] = [p for p in outputs if p != old]
        reporter.info(f"removed old checkpoint {old} (output.keep_last_n_saves)")


def save_weights(method, run: RunFacts, folder: Path, stem: str, ema, cfg) -> list[tuple[Path, str]]:
    """STEM.safetensors (and with training.ema_save = "both" STEM-ema.safetensors); (path, what) pairs."""
    dtype = DTYPES[cfg.output.save_precision]
    main = folder / f"{stem}.safetensors"
    if ema is None:
        return [(method.save(main, run, dtype), "weights")]
    if cfg.training.ema_save == "ema":
        with ema.applied(run.model):
            return [(method.save(main, run, dtype), "EMA weights")]
    written = [(method.save(main, run, dtype), "weights")]
    with ema.applied(run.model):
        written.append((method.save(folder / f"{stem}-ema.safetensors", run, dtype), "EMA weights"))
    return written


def training_state(step, method, model, optimizer, lr_scheduler, acc, ema=None, validator=None) -> dict:
    return {
        "step": step,
        "trainable": method.trainable_state(model),
        "ema": ema.state_dict() if ema is not None else None,
        "validation": validator.state_dict() if validator is not None else None,
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }


def restore_state(state_dir: Path, method, model, optimizer, lr_scheduler, acc, reporter, ema=None,
                  validator=None) -> int:
    path = checkpoint.latest_state(state_dir)
    if path is None:
        reporter.warning(f"--resume: no saved training state in {state_dir}; starting from step 0")
        return 0
    state = checkpoint.load_state(path)
    method.load_trainable_state(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if acc.scaler is not None and state.get("scaler"):
        acc.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if ema is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])
    elif ema is not None:
        ema.start_from(state["trainable"])
        reporter.warning(f"{path} holds no EMA weights (training.ema was off); the average starts from the "
                         "resumed weights")
    if validator is not None and state.get("validation"):
        validator.load_state_dict(state["validation"])
    reporter.info(f"resumed from {path} (step {state['step']})")
    return int(state["step"])
