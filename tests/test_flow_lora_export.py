"""SD3 / Flux / Chroma LoRA export: the Kohya-layout file reproduces every module's trained delta exactly (the
reader's formula up @ down · alpha / rank on the fused original layers, compared part by part with peft's
delta), and the files reload in the diffusers pipelines with outputs equal to the trained model's."""
from __future__ import annotations

import pytest
import torch
from diffusers import ChromaPipeline, FluxPipeline, StableDiffusion3Pipeline
from peft import LoraConfig
from safetensors.torch import load_file

from trainer.families.chroma.tiny import make_tiny_chroma
from trainer.families.dit.fused_lora import reader_deltas, trained_deltas
from trainer.families.dit.lora_export import kohya_lora_tensors, save_diffusers, save_kohya
from trainer.families.dit.lora_targets import flux_targets, parse_indices, sd3_targets
from trainer.families.flux.keymap import flux_rows
from trainer.families.flux.tiny import make_tiny_flux
from trainer.families.sd3.keymap import sd3_rows
from trainer.families.sd3.tiny import make_tiny_sd3
from trainer.models.errors import ModelError

CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def _randomize_lora(*models, seed=0):
    """peft starts B at zero; give every LoRA weight a value so each delta is non-zero and distinct."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models:
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _family(name):
    if name == "flux":
        c = make_tiny_flux()
        return c, flux_rows(c["transformer"].config), flux_targets(c["transformer"])
    if name == "chroma":
        c = make_tiny_chroma()
        return c, flux_rows(c["transformer"].config, chroma=True), flux_targets(c["transformer"])
    c = make_tiny_sd3()
    return c, sd3_rows(c["transformer"].config), sd3_targets(c["transformer"])


def _assert_exact(model, rows, tensors, prefix="lora_unet"):
    trained = trained_deltas(model)
    read = reader_deltas(tensors)
    owner = {path: (r, i) for r in rows for i, (path, _) in enumerate(r.parts)}
    checked = 0
    for module, delta in trained.items():
        r, i = owner[module]
        start = sum(rows_ for _, rows_ in r.parts[:i])
        name = f"{prefix}_{r.original.replace('.', '_')}"
        part = read[name][start:start + r.parts[i][1]] if r.fused else read[name]
        assert (part - delta).norm() <= 1e-5 * delta.norm(), module
        checked += 1
    for r in rows:  # rows of a fused layer whose part did not train stay exactly zero
        name = f"{prefix}_{r.original.replace('.', '_')}"
        if name in read and r.fused:
            start = 0
            for path, n in r.parts:
                if path not in trained:
                    assert torch.count_nonzero(read[name][start:start + n]) == 0
                start += n
    assert checked == len(trained) > 0


@pytest.mark.parametrize("family", ["flux", "sd3", "chroma"])
def test_kohya_export_reproduces_every_trained_delta(family):
    c, rows, targets = _family(family)
    transformer = c["transformer"]
    # unequal ranks and alphas inside fused layers: the export must fold them into one scale
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=targets,
                                       rank_pattern={r"attn.to_k$": 2}, alpha_pattern={r"attn.to_v$": 6}))
    _randomize_lora(transformer)
    tensors = kohya_lora_tensors(transformer, rows)
    _assert_exact(transformer, rows, tensors)
    keys = set(tensors)
    if family == "flux":
        assert {"lora_unet_double_blocks_0_img_attn_qkv.alpha", "lora_unet_single_blocks_0_linear1.lora_up.weight",
                "lora_unet_double_blocks_1_txt_mod_lin.lora_down.weight"} <= keys
        assert tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape[0] == 4 + 2 + 4 + 4
    if family == "sd3":
        assert {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight",
                "lora_unet_joint_blocks_0_x_block_attn2_qkv.alpha",
                "lora_unet_joint_blocks_1_context_block_attn_qkv.lora_down.weight"} <= keys


def test_text_encoder_lora_keys_and_deltas():
    c = make_tiny_sd3()
    for encoder in (c["text_encoder"], c["text_encoder_2"]):
        encoder.add_adapter(LoraConfig(r=2, lora_alpha=1, target_modules=CLIP_TARGETS))
    _randomize_lora(c["text_encoder"], c["text_encoder_2"])
    tensors = kohya_lora_tensors(None, [], [(c["text_encoder"], "lora_te1"), (c["text_encoder_2"], "lora_te2"),
                                             (c["text_encoder_3"], "lora_te3")])
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in tensors
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2.alpha" in tensors
    assert not any(k.startswith("lora_te3") for k in tensors)  # T5 never trains


def test_partial_blocks_and_sublayers():
    transformer = make_tiny_flux()["transformer"]
    assert parse_indices("0-1", 2, "x") == [0, 1] and parse_indices("", 3, "x") is None
    with pytest.raises(ModelError, match="outside"):
        parse_indices("0-5", 2, "train_double_block_indices")
    names = flux_targets(transformer, train_blocks="double", double_indices="1", sublayers=["attn"])
    assert names and all(n.startswith("transformer_blocks.1.attn.") for n in names)
    single = flux_targets(transformer, train_blocks="single", sublayers=["mlp"])
    assert set(single) == {f"single_transformer_blocks.{i}.{leaf}" for i in (0, 1) for leaf in ("proj_mlp", "proj_out")}
    # a fused layer with only some parts trained: the others' rows are zero in the file
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=single))
    _randomize_lora(transformer)
    tensors = kohya_lora_tensors(transformer, flux_rows(transformer.config))
    _assert_exact(transformer, flux_rows(transformer.config), tensors)
    assert tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape[0] == 2


def _sample(pipe, **kwargs):
    return pipe("a photo of sks dog", height=32, width=32, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0), max_sequence_length=16, **kwargs).images


@torch.no_grad()
def test_flux_kohya_file_reloads_in_diffusers_with_equal_outputs(tmp_path):
    """Double blocks (fused qkv) through diffusers' Kohya-Flux reader. Its reader of single-block `linear1`
    files hard-codes the 3072 width of the real model, so single blocks are proven by the reader formula above."""
    trained = make_tiny_flux()
    targets = flux_targets(trained["transformer"], train_blocks="double")
    trained["transformer"].add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=targets))
    trained["text_encoder"].add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=CLIP_TARGETS))
    _randomize_lora(trained["transformer"], trained["text_encoder"])
    expected = _sample(FluxPipeline(**trained))
    tensors = kohya_lora_tensors(trained["transformer"], flux_rows(trained["transformer"].config),
                                 [(trained["text_encoder"], "lora_te1")])
    path = save_kohya(tmp_path / "lora.safetensors", tensors, {"ss_network_module": "networks.lora_flux"},
                      dtype=torch.float32)
    assert all(k.startswith(("lora_unet_", "lora_te1_")) for k in load_file(str(path)))
    pipe = FluxPipeline(**make_tiny_flux())
    before = _sample(pipe)
    pipe.load_lora_weights(str(path))
    after = _sample(pipe)
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("family", ["flux", "sd3", "chroma"])
def test_diffusers_layout_export_reloads_with_equal_outputs(tmp_path, family):
    pipeline_class = {"flux": FluxPipeline, "sd3": StableDiffusion3Pipeline, "chroma": ChromaPipeline}[family]
    trained, _, targets = _family(family)
    trained["transformer"].add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=targets))
    models = {"transformer": trained["transformer"]}
    if family != "chroma":
        trained["text_encoder"].add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=CLIP_TARGETS))
        models["text_encoder"] = trained["text_encoder"]
    _randomize_lora(*models.values())
    expected = _sample(pipeline_class(**trained))
    save_diffusers(tmp_path / "lora", pipeline_class, models, dtype=torch.float32)
    fresh = _family(family)[0]
    pipe = pipeline_class(**fresh)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    torch.testing.assert_close(_sample(pipe), expected, rtol=1e-5, atol=1e-6)
