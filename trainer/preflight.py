"""`trainer check`: what a job will do before it runs — the resolved config, the dataset, the exact step count,
and a memory estimate. It reads the dataset but loads no model weights, so it answers in seconds."""
from __future__ import annotations

from .config.native import apply_native_sizes
from .data import DatasetIndex, TrainData, scan_dataset
from .memory import estimate_memory
from .plan import TrainingPlan, make_plan

def guess_arch(cfg) -> str | None:
    if cfg.model.arch != "auto":
        return cfg.model.arch
    from .models.arch import detect_arch_of_source

    try:
        return detect_arch_of_source(cfg.model.base)
    except Exception:  # unknown until the model loads (a hub id offline, say); the estimate is skipped
        return None


def build_plan(cfg, data: TrainData, world_size: int | None = None) -> TrainingPlan:
    """The plan for `world_size` processes (default: the job's training.num_processes)."""
    tr = cfg.training
    return make_plan(data.steps_per_epoch, tr.batch_size, tr.gradient_accumulation_steps,
                     world_size or tr.num_processes, tr.max_steps, tr.epochs)


def dataset_index(cfg) -> DatasetIndex:
    """The examples the run will train on; for DreamBooth with the class images it will use or generate."""
    if cfg.method == "dreambooth":
        from .dreambooth import planned_index

        return planned_index(cfg)
    return scan_dataset(cfg.dataset)


def preflight_report(cfg) -> str:
    arch = guess_arch(cfg)
    apply_native_sizes(cfg, arch)  # sizes left at 0 follow the model (SD 1.x sizes while it is unknown)
    index = dataset_index(cfg)
    data = TrainData(index, cfg.dataset, cfg.training.batch_size, cfg.training.seed)
    plan = build_plan(cfg, data)
    summary = data.summary()
    lines = ["# resolved job", cfg.to_toml().rstrip(), "", "# dataset"]
    lines.append(f"images: {summary['images']}   with repeats: {summary['repeated_images']}")
    for subset, info in summary["subsets"].items():
        lines.append(f"  {subset}: {info['images']} images x {info['repeats']} repeats")
    if summary["class_images"]:
        lines.append(f"class images: {summary['class_images']} in {index.class_items[0].path.parent}   "
                     f"class samples per epoch: {summary['class_samples_per_epoch']} (paired with as many "
                     "subject samples)")
    lines.append("buckets: " + ", ".join(f"{b['width']}x{b['height']} ({b['samples']} samples, {b['batches']} batches)"
                                         for b in summary["buckets"]))
    if index.skipped:
        lines.append(f"skipped files: {len(index.skipped)}")
        lines += [f"  {p}: {why}" for p, why in index.skipped]
    lines += [f"warning: {w}" for w in index.warnings + cfg.warnings]
    lines += ["", "# steps",
              f"batches per epoch: {plan.batches_per_epoch} (batch size {plan.batch_size})",
              f"effective batch: {plan.effective_batch_size} = {plan.batch_size} x {plan.grad_accum} accumulation "
              f"x {plan.world_size} process(es)",
              f"steps per epoch: {plan.steps_per_epoch:g}",
              f"total steps: {plan.total_steps}   epochs: {plan.epochs}"]
    est = estimate_memory(cfg, arch, images=len(index.items)) if arch else None
    lines += ["", f"# memory (estimate for the full-size {arch or 'model'} architecture; trainer/memory.py)"]
    lines += est.lines() if est is not None else ["unknown until the model is loaded"]
    return "\n".join(lines)
