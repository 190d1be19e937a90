"""`trainer check`: what a job will do before it runs — the resolved config, the dataset, the exact step count,
and a memory estimate. It reads the dataset but loads no model weights, so it answers in seconds."""
from __future__ import annotations

from dataclasses import dataclass

from .config.job import JobConfig
from .config.native import apply_native_sizes
from .config.schema import BUILTIN_MODELS
from .data import DatasetIndex, TrainData
from .inputs import check_inputs
from .families import FAMILIES
from .families.options import objective_label
from .memory import estimate_memory
from .methods import spec_for
from .paths import default_paths
from .plan import TrainingPlan, build_plan
from .planner import NF4_EFFECT, FitPlan, plan_fit

def guess_arch(cfg) -> str | None:
    if cfg.model.arch != "auto":
        return cfg.model.arch
    if cfg.model.base in BUILTIN_MODELS:  # known by name, without importing the model loaders
        return BUILTIN_MODELS[cfg.model.base]
    from .models.arch import detect_arch_of_source

    try:
        return detect_arch_of_source(cfg.model.base)
    except Exception:  # unknown until the model loads (a hub id offline, say); the estimate is skipped
        return None


def dataset_index(cfg) -> DatasetIndex:
    """The examples the run will train on; for DreamBooth with the class images it will use or generate.
    Images held out for validation (validation.split) are not among them."""
    from .validation import split_validation

    return split_validation(cfg, spec_for(cfg.method).planned_dataset(cfg))[0]


@dataclass
class Preflight:
    """What `trainer check` found: the job (sizes resolved), its architecture when known, the dataset and plan."""
    cfg: JobConfig
    arch: str | None
    index: DatasetIndex
    summary: dict
    plan: TrainingPlan


def preflight(cfg: JobConfig) -> Preflight:
    paths = default_paths(cfg)
    check_inputs(cfg, paths.output_dir, paths.state_dir)  # the same gate `run` passes first
    arch = guess_arch(cfg)
    apply_native_sizes(cfg, arch)  # sizes left at 0 follow the model (SD 1.x sizes while it is unknown)
    index = dataset_index(cfg)
    data = TrainData(index, cfg.dataset, cfg.training.batch_size, cfg.training.seed)
    return Preflight(cfg, arch, index, data.summary(), build_plan(cfg, data))


def launch_warnings(cfg: JobConfig) -> list[str]:
    """What really runs: the plan is for training.num_processes processes, which only a launcher starts."""
    n = cfg.training.num_processes
    if n == 1:
        return []
    return [f"training.num_processes = {n}: planned for {n} processes, as the app and `trainer queue` launch it "
            f"(or `accelerate launch --num_processes {n} -m trainer run ...`); a plain `trainer run` refuses it"]


def preflight_data(cfg: JobConfig) -> dict:
    """`trainer check --json`: the resolved job (the TOML's shape), the plan, the dataset and the warnings."""
    found = preflight(cfg)
    plan = found.plan
    est = estimate_memory(cfg, found.arch) if found.arch else None
    return {
        "config": cfg.to_dict(),
        "plan": {"total_steps": plan.total_steps, "epochs": plan.epochs, "batches_per_epoch": plan.batches_per_epoch,
                 "steps_per_epoch": plan.steps_per_epoch, "batch_size": plan.batch_size,
                 "gradient_accumulation_steps": plan.grad_accum, "world_size": plan.world_size,
                 "effective_batch_size": plan.effective_batch_size,
                 "images": found.summary["images"], "images_with_repeats": found.summary["repeated_images"]},
        "dataset": found.summary,
        "arch": found.arch,
        "family": None if found.arch not in FAMILIES else {
            "id": found.arch, "label": FAMILIES[found.arch].label, "objective": FAMILIES[found.arch].objective},
        "memory_gib": None if est is None else round(est.total_gib, 2),
        "fit": fit_data(fit_job(cfg, found.arch, len(found.index.items))),
        "warnings": found.index.warnings + cfg.warnings + launch_warnings(cfg),
    }


def family_lines(arch: str | None) -> list[str]:
    """What `check` says of the model's family: objective, denoiser, text encoders and what may learn."""
    if arch not in FAMILIES:
        return ["unknown until the model is loaded"]
    spec = FAMILIES[arch]
    encoders = ", ".join(f"{te.kind} ({'LoRA may train it' if te.trainable else 'frozen, outputs cached'})"
                         for te in spec.text_encoders)
    return [f"family: {spec.label} ({spec.id}); objective: {objective_label(spec.objective)}",
            f"denoiser: {spec.denoiser}; native resolution: {spec.native_resolution} px",
            f"text encoders: {encoders}",
            f"methods: {', '.join(spec.methods)}"]


def preflight_report(cfg: JobConfig) -> str:
    found = preflight(cfg)
    arch, index, summary, plan = found.arch, found.index, found.summary, found.plan
    lines = ["# resolved job", cfg.to_toml().rstrip(), ""]
    if cfg.migration_notes:
        lines += ["# migration notes (what the file's keys became)"] + [f"  {n}" for n in cfg.migration_notes] + [""]
    lines.append("# dataset")
    lines.append(f"images: {summary['images']}   with repeats: {summary['repeated_images']}")
    for subset, info in summary["subsets"].items():
        lines.append(f"  {subset}: {info['images']} images x {info['repeats']} repeats")
    if summary["class_images"]:
        lines.append(f"class images: {summary['class_images']} in {index.class_items[0].path.parent}   "
                     f"class samples per epoch: {summary['class_samples_per_epoch']} (paired with as many "
                     "subject samples)")
    lines.append("buckets: " + ", ".join(f"{b['width']}x{b['height']} ({b['samples']} samples, {b['batches']} batches"
                                         + (f", +{b['filled']} to fill)" if b["filled"] else ")")
                                         for b in summary["buckets"]))
    if summary["full_batches"]:
        lines.append(f"full batches: {summary['filled_samples']} sample(s) added per epoch to fill last batches, "
                     f"{len(summary['moved'])} image(s) moved to a fuller bucket")
        lines += [f"  moved {m['path']}: {m['from'][0]}x{m['from'][1]} -> {m['to'][0]}x{m['to'][1]}"
                  for m in summary["moved"]]
    if index.skipped:
        lines.append(f"skipped files: {len(index.skipped)}")
        lines += [f"  {p}: {why}" for p, why in index.skipped]
    lines += [f"warning: {w}" for w in index.warnings + cfg.warnings + launch_warnings(cfg)]
    lines += ["", "# steps",
              f"batches per epoch: {plan.batches_per_epoch} (batch size {plan.batch_size})",
              f"effective batch: {plan.effective_batch_size} = {plan.batch_size} x {plan.grad_accum} accumulation "
              f"x {plan.world_size} process(es)",
              f"steps per epoch: {plan.steps_per_epoch:g}",
              f"total steps: {plan.total_steps}   epochs: {plan.epochs}"]
    lines += ["", "# model family"] + family_lines(arch)
    est = estimate_memory(cfg, arch, images=len(index.items)) if arch else None
    label = FAMILIES[arch].label if arch in FAMILIES else "model"
    lines += ["", f"# memory (estimate for the full-size {label} architecture; trainer/memory.py)"]
    lines += est.lines() if est is not None else ["unknown until the model is loaded"]
    plan = fit_job(cfg, arch, len(index.items))
    if plan is not None:
        run = ("training.fit = \"auto\": the run turns these on" if cfg.training.fit == "auto" else
               "training.fit = \"off\": the run keeps the settings as written; \"auto\" would turn these on")
        lines += ["", f"# fit to {cfg.training.gpu_memory_gib:g} GiB (trainer/planner.py; {run})"] + plan.lines()
    return "\n".join(lines)


def fit_job(cfg: JobConfig, arch: str | None, images: int, gpu_gib: float | None = None) -> FitPlan | None:
    """The planner's choice for the GPU size the job names (training.gpu_memory_gib, `check --gpu`) or
    `gpu_gib` (the card the run found); None when neither is known or the architecture is not."""
    gpu = cfg.training.gpu_memory_gib or gpu_gib
    return plan_fit(cfg, arch, gpu, images) if gpu and arch else None


def fit_run(cfg: JobConfig, arch: str, gpu_gib: float | None) -> FitPlan | None:
    """At the start of `run` with training.fit = "auto": the same plan as `check` (the same dataset count),
    applied to `cfg`."""
    from .planner import apply_fit

    plan = fit_job(cfg, arch, len(dataset_index(cfg).items), gpu_gib)
    if plan is not None:
        apply_fit(cfg, plan)
    return plan


def fit_data(plan: FitPlan | None) -> dict | None:
    if plan is None:
        return None
    return {"gpu_gib": plan.gpu_gib, "fits": plan.fits, "summary": plan.summary(), "reason": plan.reason,
            "peak_before_gib": round(plan.before.vram_gib, 2), "peak_after_gib": round(plan.after.vram_gib, 2),
            "phases_gib": {p.name: round(p.gib, 2) for p in plan.after.phases}, "slower": round(plan.slower, 3),
            "savers": [{"key": s.key, "value": s.value, "label": s.label, "slower": round(s.cost, 3),
                        "source": s.source, "why": s.why} for s in plan.savers],
            "four_bit_effect": NF4_EFFECT if plan.four_bit else ""}
