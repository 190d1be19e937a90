"""A CUDA out-of-memory in a run (trainer/oom.py), simulated on the CPU: a patched forward raises
torch.OutOfMemoryError as CUDA would. The worker ends the job as failed with one message (the phase that ran
out, the model's prediction for it, what the planner would turn on), exit code 2, and no traceback."""
from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from tests.helpers import make_dataset, write_job
from trainer.cli import main


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


def run_job(tmp_path, base, training, capsys):
    make_dataset(tmp_path / "data", n=2)
    path = write_job(tmp_path / "job.toml", base, tmp_path / "data", tmp_path / "out",
                     sections={"training": {"max_steps": 2, **training}})
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    code = main(["run", str(path), "--job-dir", str(job_dir)])
    err = capsys.readouterr().err
    status = json.loads((job_dir / "status.json").read_text())
    return code, err, status


def test_out_of_memory_while_training_says_what_the_planner_would_add(tmp_path, tiny_sd15_dir, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr(UNet2DConditionModel, "forward", out_of_memory)
    # the full-size SD 1.5 in fp32 with no saver on, for a 3.5 GiB card (tests/test_planner.py's case)
    code, err, status = run_job(tmp_path, tiny_sd15_dir, {
        "mixed_precision": "no", "optimizer": "adamw", "cache_latents": False, "cache_text_encoder_outputs": False,
        "gpu_memory_gib": 3.5}, capsys)
    assert code == 2 and status["state"] == "failed"
    message = status["error"]
    assert message.startswith("the GPU ran out of memory while training (step 1); the memory model predicted ")
    assert "GiB for training on a 3.5 GiB card. The planner would add: latent cache, text-encoder output cache, " \
           "gradient checkpointing, 8-bit optimizer state (adamw8bit), int8 base" in message  # fp8: not in fp32
    assert 'training.base_quantization = "int8"); or set training.fit = "auto"' in message
    assert f"kiln: error: {message}" in err and "Traceback" not in err


def test_out_of_memory_while_caching_latents_without_a_known_card(tmp_path, tiny_sdxl_dir, capsys, monkeypatch):
    monkeypatch.setattr(AutoencoderKL, "encode", out_of_memory)
    code, err, status = run_job(tmp_path, tiny_sdxl_dir, {}, capsys)
    assert code == 2 and status["state"] == "failed"
    assert status["error"].startswith("the GPU ran out of memory while encoding images to latents; the memory "
                                      "model predicted ")
    assert "GiB for caching latents. To see what would fit: trainer check JOB --gpu SIZE" in status["error"]
    assert "Traceback" not in err


def test_when_the_model_thought_it_fitted_the_planner_asks_for_a_margin(tmp_path, tiny_sd15_dir, capsys,
                                                                         monkeypatch):
    monkeypatch.setattr(UNet2DConditionModel, "forward", out_of_memory)
    code, _, status = run_job(tmp_path, tiny_sd15_dir, {"mixed_precision": "no", "gpu_memory_gib": 24}, capsys)
    assert code == 2
    assert "on a 24.0 GiB card (it expected the job to fit, so it under-estimated this one). The planner would " \
           "add: " in status["error"]
