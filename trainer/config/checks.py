"""Checks that involve more than one field: conflicts and method requirements (errors), and suspicious but
legal values (warnings). They read a built JobConfig, so callers can re-check a config they changed."""
from __future__ import annotations

from .job import JobConfig
from ..families import FAMILIES, FLOW
from .schema import BITSANDBYTES_KINDS, CHOICE, FIELDS, FIELDS_BY_NAME, METHODS, TABLE_LIST
from .values import format_value

# Method rules come from the methods' torch-free specs (trainer/methods/*_spec.py), imported where used: the
# specs import this package's schema, so a module-level import would be circular.


def _show(cfg: JobConfig, name: str) -> str:
    return f"{name} = {format_value(cfg.get(name))}"


def job_problems(cfg: JobConfig, complete: bool = True) -> list[str]:
    """Errors between fields. With complete=False (a preset or a half-filled form) values a user still has to
    enter (prompts, token) are not required."""
    from ..methods.spec import spec_for

    problems: list[str] = []
    data, training = cfg.dataset, cfg.training
    if complete and cfg.method in METHODS:
        problems += spec_for(cfg.method).requirements(cfg)
    sizes_known = data.resolution and data.min_bucket_reso and data.max_bucket_reso  # 0 = from the model
    if data.min_bucket_reso and data.max_bucket_reso and data.max_bucket_reso < data.min_bucket_reso:
        problems.append(f"{_show(cfg, 'dataset.max_bucket_reso')} is smaller than "
                        f"{_show(cfg, 'dataset.min_bucket_reso')} (max must be >= min)")
    elif sizes_known and data.enable_bucket and not data.min_bucket_reso <= data.resolution <= data.max_bucket_reso:
        problems.append(f"{_show(cfg, 'dataset.resolution')} is outside the bucket range "
                        f"dataset.min_bucket_reso = {data.min_bucket_reso} .. dataset.max_bucket_reso = "
                        f"{data.max_bucket_reso} (change one, or set dataset.enable_bucket = false)")
    problems += _network_type_problems(cfg)
    if training.cache_latents and data.random_crop:
        problems.append("training.cache_latents = true conflicts with dataset.random_crop = true (cached latents "
                        "are encoded once, so crops cannot vary; turn one of them off)")
    problems += _objective_problems(cfg)
    problems += _fp8_problems(cfg)
    problems += _swap_problems(cfg)
    problems += _int8_problems(cfg)
    if cfg.model.arch in FAMILIES:  # the family is named: what it cannot do is known before any model loads
        problems += family_problems(cfg, FAMILIES[cfg.model.arch])
    problems += _concept_weight_problems(cfg)
    return problems


def _concept_weight_problems(cfg: JobConfig) -> list[str]:
    """Concepts whose every image has loss_weight = 0 train a LoRA that stays zero: nothing to learn from."""
    learning = [(n, c) for n, c in enumerate(cfg.dataset.concepts or [], start=1) if not c.get("is_regularization")]
    if cfg.dataset.dir or not learning or any(c.get("loss_weight", 1.0) for _, c in learning):
        return []
    names = ", ".join(f"dataset.concepts[{n}].loss_weight = 0" for n, _ in learning)
    return [f"{names}: every image to learn from has loss weight 0, so training would learn nothing (an all-zero "
            "result); give at least one concept a loss_weight above 0"]


def _int8_problems(cfg: JobConfig) -> list[str]:
    """training.base_quantization = "int8" / "nf4" replaces the frozen UNet's linear layers with bitsandbytes'
    quantized ones: a UNet that learns cannot be quantized, DoRA reads its base layer's weight (quantized here),
    and the block swapper moves plain tensors (a quantized layer's scales live beside its weight)."""
    from ..methods.spec import spec_for

    training = cfg.training
    kind = training.base_quantization
    if kind not in BITSANDBYTES_KINDS or cfg.method not in METHODS:
        return []
    show = f'training.base_quantization = "{kind}"'
    if spec_for(cfg.method).trains_full_unet(cfg):
        return _needs_frozen_unet(cfg, show, 'base_quantization = "none"')
    if cfg.lora.dora:
        return [f"{show} does not work with lora.dora = true (DoRA reads the base layer's weight); use "
                'base_quantization = "fp8" or turn DoRA off']
    if training.blocks_to_swap:
        return [f"{show} conflicts with {_show(cfg, 'training.blocks_to_swap')} ({kind} layers keep their scales "
                'beside the weight); use base_quantization = "fp8" with swapping']
    return []


def _needs_frozen_unet(cfg: JobConfig, setting: str, off: str, why: str = "") -> list[str]:
    """The refusal of a memory saver that works on frozen UNet weights only, for a method whose every UNet
    weight learns (full DreamBooth: its LoRA variant is the way out; fine-tune)."""
    dreambooth = cfg.method == "dreambooth"
    how = " with dreambooth.use_lora = false" if dreambooth else ""
    fix = "dreambooth.use_lora = true or " if dreambooth else ""
    return [f"{setting} needs a frozen UNet, but method = {format_value(cfg.method)}{how} trains every UNet "
            f"weight{why}; set {fix}{off}"]


def _swap_problems(cfg: JobConfig) -> list[str]:
    """training.blocks_to_swap moves frozen weights; without gradient checkpointing the graph keeps every
    block's weights on the GPU until backward, so swapping would save nothing."""
    from ..methods.spec import spec_for

    training = cfg.training
    if not training.blocks_to_swap or cfg.method not in METHODS:
        return []
    if spec_for(cfg.method).trains_full_unet(cfg):
        return _needs_frozen_unet(cfg, _show(cfg, 'training.blocks_to_swap'), "training.blocks_to_swap = 0")
    if not training.gradient_checkpointing:
        return [f"{_show(cfg, 'training.blocks_to_swap')} needs training.gradient_checkpointing = true (without "
                "it backward keeps every block's weights on the GPU, and swapping saves nothing)"]
    if training.torch_compile:
        return [f"{_show(cfg, 'training.blocks_to_swap')} conflicts with training.torch_compile = true (the "
                "swap hooks run between the compiled layers); turn one of them off"]
    return []


def _fp8_problems(cfg: JobConfig) -> list[str]:
    """training.base_quantization = "fp8" stores frozen UNet weights; a UNet that learns has none, and fp32
    compute gains nothing from an fp8 copy but its rounding."""
    from ..methods.spec import spec_for

    if cfg.training.base_quantization != "fp8" or cfg.method not in METHODS:
        return []
    show = 'training.base_quantization = "fp8"'
    if spec_for(cfg.method).trains_full_unet(cfg):
        return _needs_frozen_unet(cfg, show, 'training.base_quantization = "none"', " (fp8 weights cannot learn)")
    if cfg.training.mixed_precision == "no":
        return [f'{show} needs training.mixed_precision = "fp16" or "bf16" (the fp8 weights are upcast to that '
                "dtype for each layer; fp32 compute would keep fp32's cost and add fp8's rounding)"]
    return []


def _objective_problems(cfg: JobConfig) -> list[str]:
    """Loss options, validation and early stopping (issue 15)."""
    problems: list[str] = []
    training, validation = cfg.training, cfg.validation
    if training.min_timestep >= training.max_timestep:
        problems.append(f"{_show(cfg, 'training.min_timestep')} must be below "
                        f"{_show(cfg, 'training.max_timestep')} (timesteps are drawn from min up to max - 1)")
    if training.zero_terminal_snr and cfg.model.prediction_type == "epsilon":
        problems.append('training.zero_terminal_snr = true needs a v-prediction model, but model.prediction_type '
                        '= "epsilon" (at the last timestep an epsilon model has nothing to see; use "v_prediction")')
    if validation.split and validation.dir:
        problems.append(f"{_show(cfg, 'validation.split')} and {_show(cfg, 'validation.dir')} are both set; "
                        "use one (a split of the training images, or a folder)")
    if validation.early_stopping_patience and not (validation.split or validation.dir):
        problems.append(f"{_show(cfg, 'validation.early_stopping_patience')} needs validation images: set "
                        "validation.split or validation.dir")
    return problems


def _network_type_problems(cfg: JobConfig) -> list[str]:
    """Options peft's LoHa/LoKr layers do not have (they are LoRA-only)."""
    lora = cfg.lora
    from ..methods.spec import spec_for

    trains_network = cfg.method in METHODS and spec_for(cfg.method).trains_lora(cfg)
    if not trains_network or lora.type not in ("loha", "lokr"):
        return []
    kind = f"lora.type = {format_value(lora.type)}"
    problems = []
    if lora.dora:
        problems.append(f'lora.dora = true needs lora.type = "lora" or "locon" (DoRA is not available with {kind})')
    if lora.dropout:
        problems.append(f"{_show(cfg, 'lora.dropout')} is not available with {kind} (set it to 0)")
    if cfg.output.save_diffusers:
        problems.append(f"output.save_diffusers = true is not available with {kind} (diffusers loads LoRA only; "
                        "the .safetensors loads in ComfyUI and A1111)")
    return problems


def job_warnings(cfg: JobConfig) -> list[str]:
    """Legal values that are probably mistakes."""
    from ..methods.spec import common_warnings, spec_for

    warnings: list[str] = []
    training = cfg.training
    if cfg.method in METHODS:
        warnings += spec_for(cfg.method).warnings(cfg) + common_warnings(cfg)
    if training.lr_scheduler == "constant_with_warmup" and training.lr_warmup_steps == 0:
        warnings.append('training.lr_scheduler = "constant_with_warmup" with training.lr_warmup_steps = 0 '
                        "has no warmup")
    if training.lr_num_cycles > 1 and training.lr_scheduler != "cosine_with_restarts":
        warnings.append(f"{_show(cfg, 'training.lr_num_cycles')} has no effect unless training.lr_scheduler = "
                        '"cosine_with_restarts"')
    if training.cache_latents_to_disk and not training.cache_latents:
        warnings.append("training.cache_latents_to_disk = true has no effect while training.cache_latents = false")
    if cfg.sample.every_n_steps and not cfg.sample.prompts:
        warnings.append(f"{_show(cfg, 'sample.every_n_steps')} but sample.prompts is empty, so no previews are made")
    warnings += _objective_warnings(cfg)
    warnings += _same_folder_warnings(cfg)
    if cfg.method in METHODS:
        warnings += [f"{_show(cfg, f.name)} is set but method {format_value(cfg.method)} does not use it"
                     for f in FIELDS if cfg.method not in f.methods and cfg.get(f.name) != f.default]
    return warnings


def _objective_warnings(cfg: JobConfig) -> list[str]:
    training = cfg.training
    warnings: list[str] = []
    ema_keys = ("training.ema_decay", "training.ema_every_n_steps", "training.ema_on_cpu", "training.ema_save",
                "sample.with_ema")
    if not training.ema:
        warnings += [f"{_show(cfg, k)} has no effect while training.ema = false"
                     for k in ema_keys if cfg.get(k) != FIELDS_BY_NAME[k].default]
    if training.loss not in ("huber", "smooth_l1"):
        warnings += [f"{_show(cfg, k)} has no effect unless training.loss is \"huber\" or \"smooth_l1\""
                     for k in ("training.huber_c", "training.huber_schedule")
                     if cfg.get(k) != FIELDS_BY_NAME[k].default]
    if not (cfg.validation.split or cfg.validation.dir):
        warnings += [f"{_show(cfg, k)} but there are no validation images (set validation.split or validation.dir)"
                     for k in ("validation.every_n_steps", "validation.loss")
                     if cfg.get(k) != FIELDS_BY_NAME[k].default]
    return warnings


def _same_folder_warnings(cfg: JobConfig) -> list[str]:
    """A folder listed twice (dataset.dir, dataset.reg_dir, concepts) trains every image of it twice per epoch."""
    import os

    folders = [("dataset.dir", cfg.dataset.dir), ("dataset.reg_dir", cfg.dataset.reg_dir)]
    folders += [(f"dataset.concepts[{n}].dir", c.get("dir", "")) for n, c in enumerate(cfg.dataset.concepts or [], 1)]
    seen: dict[str, str] = {}
    warnings = []
    for key, folder in folders:
        if not folder:
            continue
        real = os.path.realpath(os.path.expanduser(folder))
        if real in seen:
            warnings.append(f"{key} = {format_value(folder)} is the same folder as {seen[real]}: each of its images "
                            "trains twice per epoch, once per entry; remove one entry (use repeats for more)")
        else:
            seen[real] = key
    return warnings


def family_problems(cfg: JobConfig, family) -> list[str]:
    """What `family` (a trainer.families FamilySpec) cannot do of this job: the method, and every option set
    away from its default that does not apply to the family, each by name with the reason. `trainer check`
    and `trainer run` both ask this once the family is known (config/native.apply_native_sizes)."""
    from ..families.options import choice_refusal, option_refusal

    problems: list[str] = []
    refusal = family.refusal(cfg.method)
    if refusal:
        problems.append(f"method = {format_value(cfg.method)} is not available for {family.label}: {refusal}")
    for f in FIELDS:
        if not f.section or f.type == TABLE_LIST or cfg.get(f.name) == f.default:
            continue
        why = option_refusal(f.name, family)
        if why is None and f.type == CHOICE:
            why = choice_refusal(f.name, cfg.get(f.name), family)
        if why:
            problems.append(f"{_show(cfg, f.name)} does not apply to {family.label} ({family.id}): {why}; "
                            f"remove it from the job")
    training = cfg.training
    if family.objective == FLOW and training.loss in ("huber", "smooth_l1") and training.huber_schedule == "snr":
        problems.append(f'training.huber_schedule = "snr" does not apply to {family.label}: it reads a DDPM noise '
                        'schedule; use "constant" or "exponential" with a flow model')
    return problems
