"""Kohya LoRA export: a fresh pipeline loading the exported file must reproduce the trained model exactly."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from trainer.export import (LoraExportInfo, addnet_hashes, build_lora_metadata, kohya_lora_tensors,
                            lora_module_alphas, peft_to_kohya, save_lora, save_lora_diffusers)
from trainer.models.tiny import make_tiny_sd15

RANK, ALPHA = 4, 2            # rank != alpha, so a file that loses alpha gives different outputs
CONV_RANK, CONV_ALPHA = 2, 3
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"]
FEED_FORWARD = ["ff.net.0.proj", "ff.net.2"]
TEXT_ENCODER = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
TOLERANCE = 1e-5


def conv_layers(unet: torch.nn.Module) -> list[str]:
    return [name for name, module in unet.named_modules()
            if isinstance(module, torch.nn.Conv2d) and ("resnets" in name or "samplers" in name)]


def lora_pipeline(*, text_encoder: bool, feed_forward: bool = False, conv: bool = False) -> StableDiffusionPipeline:
    """A tiny SD 1.5 pipeline with LoRA added the way Kiln's trainer adds it, every lora_B made non-zero."""
    pipe = StableDiffusionPipeline(**make_tiny_sd15())
    targets = ATTENTION + (FEED_FORWARD if feed_forward else [])
    convs = conv_layers(pipe.unet) if conv else []
    pipe.unet.add_adapter(LoraConfig(
        r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=targets + convs,
        rank_pattern={name: CONV_RANK for name in convs}, alpha_pattern={name: CONV_ALPHA for name in convs}))
    if text_encoder:
        pipe.text_encoder.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                                 target_modules=TEXT_ENCODER))
    generator = torch.Generator().manual_seed(7)
    for name, param in [*pipe.unet.named_parameters(), *pipe.text_encoder.named_parameters()]:
        if "lora_B" in name:
            param.data = 0.1 * torch.randn(param.shape, generator=generator)
    return pipe


@torch.no_grad()
def outputs(pipe: StableDiffusionPipeline) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet output on fixed latents/timestep/encoder states, and text-encoder output on fixed ids."""
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    encoder_states = torch.randn(1, 77, 32, generator=generator)
    ids = torch.randint(0, 49408, (1, 77), generator=generator)
    return pipe.unet(latents, 500, encoder_states).sample, pipe.text_encoder(ids)[0]


LOSS_KEYS = ("ss_loss_type", "ss_huber_c", "ss_huber_schedule", "ss_min_snr_gamma", "ss_debiased_estimation",
             "ss_noise_offset", "ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_ip_noise_gamma",
             "ss_zero_terminal_snr", "ss_min_timestep", "ss_max_timestep", "ss_timestep_sampling", "ss_logit_mean",
             "ss_logit_std", "ss_masked_loss", "kiln_unmasked_weight", "ss_prior_loss_weight", "ss_huber_scale",
             "ss_adaptive_noise_scale", "ss_noise_offset_random_strength", "ss_ip_noise_gamma_random_strength")
# keys sd-scripts' SD3/Flux trainers write for arguments its SD 1.x/2.x/SDXL trainers (and so Kiln's importer) lack
KOHYA_ONLY_KEYS = ("ss_timestep_sampling", "ss_logit_mean", "ss_logit_std")


def info(**changes) -> LoraExportInfo:
    fields = dict(output_name="sks-dog", rank=RANK, alpha=ALPHA, training_started_at=1_700_000_000.5,
                  training_finished_at=1_700_000_600.0, steps=100, epoch=2, max_train_steps=100, num_epochs=2,
                  learning_rate=1e-4, unet_lr=1e-4, text_encoder_lr=5e-5, optimizer="adamw8bit",
                  lr_scheduler="constant", mixed_precision="fp16", num_train_images=50, num_batches_per_epoch=25,
                  batch_size=2, tag_frequency={"10_sks dog": {"sks dog": 5, "grass": 2}},
                  dataset_dirs={"10_sks dog": (10, 5)}, seed=42, loss_settings={"training.noise_offset": 0.05},
                  base_model_name="tiny.safetensors", base_model_hash="ab" * 32)
    fields.update(changes)
    return LoraExportInfo(**fields)


def reload(file_or_folder: Path) -> StableDiffusionPipeline:
    fresh = StableDiffusionPipeline(**make_tiny_sd15())
    fresh.load_lora_weights(str(file_or_folder))
    return fresh


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_unet_only_lora_reloads_to_the_same_outputs(tmp_path):
    pipe = lora_pipeline(text_encoder=False)
    trained_unet, _ = outputs(pipe)
    path = save_lora(tmp_path / "unet.safetensors", unet=pipe.unet, text_encoders=[pipe.text_encoder],
                     info=info(), dtype=torch.float32)

    base_unet, base_text = outputs(StableDiffusionPipeline(**make_tiny_sd15()))
    assert max_diff(base_unet, trained_unet) > 1e-3   # the LoRA changes the output, so the check below can fail
    reloaded_unet, reloaded_text = outputs(reload(path))
    assert max_diff(reloaded_unet, trained_unet) < TOLERANCE
    assert torch.equal(reloaded_text, base_text)     # an untrained text encoder exports nothing
    assert all(key.startswith("lora_unet_") for key in read(path)[0])


def test_unet_and_text_encoder_lora_reload_to_the_same_outputs(tmp_path):
    pipe = lora_pipeline(text_encoder=True)
    trained_unet, trained_text = outputs(pipe)
    path = save_lora(tmp_path / "both.safetensors", unet=pipe.unet, text_encoders=[pipe.text_encoder],
                     info=info(), dtype=torch.float32)

    _, base_text = outputs(StableDiffusionPipeline(**make_tiny_sd15()))
    assert max_diff(base_text, trained_text) > 1e-3
    reloaded_unet, reloaded_text = outputs(reload(path))
    assert max_diff(reloaded_unet, trained_unet) < TOLERANCE
    assert max_diff(reloaded_text, trained_text) < TOLERANCE


def test_feed_forward_and_conv_lora_reload_to_the_same_outputs(tmp_path):
    pipe = lora_pipeline(text_encoder=True, feed_forward=True, conv=True)
    trained_unet, trained_text = outputs(pipe)
    path = save_lora(tmp_path / "conv.safetensors", unet=pipe.unet, text_encoders=[pipe.text_encoder],
                     info=info(conv_rank=CONV_RANK, conv_alpha=CONV_ALPHA), dtype=torch.float32)

    tensors, _ = read(path)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tensors[f"{conv}.lora_down.weight"].shape == (CONV_RANK, 32, 3, 3)
    assert tensors[f"{conv}.lora_up.weight"].shape == (32, CONV_RANK, 1, 1)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.lora_up.weight" in tensors
    reloaded_unet, reloaded_text = outputs(reload(path))
    assert max_diff(reloaded_unet, trained_unet) < TOLERANCE
    assert max_diff(reloaded_text, trained_text) < TOLERANCE


def test_keys_follow_kohya_names_and_alpha_is_the_trained_alpha(tmp_path):
    pipe = lora_pipeline(text_encoder=True, conv=True)
    tensors, _ = read(save_lora(tmp_path / "keys.safetensors", unet=pipe.unet, text_encoders=[pipe.text_encoder],
                                info=info(), dtype=torch.float32))

    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in tensors
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in tensors
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight" in tensors
    modules = {key.split(".")[0] for key in tensors}
    assert len(tensors) == 3 * len(modules)
    convs = {f"lora_unet_{name.replace('.', '_')}" for name in conv_layers(make_tiny_sd15()["unet"])}
    for module in modules:
        alpha = tensors[f"{module}.alpha"]
        assert alpha.ndim == 0
        assert alpha.item() == (CONV_ALPHA if module in convs else ALPHA)
        assert tensors[f"{module}.lora_down.weight"].shape[0] == (CONV_RANK if module in convs else RANK)


def test_default_save_is_fp16_and_bf16_is_available(tmp_path):
    pipe = lora_pipeline(text_encoder=True)
    fp16, _ = read(save_lora(tmp_path / "a.safetensors", unet=pipe.unet, text_encoders=[pipe.text_encoder],
                             info=info()))
    bf16, _ = read(save_lora(tmp_path / "b.safetensors", unet=pipe.unet, text_encoders=[pipe.text_encoder],
                             info=info(), dtype=torch.bfloat16))
    assert {tensor.dtype for tensor in fp16.values()} == {torch.float16}
    assert {tensor.dtype for tensor in bf16.values()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="float64"):
        save_lora(tmp_path / "c.safetensors", unet=pipe.unet, info=info(), dtype=torch.float64)


def test_metadata_holds_kohya_and_modelspec_keys_as_strings(tmp_path):
    pipe = lora_pipeline(text_encoder=False, conv=True)
    _, metadata = read(save_lora(tmp_path / "m.safetensors", unet=pipe.unet, arch="sd15",
                                 info=info(conv_rank=CONV_RANK, conv_alpha=CONV_ALPHA, clip_skip=2)))

    assert all(isinstance(value, str) for value in metadata.values())
    expected = {
        "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
        "ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_output_name": "sks-dog",
        "ss_training_started_at": "1700000000", "ss_training_finished_at": "1700000600", "ss_steps": "100",
        "ss_epoch": "2", "ss_learning_rate": "0.0001", "ss_unet_lr": "0.0001", "ss_text_encoder_lr": "5e-05",
        "ss_optimizer": "adamw8bit", "ss_lr_scheduler": "constant", "ss_mixed_precision": "fp16",
        "ss_num_train_images": "50", "ss_num_batches_per_epoch": "25", "ss_num_epochs": "2",
        "ss_batch_size_per_device": "2", "ss_max_train_steps": "100", "ss_resolution": "(512, 512)",
        "ss_seed": "42", "ss_noise_offset": "0.05", "ss_min_snr_gamma": "None", "ss_clip_skip": "2",
        "ss_sd_model_name": "tiny.safetensors", "ss_new_sd_model_hash": "ab" * 32, "ss_training_comment": "None",
        "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers", "modelspec.title": "sks-dog", "modelspec.resolution": "512x512",
        "modelspec.date": "2023-11-14T22:23:20+00:00", "modelspec.prediction_type": "epsilon",
        "modelspec.encoder_layer": "2",
    }
    assert {key: metadata.get(key) for key in expected} == expected
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "3.0"}
    assert json.loads(metadata["ss_tag_frequency"]) == {"10_sks dog": {"sks dog": 5, "grass": 2}}
    assert json.loads(metadata["ss_dataset_dirs"]) == {"10_sks dog": {"n_repeats": 10, "img_count": 5}}


def test_loss_settings_are_recorded_as_kohya_writes_them():
    # sd-scripts' train_network.py: str() of each argument; None for an unset one (noise_offset, min_snr_gamma,
    # ip_noise_gamma, multires_noise_iterations, min/max_timestep), bools as True/False, floats as floats.
    defaults = build_lora_metadata(info(loss_settings={}), "sd15")
    assert {key: defaults[key] for key in LOSS_KEYS} == {
        "ss_loss_type": "l2", "ss_huber_c": "0.1", "ss_huber_schedule": "snr", "ss_min_snr_gamma": "None",
        "ss_debiased_estimation": "False", "ss_noise_offset": "None", "ss_multires_noise_iterations": "None",
        "ss_multires_noise_discount": "0.3", "ss_ip_noise_gamma": "None", "ss_zero_terminal_snr": "False",
        "ss_min_timestep": "None", "ss_max_timestep": "None", "ss_timestep_sampling": "uniform",
        "ss_logit_mean": "0.0", "ss_logit_std": "1.0", "ss_masked_loss": "False", "kiln_unmasked_weight": "0.0",
        "ss_prior_loss_weight": "1.0", "ss_huber_scale": "1.0", "ss_adaptive_noise_scale": "None",
        "ss_noise_offset_random_strength": "False", "ss_ip_noise_gamma_random_strength": "False"}
    changed = build_lora_metadata(info(loss_settings={
        "training.loss": "smooth_l1", "training.min_snr_gamma": 5, "training.multires_noise_iterations": 6,
        "training.max_timestep": 900, "training.debiased_estimation": True, "dataset.unmasked_weight": 0.5}), "sd15")
    assert (changed["ss_loss_type"], changed["ss_min_snr_gamma"], changed["ss_multires_noise_iterations"],
            changed["ss_max_timestep"], changed["ss_min_timestep"], changed["ss_debiased_estimation"],
            changed["kiln_unmasked_weight"]) == ("smooth_l1", "5.0", "6", "900", "None", "True", "0.5")


def test_every_loss_option_has_a_metadata_key_and_kohya_names_agree_with_the_importer():
    from trainer.config.kohya import IMPLIED_KEYS, KOHYA_BY_NAME
    from trainer.diffusion import Objective
    from trainer.export.metadata import LOSS_SETTING_KEYS

    recorded = {entry.setting for entry in LOSS_SETTING_KEYS}
    options = {f"training.{name}" for name in Objective.__dataclass_fields__} - {"training.scheduler",
                                                                                "training.prediction_type"}
    assert options | {"training.zero_terminal_snr", "dataset.masked_training"} <= recorded
    implied = dict(IMPLIED_KEYS)
    for entry in LOSS_SETTING_KEYS:
        if entry.kohya is None:  # Kiln's own setting, or one only Kohya's SD3/Flux trainers have
            assert entry.key.startswith("kiln_") or entry.key in KOHYA_ONLY_KEYS, entry
        else:  # the sd-scripts argument imports into the setting recorded under its name
            assert entry.key.startswith("ss_"), entry
            target = KOHYA_BY_NAME[entry.kohya].target if entry.kohya in KOHYA_BY_NAME else implied[entry.kohya]
            assert entry.setting in target, entry


def test_metadata_names_v_prediction_sd2_and_sdxl():
    sd2 = build_lora_metadata(info(prediction_type="v_prediction", resolution=(768, 640)), "sd2")
    assert sd2["ss_v2"] == "True" and sd2["ss_base_model_version"] == "sd_v2"
    assert sd2["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert sd2["modelspec.prediction_type"] == "v"
    assert sd2["modelspec.resolution"] == "768x640" and sd2["ss_resolution"] == "(768, 640)"
    assert "ss_network_args" not in sd2 and "modelspec.encoder_layer" not in sd2
    sdxl = build_lora_metadata(info(resolution=(1024, 1024)), "sdxl")
    assert sdxl["ss_base_model_version"] == "sdxl_base_v1-0"
    assert sdxl["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    with pytest.raises(ValueError, match="lumina2"):  # (sd3 was unknown before the family layer)
        build_lora_metadata(info(), "lumina2")
    with pytest.raises(ValueError, match="sample"):
        build_lora_metadata(info(prediction_type="sample"), "sd15")


def a1111_hashes(path: Path) -> tuple[str, str]:
    """What A1111's additional-networks extension computes from a file on disk."""
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length:]).hexdigest()
    tensors, metadata = read(path)
    stripped = safetensors.torch.save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    return model_hash, hashlib.sha256(stripped[0x100000:0x110000]).hexdigest()[:8]


def test_sshs_hashes_match_what_a1111_computes_from_the_file(tmp_path):
    pipe = lora_pipeline(text_encoder=True)
    path = save_lora(tmp_path / "h.safetensors", unet=pipe.unet, text_encoders=[pipe.text_encoder], info=info())
    _, metadata = read(path)
    assert (metadata["sshs_model_hash"], metadata["sshs_legacy_hash"]) == a1111_hashes(path)


def test_legacy_hash_covers_the_bytes_at_one_mebibyte(tmp_path):
    # The tiny LoRA is smaller than 1 MiB, where the legacy hash starts reading; check it on a bigger file.
    tensors = {"lora_unet_x.lora_down.weight": torch.randn(600, 600), "lora_unet_x.alpha": torch.tensor(2.0)}
    metadata = {"ss_output_name": "big", "modelspec.title": "not hashed"}
    model_hash, legacy_hash = addnet_hashes(tensors, metadata)
    path = tmp_path / "big.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    assert (model_hash, legacy_hash) == a1111_hashes(path)
    assert legacy_hash != hashlib.sha256(b"").hexdigest()[:8]


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_the_target_untouched(tmp_path, monkeypatch, existing):
    pipe = lora_pipeline(text_encoder=False)
    target = tmp_path / "out.safetensors"
    if existing:
        target.write_bytes(b"the user's previous LoRA")

    def write_half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_lora(target, unet=pipe.unet, info=info())
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out.safetensors"] if existing else [])
    if existing:
        assert target.read_bytes() == b"the user's previous LoRA"


def test_diffusers_copy_keeps_alpha_and_reloads_to_the_same_outputs(tmp_path):
    pipe = lora_pipeline(text_encoder=True, conv=True)
    trained_unet, trained_text = outputs(pipe)
    path = save_lora_diffusers(tmp_path / "diffusers", unet=pipe.unet, text_encoder=pipe.text_encoder,
                               dtype=torch.float32)
    assert path.parent == tmp_path / "diffusers" and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    reloaded_unet, reloaded_text = outputs(reload(path.parent))
    assert max_diff(reloaded_unet, trained_unet) < TOLERANCE
    assert max_diff(reloaded_text, trained_text) < TOLERANCE


def test_unet_module_names_hook_renames_keys_and_sdxl_requires_it():
    pipe = lora_pipeline(text_encoder=False)
    renames = {name: f"renamed.{i}" for i, name in enumerate(lora_module_alphas(pipe.unet))}
    tensors = kohya_lora_tensors(pipe.unet, arch="sdxl", unet_module_names=renames)
    assert {key.split(".")[0] for key in tensors} == {f"lora_unet_renamed_{i}" for i in range(len(renames))}
    assert len(tensors) == 3 * len(renames)
    with pytest.raises(ValueError, match="unet_module_names"):
        kohya_lora_tensors(pipe.unet, arch="sdxl")
    with pytest.raises(ValueError, match="mapping"):
        kohya_lora_tensors(pipe.unet, arch="sdxl", unet_module_names=dict(list(renames.items())[1:]))


def test_sdxl_text_encoders_get_te1_and_te2_prefixes_with_text_model_level():
    config = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            projection_dim=32)
    encoders = [CLIPTextModel(config), CLIPTextModelWithProjection(config)]   # SDXL's two encoders
    for encoder in encoders:
        encoder.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TEXT_ENCODER))
    modules = {key.split(".")[0] for key in kohya_lora_tensors(text_encoders=encoders, arch="sdxl")}
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in modules
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc1" in modules
    assert all(module.startswith(("lora_te1_text_model_", "lora_te2_text_model_")) for module in modules)


def test_unsupported_or_empty_exports_are_refused():
    with pytest.raises(ValueError, match="CP/Tucker"):
        peft_to_kohya({"a.hada_t1": torch.ones(1)}, {"a": 1.0}, "lora_unet")
    with pytest.raises(ValueError, match="nothing to save"):
        kohya_lora_tensors(StableDiffusionPipeline(**make_tiny_sd15()).unet)
