"""`python -m trainer grid ...` arguments; the work is in grid.py (imported only when the verb runs)."""
from __future__ import annotations

import sys
from pathlib import Path


def add_grid_parser(verbs) -> None:
    grid = verbs.add_parser("grid", help="a labelled image grid of prompt x saved checkpoint x strength")
    grid.add_argument("target", type=Path, help="a job folder, a job .toml, or a folder of LoRA files (with --base)")
    grid.add_argument("--prompts", nargs="+", help="prompts (default: the job's [sample] prompts)")
    grid.add_argument("--strengths", default="1.0", help="comma-separated LoRA strengths (default 1.0)")
    grid.add_argument("--seeds", help="comma-separated seeds (default: the job's sample seed, else 42)")
    grid.add_argument("--base", help="the base model (default: the job's model.base)")
    grid.add_argument("--steps", type=int, help="denoising steps (default: the job's sample.steps, else 20)")
    grid.add_argument("--cfg-scale", type=float, help="guidance scale (default: the job's, else 7)")
    grid.add_argument("--size", type=int, help="image side in pixels (default: the job's resolution, else 512)")
    grid.add_argument("--out", type=Path, help="output folder (default: OUTPUT_DIR/grid)")
    grid.add_argument("--force", action="store_true", help="replace an existing grid in --out")


def cmd_grid(args) -> int:
    import torch

    from .config import parse_job
    from .grid import GridPlan, best_validation_checkpoint, find_checkpoints, make_grid
    from .jobs import read_status
    from .models import ModelError, load_base_model

    def fail(message: str) -> int:
        print(f"kiln: error: {message}", file=sys.stderr, flush=True)
        return 2

    try:
        checkpoints, cfg = find_checkpoints(args.target)
        prompts = args.prompts or (cfg.sample.prompts if cfg else [])
        if not prompts:
            return fail("grid: give --prompts (the job has no [sample] prompts)")
        strengths = [float(v) for v in args.strengths.split(",")]
        seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [cfg.sample.seed if cfg else 42]
        base = args.base or (cfg.model.base if cfg else None)
        if not base:
            return fail("grid: a folder of LoRA files needs --base MODEL")
        model_cfg = cfg.model if cfg and not args.base else parse_job(
            {"method": "lora", "model": {"base": base}, "dataset": {"dir": "."}}, source="grid --base").model
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_base_model(model_cfg, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
        side = args.size or (cfg.dataset.resolution if cfg and cfg.dataset.resolution else 512)
        job_dir = args.target if args.target.is_dir() else args.target.parent
        best = best_validation_checkpoint(read_status(job_dir).get("best_validation")) if cfg else None
        plan = GridPlan(checkpoints, list(prompts), strengths, seeds, best)
        out = args.out or checkpoints[0].parent / "grid"
        cfg_scale = args.cfg_scale if args.cfg_scale is not None else (cfg.sample.cfg_scale if cfg else 7.0)
        path = make_grid(plan, model, out, steps=args.steps or (cfg.sample.steps if cfg else 20), cfg_scale=cfg_scale,
                         size=(side // 8 * 8, side // 8 * 8), sampler=cfg.sample.sampler if cfg else "euler_a",
                         force=args.force)
    except ValueError as e:  # bad numbers in --strengths / --seeds, or a LoRA for another model
        return fail(str(e))
    except (ModelError, FileNotFoundError, FileExistsError) as e:
        return fail(str(e))
    print(f"kiln: wrote {path} and {path.parent / 'index.html'} "
          f"({len(plan.checkpoints)} checkpoints x {len(plan.columns)} columns)")
    return 0


def grid_after_training(cfg, reporter, best_validation: dict | None = None) -> None:
    """sample.grid_at_end: the grid of a finished LoRA job, the best checkpoint by validation loss marked. A
    failure here is reported; the job still succeeds."""
    from .grid import GridPlan, best_validation_checkpoint, make_grid, saved_checkpoints
    from .models import load_base_model

    if not (cfg.method == "lora" or (cfg.method == "dreambooth" and cfg.dreambooth.use_lora)):
        reporter.warning("sample.grid_at_end = true needs a LoRA job (its checkpoints are LoRA files): no grid made")
        return
    if not cfg.sample.prompts:
        reporter.warning("sample.grid_at_end = true but sample.prompts is empty: no grid made")
        return
    try:
        import torch

        checkpoints = saved_checkpoints(Path(cfg.output.dir), cfg.output.name)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_base_model(cfg.model, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
        side = cfg.dataset.resolution or 512
        plan = GridPlan(checkpoints, list(cfg.sample.prompts), [0.5, 0.75, 1.0], [cfg.sample.seed],
                        best_validation_checkpoint(best_validation))
        path = make_grid(plan, model, checkpoints[0].parent / "grid", steps=cfg.sample.steps,
                         cfg_scale=cfg.sample.cfg_scale, size=(side // 8 * 8, side // 8 * 8),
                         sampler=cfg.sample.sampler, force=True)
        reporter.info(f"checkpoint grid: {path}")
    except Exception as e:  # the trained files are safe; only the extra grid failed
        reporter.warning(f"checkpoint grid failed: {type(e).__name__}: {e}")
