"""`trainer evaluate`: metrics through torchmetrics with tiny random extractors built in code (nothing
downloads), then a whole run: train a tiny LoRA with saves, evaluate every checkpoint, read the table."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import make_dataset, write_job
from trainer.evaluation import Extractors, compute_metrics
from trainer.evaluation.metrics import ClipAdapter

ROOT = Path(__file__).resolve().parents[1]


class TinyFeatures(nn.Module):
    """A fixed random projection of 8x8-pooled pixels: a stand-in for Inception's pool features."""

    def __init__(self, n_features: int = 6, seed: int = 0):
        super().__init__()
        self.num_features = n_features
        self.proj = torch.randn(3 * 8 * 8, n_features, generator=torch.Generator().manual_seed(seed))

    def forward(self, images):
        images = images.float() / 255 if images.dtype == torch.uint8 else images
        return nn.functional.adaptive_avg_pool2d(images, 8).flatten(1) @ self.proj


def tiny_clip(folder: Path | None = None):
    """A random CLIP (text and vision 32-wide) with Kiln's offline CLIP tokenizer; saved to `folder` if given."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from trainer.models.tokenizers import clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, max_position_embeddings=77, vocab_size=49408),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8),
                        projection_dim=16)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=clip_tokenizer())
    if folder is not None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return model, processor


def images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 32, 32, generator=g) * 0.8 + shift).clamp(0, 1)


def test_fid_kid_track_distance_and_bootstrap_brackets_the_value():
    real = images(24, 0)
    extractors = Extractors(features=TinyFeatures(), feature_name="tiny")
    same = compute_metrics(real, images(24, 1), ["x"] * 24, extractors, ("fid", "kid"))
    far = compute_metrics(real, images(24, 1, shift=0.3), ["x"] * 24, extractors, ("fid", "kid"))
    assert far["fid"].value > 5 * same["fid"].value
    assert far["kid"].value > same["kid"].value
    for score in (same["fid"], far["fid"]):
        assert score.low <= score.value * 1.5 and score.low < score.high
    again = compute_metrics(real, images(24, 1), ["x"] * 24, extractors, ("fid", "kid"))
    assert again["fid"].text() == same["fid"].text() and again["kid"].value == same["kid"].value


def test_inception_score_from_a_classifier():
    class Confident(nn.Module):  # each image its own class, sure of it: IS = number of classes
        def forward(self, imgs):
            return torch.eye(len(imgs)) * 50

    class Undecided(nn.Module):  # every image the same spread: IS = 1
        def forward(self, imgs):
            return torch.zeros(len(imgs), 5)

    fake = images(6, 0)
    assert compute_metrics(fake, fake, [""] * 6, Extractors(classifier=Confident()), ("is",))["is"].value \
        == pytest.approx(6, rel=1e-3)
    assert compute_metrics(fake, fake, [""] * 6, Extractors(classifier=Undecided()), ("is",))["is"].value \
        == pytest.approx(1, abs=1e-6)


def test_clip_score_equals_cosine_of_the_models_own_features():
    model, processor = tiny_clip()
    adapted = ClipAdapter(model)
    fake = images(3, 5)
    prompts = ["a red toy", "a blue cup", "kiln shape"]
    score = compute_metrics(fake, fake, prompts, Extractors(clip=lambda: (adapted, processor)), ("clip",))["clip"]
    with torch.no_grad():
        pixels = processor(images=list(fake), return_tensors="pt", do_rescale=False)["pixel_values"]
        image_features = adapted.get_image_features(pixels)
        text = processor(text=prompts, return_tensors="pt", padding=True)
        text_features = adapted.get_text_features(text["input_ids"], text["attention_mask"])
    cosine = nn.functional.cosine_similarity(image_features, text_features)
    # torchmetrics clamps each score at 0 and averages
    assert score.value == pytest.approx(float((100 * cosine).clamp(min=0).mean()), rel=1e-4)


def test_evaluate_a_trained_job_end_to_end(tmp_path, tiny_sd15_dir):
    data = make_dataset(tmp_path / "data", n=4)
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out",
                    sections={"training": {"max_steps": 4}, "output": {"save_every_n_steps": 2},
                              "validation": {"split": 0.25}})
    # --job-dir beside job.toml: its events (with the validation losses) are the job folder's, as in the UI
    train = subprocess.run([sys.executable, "-m", "trainer", "run", str(job), "--job-dir", str(tmp_path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    clip_dir = tmp_path / "clip"
    tiny_clip(clip_dir)

    def evaluate():
        return subprocess.run([sys.executable, "-m", "trainer", "evaluate", str(job), "--n", "4", "--steps", "2",
                               "--metrics", "fid,kid,clip", "--clip-model", str(clip_dir)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    first = evaluate()
    assert first.returncode == 0, first.stderr
    out = tmp_path / "evaluation"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(r["checkpoint"], r["step"]) for r in rows] == [("base", "0"), ("step 2", "2"), ("final", "4")]  # the final file says it was written at step 4
    for row in rows:
        assert float(row["fid"]) >= 0 and float(row["kid"]) == float(row["kid"]) and row["clip"]
    validation = {e["step"]: e["loss"] for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())
                  if e.get("kind") == "validation"}
    assert rows[0]["val_loss"] == ""  # the base model was not validated by the job
    assert [float(r["val_loss"]) for r in rows[1:]] == pytest.approx([validation[2], validation[4]], rel=1e-5)
    table = (out / "metrics.md").read_text()
    assert "FID (CLIP)" in table and "(best)" in table and "Best by FID" in table
    assert "Inception Score not computed" not in table  # not asked for
    for name in ("fid", "kid", "clip"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert len(list((out / "images" / "step-2").glob("*.png"))) == 4
    first_images = [p.read_bytes() for p in sorted((out / "images" / "final").glob("*.png"))]

    second = evaluate()  # fixed seeds: the same pictures and the same table
    assert second.returncode == 0, second.stderr
    assert [p.read_bytes() for p in sorted((out / "images" / "final").glob("*.png"))] == first_images
    assert list(csv.DictReader((out / "metrics.csv").open())) == rows


def test_evaluate_bad_input(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "trainer", "evaluate", str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no job file" in missing.stderr and "Traceback" not in missing.stderr
    bad = subprocess.run([sys.executable, "-m", "trainer", "evaluate", str(tmp_path), "--metrics", "fid,psnr"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown psnr" in bad.stderr


def test_the_evaluate_button_queues_an_evaluation_job_that_reports_through_the_queue(tmp_path):
    """The Jobs tab's Evaluate button makes an evaluation job (`task = "evaluate"`); the queue runs it as
    `trainer evaluate JOB --job-dir ...`, whose status says how it went (here: the target's checkpoints were
    deleted after the button was pressed, so it fails with that reason, not a traceback)."""
    from safetensors.torch import save_file

    from trainer.jobs import JobManager
    from trainer.jobs.launch import read_launch_plan, worker_command
    from trainer.jobs.status import patch_status
    from ui.evaluation_panel import queue_evaluation

    manager = JobManager(tmp_path / "jobs")
    target = manager.create('method = "lora"\n[model]\nbase = "builtin:tiny-sd15"\n[output]\ndir = "output"\n'
                            'name = "dog"\n', name="dog")
    patch_status(manager.job_dir(target), state="done")  # a finished training job
    assert queue_evaluation(manager, target, 8, 4)[0] == f"❌ `{target}` has no saved checkpoints to evaluate yet."
    weights = manager.job_dir(target) / "output" / "dog.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.ones(1, 2)}, str(weights))
    manager.max_running = 0  # queue it without starting it, to look at it first
    message, evaluation = queue_evaluation(manager, target, 8, 4)
    assert message.startswith(f"Queued evaluation job `{evaluation}` for `{target}`")
    job_toml = manager.job_dir(evaluation) / "job.toml"
    command = worker_command(read_launch_plan(job_toml), job_toml, manager.job_dir(evaluation))
    assert command[1:] == ["-m", "trainer", "evaluate", str(manager.job_dir(target)), "--n", "8", "--steps", "4",
                           "--job-dir", str(manager.job_dir(evaluation))]
    weights.unlink()
    manager.max_running = 1
    manager.start_pending()
    final = manager.wait(evaluation, timeout_s=120)
    assert final["state"] == "failed" and "dog" in final["error"] and "Traceback" not in final["error"]
