"""Checks that involve more than one field: conflicts and method requirements (errors), and suspicious but
legal values (warnings). They read a built JobConfig, so callers can re-check a config they changed."""
from __future__ import annotations

from .job import JobConfig
from .schema import FIELDS, METHODS
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
    if training.cache_latents and data.random_crop:
        problems.append("training.cache_latents = true conflicts with dataset.random_crop = true (cached latents "
                        "are encoded once, so crops cannot vary; turn one of them off)")
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
    if cfg.method in METHODS:
        warnings += [f"{_show(cfg, f.name)} is set but method {format_value(cfg.method)} does not use it"
                     for f in FIELDS if cfg.method not in f.methods and cfg.get(f.name) != f.default]
    return warnings
