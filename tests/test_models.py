"""Base-model loading: single-file writer round trips, offline single-file loading, arch detection, errors."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import infer_diffusers_model_type
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModelWithProjection

from trainer.models import (BaseModel, ModelError, TINY_NOTICE, detect_arch_from_keys, detect_arch_from_unet_config,
                            load_base_model, make_tiny_sd15, make_tiny_sd2, make_tiny_sdxl, save_tiny_model,
                            unet_module_names, write_single_file)
from trainer.models.config_dir import (BUNDLED_CONFIGS, component_config_files, materialize_config_dir,
                                       tokenizers_for)
from trainer.models.single_file import to_original_state_dict

MAKERS = {"sd15": make_tiny_sd15, "sd2": make_tiny_sd2, "sdxl": make_tiny_sdxl}
PIPELINES = {"sd15": StableDiffusionPipeline, "sd2": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(autouse=True)
def kiln_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))


def model_cfg(base, **overrides) -> SimpleNamespace:
    return SimpleNamespace(**{"base": str(base), "arch": "auto", "allow_pickle": False, "prediction_type": "auto",
                              "vae": "", **overrides})


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    a, b = expected.state_dict(), actual.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k].to(a[k].dtype))]
    assert not different, different[:5]


def model_parts(model: BaseModel) -> dict[str, torch.nn.Module]:
    return dict(zip(WEIGHTED, [model.unet, model.vae, *model.text_encoders]))


def generate(model: BaseModel) -> np.ndarray:
    """Two denoising steps through a real pipeline built on the model's config_dir."""
    pipeline_class = PIPELINES[model.arch]
    parts = dict(zip(["unet", "vae", "text_encoder", "text_encoder_2"], [model.unet, model.vae, *model.text_encoders]))
    parts.update(zip(["tokenizer", "tokenizer_2"], model.tokenizers))
    extra = {"safety_checker": None, "feature_extractor": None} if model.arch != "sdxl" else {}
    pipe = pipeline_class.from_pretrained(model.config_dir, **parts, **extra)
    return pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


# --- the single-file writer --------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["sd15", "sdxl", "sd2"])
def test_single_file_round_trip_through_diffusers_loader(tmp_path, arch):
    components = MAKERS[arch](seed=1)
    path = write_single_file(tmp_path / "model.safetensors", arch, components)
    config_dir = materialize_config_dir(arch, component_config_files(arch, components))
    tokenizers = dict(zip(["tokenizer", "tokenizer_2"], tokenizers_for(arch)))
    pipe = PIPELINES[arch].from_single_file(str(path), config=str(config_dir), local_files_only=True, **tokenizers)
    for name in WEIGHTED:
        if name in components:
            assert_same_weights(components[name], getattr(pipe, name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "model.safetensors"]  # no temporary file left


@pytest.mark.parametrize("arch,diffusers_type", [("sd15", "v1"), ("sd2", "v2"), ("sdxl", "xl_base")])
def test_full_size_layout_matches_the_real_checkpoints(arch, diffusers_type):
    """The bundled configs at full size, on the meta device: the written key names and shapes are what diffusers
    recognises as the real model, and Kiln's own detection agrees."""
    from bench.random_models import make_random_components

    components = {name: part for name, part in make_random_components(arch, device="meta").items()
                  if isinstance(part, torch.nn.Module)}
    checkpoint = to_original_state_dict(arch, components)
    assert infer_diffusers_model_type(checkpoint) == diffusers_type
    assert detect_arch_from_keys(checkpoint, "meta") == arch
    n_unet = sum(p.numel() for p in components["unet"].parameters())
    assert {"sd15": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}[arch] == n_unet


def test_unet_module_names_follow_the_original_numbering():
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(BUNDLED_CONFIGS / "sdxl" / "unet"))
    names = unet_module_names(unet)
    assert names["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"] == \
        "input_blocks.4.1.transformer_blocks.0.attn1.to_k"
    assert names["up_blocks.0.attentions.2.transformer_blocks.9.ff.net.2"] == \
        "output_blocks.2.1.transformer_blocks.9.ff.net.2"
    assert names["mid_block.resnets.1.time_emb_proj"] == "middle_block.2.emb_layers.1"
    assert names["down_blocks.0.downsamplers.0.conv"] == "input_blocks.3.0.op"
    assert names["up_blocks.1.upsamplers.0.conv"] == "output_blocks.5.2.conv"
    assert names["add_embedding.linear_2"] == "label_emb.0.2"


# --- loading -----------------------------------------------------------------------------------------------------

def test_single_file_loads_offline_and_generates_like_the_diffusers_folder(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny", arch="sd15", fmt="diffusers")
    single = save_tiny_model(tmp_path / "tiny.safetensors", arch="sd15", fmt="single-file")
    from_folder = load_base_model(model_cfg(folder))
    from_file = load_base_model(model_cfg(single))

    assert (from_file.arch, from_folder.arch) == ("sd15", "sd15")
    for name, module in model_parts(from_folder).items():
        assert_same_weights(module, model_parts(from_file)[name])
        assert not module.training and not any(p.requires_grad for p in model_parts(from_file)[name].parameters())
    assert from_file.hash == hashlib.sha256(single.read_bytes()).hexdigest() and from_folder.hash == ""
    assert (from_file.name, from_folder.name) == ("tiny.safetensors", "tiny")
    assert from_file.prediction_type == "epsilon" and from_file.noise_scheduler.config.num_train_timesteps == 1000
    assert (from_file.config_dir / "model_index.json").is_file()
    assert np.array_equal(generate(from_file), generate(from_folder))


def test_sdxl_and_sd2_single_files_load_with_their_own_settings(tmp_path):
    sdxl = load_base_model(model_cfg(save_tiny_model(tmp_path / "xl.safetensors", "sdxl", "single-file")))
    assert sdxl.arch == "sdxl" and len(sdxl.text_encoders) == len(sdxl.tokenizers) == 2
    assert isinstance(sdxl.text_encoders[1], CLIPTextModelWithProjection)
    assert sdxl.tokenizers[1].pad_token == "!" and sdxl.tokenizers[0].pad_token == "<|endoftext|>"
    assert_same_weights(make_tiny_sdxl()["text_encoder_2"], sdxl.text_encoders[1])
    assert generate(sdxl).shape == (1, 64, 64, 3)

    sd2_file = save_tiny_model(tmp_path / "v.safetensors", "sd2", "single-file")
    assert load_base_model(model_cfg(sd2_file)).prediction_type == "v_prediction"
    overridden = load_base_model(model_cfg(sd2_file, prediction_type="epsilon"))
    assert overridden.prediction_type == overridden.noise_scheduler.config.prediction_type == "epsilon"


def tiny_as_bundled(monkeypatch, arch: str, components: dict) -> None:
    """Make the bundled configs of `arch` describe the tiny components (a foreign file carries no configs, and
    the real ones do not fit tiny weights); model_index and scheduler stay the real architecture's."""
    from trainer.models import loading
    real = loading.bundled_config_files(arch)
    tiny = {k: v for k, v in component_config_files(arch, components).items() if not k.startswith(("model_", "sch"))}
    monkeypatch.setattr(loading, "bundled_config_files", lambda a: {**real, **tiny} if a == arch else real)


def test_foreign_sd2_single_file_defaults_to_v_prediction(tmp_path, monkeypatch):
    components = make_tiny_sd2(seed=2)
    path = tmp_path / "sd2.safetensors"
    save_file({k: v.contiguous() for k, v in to_original_state_dict("sd2", components).items()}, path)
    with pytest.raises(ModelError, match=r"sd2\.safetensors looks like an SD 2\.x checkpoint but does not load"):
        load_base_model(model_cfg(path))  # tiny weights do not fit the real SD 2.1 shapes
    tiny_as_bundled(monkeypatch, "sd2", components)
    model = load_base_model(model_cfg(path))
    assert model.arch == "sd2" and model.prediction_type == "v_prediction"
    assert model.noise_scheduler.config.prediction_type == "v_prediction"
    assert_same_weights(components["text_encoder"], model.text_encoders[0])


def test_loaded_dtype_and_arch_mismatch(tmp_path):
    path = save_tiny_model(tmp_path / "m.safetensors", "sd15", "single-file")
    half = load_base_model(model_cfg(path), dtype=torch.bfloat16)
    assert {p.dtype for m in model_parts(half).values() for p in m.parameters()} == {torch.bfloat16}
    with pytest.raises(ModelError, match=r"m\.safetensors.*SD 1\.x.*arch = 'sdxl'"):
        load_base_model(model_cfg(path, arch="sdxl"))


def test_pickle_needs_allow_pickle(tmp_path, monkeypatch):
    components = make_tiny_sd15(seed=3)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": to_original_state_dict("sd15", components), "global_step": 7}, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(ModelError, match=r"model\.ckpt.*run any code.*allow_pickle = true"):
        load_base_model(model_cfg(ckpt))
    assert ckpt.read_bytes() == before
    tiny_as_bundled(monkeypatch, "sd15", components)
    model = load_base_model(model_cfg(ckpt, allow_pickle=True))
    for name, module in model_parts(model).items():
        assert_same_weights(components[name], module)
    assert model.hash == hashlib.sha256(before).hexdigest()


def test_builtin_models_are_deterministic():
    first, second = load_base_model(model_cfg("builtin:tiny-sd15")), load_base_model(model_cfg("builtin:tiny-sd15"))
    assert first.arch == "sd15" and first.name == "tiny-sd15" and first.hash == ""
    for name, module in model_parts(first).items():
        assert_same_weights(module, model_parts(second)[name])
    xl = load_base_model(model_cfg("builtin:tiny-sdxl"))
    assert xl.arch == "sdxl" and len(xl.text_encoders) == 2
    assert json.loads((xl.config_dir / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    with pytest.raises(ModelError, match="builtin:tiny-sd4.*builtin:tiny-sd15.*builtin:tiny-flux"):
        load_base_model(model_cfg("builtin:tiny-sd4"))


# --- bad input ---------------------------------------------------------------------------------------------------

def test_missing_path_and_offline_hub_id_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(ModelError, match=str(missing).replace("\\", "\\\\").replace(".", r"\.")):
        load_base_model(model_cfg(missing))
    with pytest.raises(ModelError, match="stabilityai/stable-diffusion-xl-base-1.0"):
        load_base_model(model_cfg("stabilityai/stable-diffusion-xl-base-1.0"))


def test_non_sd_safetensors_is_refused_by_name(tmp_path):
    path = tmp_path / "classifier.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ModelError, match=r"classifier\.safetensors is not a Stable Diffusion model.*model\.diffusion_model"):
        load_base_model(model_cfg(path))
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 2)}, lora)
    with pytest.raises(ModelError, match=r"style\.safetensors is a LoRA"):
        load_base_model(model_cfg(lora))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=r"broken\.safetensors is not a readable"):
        load_base_model(model_cfg(broken))
    assert broken.read_bytes() == b"not a safetensors file"


def test_arch_detection():
    unet = "model.diffusion_model.input_blocks.0.0.weight"
    assert detect_arch_from_keys([unet, "cond_stage_model.transformer.text_model.final_layer_norm.weight"], "f") == "sd15"
    assert detect_arch_from_keys([unet, "cond_stage_model.model.ln_final.weight"], "f") == "sd2"
    assert detect_arch_from_keys([unet, "conditioner.embedders.0.transformer.text_model.x",
                                  "conditioner.embedders.1.model.ln_final.weight"], "f") == "sdxl"
    with pytest.raises(ModelError, match="refiner"):
        detect_arch_from_keys([unet, "conditioner.embedders.0.model.ln_final.weight"], "f")
    with pytest.raises(ModelError, match="f has a UNet but no text encoder"):
        detect_arch_from_keys([unet], "f")
    for arch in ("sd15", "sd2", "sdxl"):
        config = json.loads((BUNDLED_CONFIGS / arch / "unet" / "config.json").read_text())
        assert detect_arch_from_unet_config(config, "folder") == arch
    tiny = dict(make_tiny_sd2()["unet"].config)
    assert detect_arch_from_unet_config(tiny, "folder", {"hidden_act": "gelu"}) == "sd2"
    with pytest.raises(ModelError, match="folder: cannot tell.*cross_attention_dim=32"):
        detect_arch_from_unet_config(tiny, "folder")


# --- tiny models on disk -----------------------------------------------------------------------------------------

def test_save_tiny_model_writes_notice_and_never_overwrites(tmp_path):
    folder = save_tiny_model(tmp_path / "xl", arch="sdxl", fmt="diffusers")
    assert (folder / "README.txt").read_text().strip() == TINY_NOTICE
    assert load_base_model(model_cfg(folder)).arch == "sdxl"
    single = save_tiny_model(tmp_path / "m.safetensors", arch="sd15", fmt="single-file")
    with safe_open(str(single), framework="pt") as f:
        assert f.metadata()["kiln_notice"] == TINY_NOTICE
    before = load_file(single)
    for out, fmt in [(folder, "diffusers"), (single, "single-file")]:
        with pytest.raises(ModelError, match=f"refusing to overwrite {out}"):
            save_tiny_model(out, arch="sd15", fmt=fmt)
    after = load_file(single)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["m.safetensors", "xl"]


def test_vae_override_from_folder(tmp_path):
    other = make_tiny_sd15(seed=9)["vae"]
    other.save_pretrained(tmp_path / "vae")
    model = load_base_model(model_cfg("builtin:tiny-sd15", vae=str(tmp_path / "vae")))
    assert_same_weights(other, model.vae)
    with pytest.raises(ModelError, match="VAE not found"):
        load_base_model(model_cfg("builtin:tiny-sd15", vae=str(tmp_path / "missing")))
