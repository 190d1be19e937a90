"""`python -m trainer grid`: the right cells, labels and sizes; the same seeds give the same images."""
from __future__ import annotations

import re

import numpy as np
from PIL import Image

from tests.helpers import make_dataset, write_job
from trainer.cli import main
from trainer.config import load_job
from trainer.grid import HEADER_HEIGHT, LABEL_WIDTH, GridPlan, find_checkpoints
from trainer.loop import default_paths, train

PROMPTS = ["kiln shape", "a red circle"]


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_grid_of_checkpoints_strengths_and_prompts(tmp_path, tiny_sd15_dir, capsys):
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, make_dataset(tmp_path / "data"), tmp_path / "out",
                    sections={"training": {"max_steps": 4, "learning_rate": 5e-2},
                              "output": {"save_every_n_steps": 2}, "lora": {"type": "loha", "rank": 2}})
    train(load_job(job), default_paths(load_job(job)))
    checkpoints, _ = find_checkpoints(job)
    assert [p.name for p in checkpoints] == ["test-lora-step00000002.safetensors", "test-lora.safetensors"]

    args = ["grid", str(job), "--prompts", *PROMPTS, "--strengths", "0,1", "--seeds", "3", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    grid = Image.open(tmp_path / "a" / "grid.png")
    columns = len(PROMPTS) * 2  # prompts x strengths x one seed
    assert grid.size == (LABEL_WIDTH + 64 * columns, HEADER_HEIGHT + 64 * 2)

    plan = GridPlan(checkpoints, PROMPTS, [0.0, 1.0], [3])
    assert [plan.row_label(p) for p in checkpoints] == ["step 2", "test-lora (final)"]
    assert plan.column_label(1, 1.0, 3) == ("a red circle", "x1 seed 3")
    page = (tmp_path / "a" / "index.html").read_text()
    cells = re.findall(r'<a href="images/([^"]+)">', page)
    assert len(cells) == 2 * columns and len(set(cells)) == len(cells)
    assert "step 2" in page and "a red circle" in page and "x1 seed 3" in page

    images = tmp_path / "a" / "images"
    cell = {name: pixels(images / name) for name in cells}
    assert all(image.shape == (64, 64, 3) for image in cell.values())
    # strength 0 is the base model: the same for every checkpoint; strength 1 differs between checkpoints
    assert np.array_equal(cell["test-lora-step00000002-p0-s0-d3.png"], cell["test-lora-p0-s0-d3.png"])
    assert not np.array_equal(cell["test-lora-step00000002-p0-s1-d3.png"], cell["test-lora-p0-s1-d3.png"])
    assert not np.array_equal(cell["test-lora-p0-s0-d3.png"], cell["test-lora-p0-s1-d3.png"])
    # the grid's cell (row 1, column 3) is that image, pasted where the labels say
    x, y = LABEL_WIDTH + 64 * 3, HEADER_HEIGHT + 64
    assert np.array_equal(np.asarray(grid.convert("RGB"))[y:y + 64, x:x + 64], cell["test-lora-p1-s1-d3.png"])

    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # same seeds: same images
    for name, image in cell.items():
        assert np.array_equal(pixels(tmp_path / "b" / "images" / name), image), name
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "a")]) == 2, "an existing grid is kept without --force"
    assert "already exists" in capsys.readouterr().err


def test_grid_at_the_end_of_training(tmp_path, tiny_sd15_dir):
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, make_dataset(tmp_path / "data"), tmp_path / "out",
                    sections={"training": {"max_steps": 2},
                              "sample": {"prompts": ["kiln shape"], "steps": 2, "grid_at_end": True}})
    assert main(["run", str(job)]) == 0
    grid = Image.open(tmp_path / "out" / "grid" / "grid.png")
    assert grid.size == (LABEL_WIDTH + 64 * 3, HEADER_HEIGHT + 64)  # one checkpoint x strengths 0.5, 0.75, 1
    assert len(list((tmp_path / "out" / "grid" / "images").glob("*.png"))) == 3


def test_the_checkpoint_with_the_lowest_validation_loss_is_marked(tmp_path):
    from trainer.grid import GridPlan, best_validation_checkpoint

    files = [tmp_path / "x-step00000002.safetensors", tmp_path / "x.safetensors"]
    best = best_validation_checkpoint({"step": 2, "loss": 0.3, "path": str(files[0])})
    plan = GridPlan(files, ["p"], [1.0], [1], best)
    assert [plan.row_label(f) for f in files] == ["step 2 * best val", "x (final)"]
    assert best_validation_checkpoint({"step": 3, "loss": 0.2, "path": None}) is None  # that step saved no file
    assert GridPlan(files, ["p"], [1.0], [1]).row_label(files[0]) == "step 2"


def test_grid_headers_are_shortened_to_their_cell_so_they_never_overlap():
    from PIL import Image, ImageDraw, ImageFont

    from trainer.grid import fitted

    draw, font = ImageDraw.Draw(Image.new("RGB", (10, 10))), ImageFont.load_default()
    assert fitted(draw, "x1 seed 4", font, 200) == "x1 seed 4"
    short = fitted(draw, "x0.75 seed 42", font, 60)
    assert short.endswith("...") and draw.textlength(short, font=font) <= 60 and "x0.75 seed 42".startswith(short[:-3])
