"""`python -m trainer grid JOB_OR_FOLDER --prompts ...`: pick the best checkpoint by eye. One labelled PNG of
prompt x saved checkpoint x strength (fixed seeds), plus an HTML page linking every full-size image.

Each checkpoint is applied by changing the base model's weights in place with the LoRA/LyCORIS formulas
(lora_tools.network.apply_module) and putting the originals back afterwards, so LoHa, LoKr and DoRA files
work the same as plain LoRAs, and only one copy of the model is in memory."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from .atomic import write_atomically
from .families import adapter_for

STEP_RE = re.compile(r"-step(\d+)$")
LABEL_WIDTH, HEADER_HEIGHT, LINE = 160, 36, 12


@dataclass(frozen=True)
class Cell:
    checkpoint: Path
    prompt: str
    strength: float
    seed: int

    def file_name(self, prompt_index: int) -> str:
        return f"{self.checkpoint.stem}-p{prompt_index}-s{self.strength:g}-d{self.seed}.png"


@dataclass
class GridPlan:
    """Rows are checkpoints (oldest first); columns are prompt x strength x seed, grouped by prompt."""
    checkpoints: list[Path]
    prompts: list[str]
    strengths: list[float]
    seeds: list[int]
    best: Path | None = None  # the checkpoint with the lowest validation loss, marked in its row's label

    @property
    def columns(self) -> list[tuple[int, float, int]]:
        return [(p, s, d) for p in range(len(self.prompts)) for s in self.strengths for d in self.seeds]

    def row_label(self, checkpoint: Path) -> str:
        match = STEP_RE.search(checkpoint.stem)
        label = f"step {int(match.group(1))}" if match else f"{checkpoint.stem} (final)"
        if self.best is not None and Path(checkpoint).resolve() == Path(self.best).resolve():
            label += " * best val"
        return label

    def column_label(self, prompt_index: int, strength: float, seed: int) -> tuple[str, str]:
        return self.prompts[prompt_index][:24], f"x{strength:g} seed {seed}"


def find_checkpoints(target: Path) -> tuple[list[Path], object | None]:
    """The saved LoRA files of a job (a job folder with job.toml, or a job file) or of a plain folder, oldest
    first, and the job's config (None for a plain folder)."""
    from .config import load_job

    job_file = target / "job.toml" if target.is_dir() else target
    cfg = load_job(job_file) if job_file.is_file() and job_file.suffix == ".toml" else None
    if cfg:
        return saved_checkpoints(Path(cfg.output.dir), cfg.output.name), cfg
    return saved_checkpoints(target, None), None


def best_validation_checkpoint(best_validation: dict | None) -> Path | None:
    """The file of a job's best validation loss (status.json's / RunResult's `best_validation`), if it saved one."""
    path = best_validation.get("path") if isinstance(best_validation, dict) else None
    return Path(path) if isinstance(path, str) and path else None


def saved_checkpoints(folder: Path, name: str | None) -> list[Path]:
    """NAME-stepNNNNNNNN.safetensors oldest first, then NAME.safetensors (the final one); without a name, every
    .safetensors in the folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"grid: {folder} does not exist (no checkpoints saved yet?)")
    files = [p for p in folder.glob(f"{name}*.safetensors" if name else "*.safetensors") if not p.name.startswith(".")]
    if name:
        files = [p for p in files if p.stem == name or (p.stem.startswith(name) and STEP_RE.search(p.stem))]

    def order(p: Path) -> tuple[int, str]:
        match = STEP_RE.search(p.stem)
        return (int(match.group(1)) if match else 1 << 62, p.name)

    files.sort(key=order)
    if not files:
        raise FileNotFoundError(f"grid: no saved .safetensors checkpoints in {folder}")
    return files


class _AppliedLora:
    """Puts one LoRA file at one strength into the model's weights; restore() puts the originals back."""

    def __init__(self, model):
        from .methods.lora_init import kohya_names

        unet_names = adapter_for(model.arch).export_names(model)
        self.modules = {}
        for component, root in [("unet", model.unet), *((f"text_encoder_{i}", te)
                                                         for i, te in enumerate(model.text_encoders))]:
            named = dict(root.named_modules())
            for kohya, name in kohya_names(model, component, unet_names).items():
                self.modules[kohya] = named[name]
        self.saved: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, network, strength: float) -> None:
        from .lora_tools.network import apply_module

        self.restore()
        unknown = sorted(n for n in network.modules if n not in self.modules)
        if unknown:
            raise ValueError(f"grid: {network.path} has {len(unknown)} module(s) this base model lacks, e.g. "
                             f"{unknown[0]} (is it for another base model?)")
        for name, tensors in network.modules.items():
            weight = self.modules[name].weight
            self.saved[name] = weight.detach().clone()
            weight.copy_(apply_module(tensors, weight, strength))

    @torch.no_grad()
    def restore(self) -> None:
        for name, weight in self.saved.items():
            self.modules[name].weight.copy_(weight)
        self.saved = {}


@torch.no_grad()
def make_grid(plan: GridPlan, model, out_dir: Path, *, steps: int, cfg_scale: float, size: tuple[int, int],
              sampler: str = "euler_a", force: bool = False) -> Path:
    """Generate every cell into out_dir/images/, then out_dir/grid.png and out_dir/index.html."""
    from .lora_tools.network import read_network_file
    from .sampling import make_pipeline

    out_dir = Path(out_dir)
    if (out_dir / "grid.png").exists() and not force:
        raise FileExistsError(f"{out_dir / 'grid.png'} already exists; pass --force to replace it")
    pipe = make_pipeline(model, sampler)
    pipe.set_progress_bar_config(disable=True)
    applied = _AppliedLora(model)
    width, height = size
    images: dict[tuple[int, int], Path] = {}
    try:
        for row, checkpoint in enumerate(plan.checkpoints):
            network = read_network_file(checkpoint, "grid")
            for column, (p, strength, seed) in enumerate(plan.columns):
                applied.apply(network, strength)
                generator = torch.Generator("cpu").manual_seed(seed)
                image = pipe(plan.prompts[p], width=width, height=height, num_inference_steps=steps,
                             guidance_scale=cfg_scale, generator=generator).images[0]
                path = out_dir / "images" / Cell(checkpoint, plan.prompts[p], strength, seed).file_name(p)
                path.parent.mkdir(parents=True, exist_ok=True)
                images[(row, column)] = write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))
    finally:
        applied.restore()
    _write_grid_png(plan, images, out_dir / "grid.png", size)
    _write_html(plan, images, out_dir / "index.html")
    return out_dir / "grid.png"


def _write_grid_png(plan: GridPlan, images, path: Path, size: tuple[int, int]) -> None:
    width, height = size
    columns = plan.columns
    grid = Image.new("RGB", (LABEL_WIDTH + width * len(columns), HEADER_HEIGHT + height * len(plan.checkpoints)),
                     "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for column, key in enumerate(columns):
        first, second = plan.column_label(*key)
        x = LABEL_WIDTH + column * width + 2
        draw.text((x, 2), fitted(draw, first, font, width - 4), fill="black", font=font)
        draw.text((x, 2 + LINE), fitted(draw, second, font, width - 4), fill="black", font=font)
    for row, checkpoint in enumerate(plan.checkpoints):
        y = HEADER_HEIGHT + row * height
        draw.text((2, y + 2), fitted(draw, plan.row_label(checkpoint), font, LABEL_WIDTH - 4), fill="black", font=font)
        for column in range(len(columns)):
            with Image.open(images[(row, column)]) as cell:
                grid.paste(cell.convert("RGB"), (LABEL_WIDTH + column * width, y))
    write_atomically(path, lambda tmp: grid.save(tmp, format="PNG"))


def fitted(draw, text: str, font, width: float) -> str:
    """`text` shortened with "..." to fit `width` pixels: a header wider than its cell ran into the next one's
    (at 64 px, "x0.75 seed 42" is wider than the cell). The full labels are in index.html."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def _write_html(plan: GridPlan, images, path: Path) -> None:
    head = "".join(f"<th>{html.escape(a)}<br>{html.escape(b)}</th>" for a, b in
                   (plan.column_label(*key) for key in plan.columns))
    rows = []
    for row, checkpoint in enumerate(plan.checkpoints):
        cells = "".join(f'<td><a href="images/{images[(row, c)].name}"><img src="images/{images[(row, c)].name}" '
                        f'loading="lazy"></a></td>' for c in range(len(plan.columns)))
        rows.append(f"<tr><th>{html.escape(plan.row_label(checkpoint))}<br><small>"
                    f"{html.escape(checkpoint.name)}</small></th>{cells}</tr>")
    prompts = "".join(f"<li>{html.escape(p)}</li>" for p in plan.prompts)
    page = (f"<!doctype html><meta charset=utf-8><title>Kiln checkpoint grid</title>"
            f"<style>td,th{{padding:2px;text-align:center}}img{{max-width:256px}}</style>"
            f"<h1>Checkpoint grid</h1><ol>{prompts}</ol><table><tr><th></th>{head}</tr>{''.join(rows)}</table>")
    write_atomically(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))

