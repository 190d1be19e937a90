"""LoHa, LoKr and DoRA through the real loop: they learn, resume bit-identically, and DreamBooth-LoRA and SDXL
take them; the saved files hold the LyCORIS keys."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import StopAt, learn_losses, make_dataset, subject_images, write_job
from trainer.config import load_job
from trainer.loop import default_paths, train

TYPES = {
    "loha": {"type": "loha", "rank": 4, "alpha": 4, "train_conv": True},
    "lokr": {"type": "lokr", "rank": 4, "alpha": 4, "train_conv": True},
    "dora": {"type": "locon", "dora": True, "rank": 4, "alpha": 4},
}
EXPECTED_KEY = {"loha": ".hada_w2_b", "lokr": ".lokr_w1", "dora": ".dora_scale"}


def run(job, resume=False, controls=None):
    cfg = load_job(job)
    return cfg, train(cfg, default_paths(cfg), controls=controls, resume=resume)


@pytest.mark.parametrize("kind", TYPES)
def test_network_type_learns_a_small_concept(tmp_path, kind):
    data_dir = make_dataset(tmp_path / "data", n=3)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data_dir, tmp_path / "out", sections={
        "training": {"max_steps": 120, "batch_size": 3, "learning_rate": 3e-3}, "lora": TYPES[kind]})
    before, after, result = learn_losses(job)
    assert after <= 0.7 * before, (before, after)
    tensors = load_file(result.outputs[-1])
    assert any(k.endswith(EXPECTED_KEY[kind]) for k in tensors)
    with safe_open(result.outputs[-1], "pt") as f:
        assert f.metadata()["ss_network_module"] == "lycoris.kohya"


@pytest.mark.parametrize("kind", TYPES)
def test_network_type_stop_then_resume_is_bit_identical(tmp_path, tiny_sd15_dir, kind):
    data = make_dataset(tmp_path / "data")
    # LoKr also runs bitsandbytes' 8-bit AdamW (its state must resume exactly too), DoRA bf16 mixed precision
    optimizer = "adamw8bit" if kind == "lokr" else "adamw"
    precision = "bf16" if kind == "dora" else "no"
    sections = {"training": {"max_steps": 6, "lr_scheduler": "cosine", "optimizer": optimizer,
                             "mixed_precision": precision}, "lora": TYPES[kind],
                "dataset": {"flip": True}}
    _, straight = run(write_job(tmp_path / "a.toml", tiny_sd15_dir, data, tmp_path / "a", sections=sections))
    job = write_job(tmp_path / "b.toml", tiny_sd15_dir, data, tmp_path / "b", sections=sections)
    _, stopped = run(job, controls=StopAt(3))
    assert stopped.status == "stopped" and stopped.step == 3
    _, resumed = run(job, resume=True)
    assert resumed.status == "done" and resumed.step == 6
    a, b = load_file(straight.outputs[-1]), load_file(resumed.outputs[-1])
    assert a.keys() == b.keys() and any(k.endswith(EXPECTED_KEY[kind]) for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_dreambooth_lora_takes_the_network_type(tmp_path, tiny_sd15_dir):
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, subject_images(tmp_path / "subject"), tmp_path / "out",
                    method="dreambooth", sections={
                        "training": {"max_steps": 3},
                        "dreambooth": {"instance_prompt": "a photo of sks shape", "use_lora": True,
                                       "prior_preservation": False, "train_text_encoder": True},
                        "lora": {"type": "lokr", "rank": 2, "alpha": 2, "lokr_decompose_both": True}})
    _, result = run(job)
    tensors = load_file(result.outputs[-1])
    assert any(k.startswith("lora_te_") and ".lokr_w" in k for k in tensors)
    assert not any("lora_down" in k for k in tensors)
    with safe_open(result.outputs[-1], "pt") as f:
        args = json.loads(f.metadata()["ss_network_args"])
    assert args == {"algo": "lokr", "factor": "-1", "decompose_both": "True"}


def test_sdxl_trains_loha_with_original_unet_names(tmp_path, tiny_sdxl_dir):
    data = make_dataset(tmp_path / "data")
    job = write_job(tmp_path / "job.toml", tiny_sdxl_dir, data, tmp_path / "out", sections={
        "training": {"max_steps": 2}, "lora": {"type": "loha", "rank": 2, "alpha": 1, "train_text_encoder": True}})
    _, result = run(job)
    tensors = load_file(result.outputs[-1])
    modules = {k.split(".")[0] for k in tensors}
    assert any(m.startswith("lora_unet_input_blocks_") for m in modules)
    assert any(m.startswith("lora_te1_") for m in modules) and any(m.startswith("lora_te2_") for m in modules)
    assert all(k.split(".", 1)[1] in ("alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b") for k in tensors)


def test_dora_loads_in_diffusers_from_the_diffusers_copy(tmp_path, tiny_sd15_dir):
    """diffusers drops dora_scale from Kohya/LyCORIS files (it says so), so for diffusers users the DoRA goes
    through output.save_diffusers; ComfyUI reads the .safetensors (see test_lycoris_export.py)."""
    from diffusers import StableDiffusionPipeline

    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, make_dataset(tmp_path / "data"), tmp_path / "out",
                    sections={"training": {"max_steps": 3, "learning_rate": 1e-2}, "output": {"save_diffusers": True},
                              "lora": {"type": "locon", "dora": True, "rank": 2, "alpha": 1}})
    _, result = run(job)
    generator = torch.Generator().manual_seed(0)
    latents, hidden = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 32, generator=generator)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir)
    with torch.no_grad():
        base = pipe.unet(latents, 300, hidden).sample
        trained = result.model.unet(latents, 300, hidden).sample
        pipe.load_lora_weights(str(tmp_path / "out" / "test-lora-diffusers"))
        loaded = pipe.unet(latents, 300, hidden).sample
    assert (trained - base).abs().max() > 1e-3
    assert (loaded - trained).abs().max() <= 1e-5
