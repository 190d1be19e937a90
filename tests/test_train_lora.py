"""End to end: TOML job -> training on the tiny model (CPU) -> Kohya file -> a fresh diffusers pipeline."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import StopAt, make_dataset, write_job
from trainer.config import load_job
from trainer.loop import default_paths, train


def run_job(job_path, overrides=(), resume=False, controls=None):
    cfg = load_job(job_path, list(overrides))
    return cfg, train(cfg, default_paths(cfg), controls=controls, resume=resume)


def fixed_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([10, 700])
    return latents, timesteps


def unet_outputs(unet, text_encoder, tokenizer, latents, timesteps, prompt="kiln shape, shape 1"):
    ids = tokenizer([prompt] * len(latents), padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
        return unet(latents, timesteps, encoder_hidden_states=hidden).sample


@pytest.mark.parametrize("train_te", [False, True], ids=["unet-only", "with-text-encoder"])
def test_exported_lora_reproduces_trained_model_in_diffusers(tmp_path, tiny_sd15_dir, train_te):
    from diffusers import StableDiffusionPipeline

    data = make_dataset(tmp_path / "data")
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out",
                    sections={"lora": {"rank": 4, "alpha": 2, "train_text_encoder": train_te,
                                       "train_ff": True, "train_conv": True},
                              "output": {"save_diffusers": True}})
    cfg, result = run_job(job)
    assert result.status == "done" and result.step == 6
    final = tmp_path / "out" / "test-lora.safetensors"
    assert result.outputs[-1] == final and final.is_file()

    # the file is Kohya format with the true alpha
    tensors = load_file(final)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in tensors) == train_te
    alphas = {float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas == {2.0}
    with safe_open(final, "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_steps"] == "6"

    latents, timesteps = fixed_inputs()
    model = result.model
    trained = unet_outputs(model.unet, model.text_encoders[0], model.tokenizers[0], latents, timesteps)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir)
    base = unet_outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer, latents, timesteps)
    pipe.load_lora_weights(str(final))
    loaded = unet_outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer, latents, timesteps)

    assert (trained - base).abs().max() > 1e-4, "training changed nothing, so the comparison proves nothing"
    assert torch.allclose(loaded, trained, atol=1e-5, rtol=0), (loaded - trained).abs().max()

    # the diffusers-format copy (output.save_diffusers) reloads to the same model
    copy = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir)
    copy.load_lora_weights(str(tmp_path / "out" / "test-lora-diffusers"))
    from_copy = unet_outputs(copy.unet, copy.text_encoder, copy.tokenizer, latents, timesteps)
    assert torch.allclose(from_copy, trained, atol=1e-5, rtol=0), (from_copy - trained).abs().max()


def test_same_seed_same_result(tmp_path, tiny_sd15_dir):
    data = make_dataset(tmp_path / "data")
    files = []
    for run in ("a", "b"):
        job = write_job(tmp_path / f"{run}.toml", tiny_sd15_dir, data, tmp_path / run,
                        sections={"dataset": {"flip": True, "shuffle_caption": True}})
        _, result = run_job(job)
        files.append(load_file(result.outputs[-1]))
    assert files[0].keys() == files[1].keys()
    for k in files[0]:
        assert torch.equal(files[0][k], files[1][k]), k





def test_stop_then_resume_is_bit_identical(tmp_path, tiny_sd15_dir):
    data = make_dataset(tmp_path / "data")
    sections = {"training": {"max_steps": 8, "gradient_accumulation_steps": 2, "lr_scheduler": "cosine",
                             "lr_warmup_steps": 2},
                "lora": {"dropout": 0.1}, "dataset": {"flip": True}}
    straight = write_job(tmp_path / "straight.toml", tiny_sd15_dir, data, tmp_path / "straight", sections=sections)
    _, ref = run_job(straight)

    job = write_job(tmp_path / "stopped.toml", tiny_sd15_dir, data, tmp_path / "stopped", sections=sections)
    _, stopped = run_job(job, controls=StopAt(3))
    assert stopped.status == "stopped" and stopped.step == 3
    assert (tmp_path / "stopped" / "test-lora-step00000003.safetensors").is_file()
    assert not (tmp_path / "stopped" / "test-lora.safetensors").exists()

    _, resumed = run_job(job, resume=True)
    assert resumed.status == "done" and resumed.step == 8
    a, b = load_file(ref.outputs[-1]), load_file(resumed.outputs[-1])
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_existing_output_is_never_overwritten(tmp_path, tiny_sd15_dir):
    from trainer.config import ConfigError  # the inputs gate, the same that `trainer check` passes

    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "test-lora.safetensors").write_bytes(b"the user's earlier LoRA")
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, out)
    with pytest.raises(ConfigError, match="already exists"):
        run_job(job)
    assert (out / "test-lora.safetensors").read_bytes() == b"the user's earlier LoRA"


def test_loss_options_are_recorded_in_the_file_and_shown_by_inspect(tmp_path, tiny_sd15_dir, capsys):
    from trainer.cli import main

    data = make_dataset(tmp_path / "data")
    training = {"max_steps": 2, "loss": "huber", "huber_c": 0.2, "huber_schedule": "exponential",
                "min_snr_gamma": 5.0, "debiased_estimation": True, "noise_offset": 0.05,
                "multires_noise_iterations": 3, "multires_noise_discount": 0.5, "ip_noise_gamma": 0.1,
                "zero_terminal_snr": True, "min_timestep": 10, "max_timestep": 900,
                "timestep_sampling": "logit_normal", "logit_mean": -0.5, "logit_std": 1.5}
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out", sections={
        "model": {"prediction_type": "v_prediction"}, "training": training,
        "dataset": {"masked_training": True, "unmasked_weight": 0.25}})
    _, result = run_job(job)
    with safe_open(result.outputs[-1], "pt") as f:
        meta = f.metadata()
    recorded = {
        "ss_loss_type": "huber", "ss_huber_c": "0.2", "ss_huber_schedule": "exponential", "ss_min_snr_gamma": "5.0",
        "ss_debiased_estimation": "True", "ss_noise_offset": "0.05", "ss_multires_noise_iterations": "3",
        "ss_multires_noise_discount": "0.5", "ss_ip_noise_gamma": "0.1", "ss_zero_terminal_snr": "True",
        "ss_min_timestep": "10", "ss_max_timestep": "900", "ss_timestep_sampling": "logit_normal",
        "ss_logit_mean": "-0.5", "ss_logit_std": "1.5", "ss_masked_loss": "True", "kiln_unmasked_weight": "0.25",
        "ss_prior_loss_weight": "1.0", "ss_huber_scale": "1.0"}
    assert {key: meta.get(key) for key in recorded} == recorded
    assert meta["modelspec.prediction_type"] == "v"
    assert main(["lora", "inspect", str(result.outputs[-1])]) == 0
    report = capsys.readouterr().out
    for key, value in recorded.items():
        assert f"  {key} = {value}\n" in report
