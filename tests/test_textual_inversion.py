"""Textual inversion end to end: TOML job -> training on a tiny model (CPU) -> embedding file -> a fresh diffusers
pipeline with load_textual_inversion gives the trained model's outputs; plus what must never change and the
token checks."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import StopAt, make_dataset, write_job
from trainer.config import ConfigError, load_job
from trainer.conditioning import TextConditioner
from trainer.loop import default_paths, train
from trainer.methods.textual_inversion import TextualInversionMethod, vector_tokens
from trainer.models import load_base_model

TOKEN = "<kiln-shape>"
PROMPT = f"a photo of a {TOKEN} on a table"


def ti_job(tmp_path, base, *, vectors=1, name="job", textual_inversion=None, training=None, output=None):
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=3)
    ti = {"token": TOKEN, "init_word": "shape", "vectors": vectors, "template": "object", **(textual_inversion or {})}
    return write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, method="textual_inversion", sections={
        "textual_inversion": ti,
        "training": {"max_steps": 4, "batch_size": 3, "learning_rate": 5e-2, **(training or {})},
        "output": {"name": "test-ti", **(output or {})}})


def expanded(prompt: str, vectors: int) -> str:
    return prompt.replace(TOKEN, " ".join(vector_tokens(TOKEN, vectors)))


def fixed_unet_inputs(arch: str):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    timesteps = torch.tensor([500])
    # SDXL's size/crop conditioning: (original h, w, crop top, left, target h, w)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]) if arch == "sdxl" else None
    return latents, timesteps, time_ids


@torch.no_grad()
def unet_output(unet, hidden, pooled, arch):
    latents, timesteps, time_ids = fixed_unet_inputs(arch)
    kwargs = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}} if arch == "sdxl" else {}
    return unet(latents, timesteps, encoder_hidden_states=hidden, **kwargs).sample


@torch.no_grad()
def trained_outputs(model, vectors):
    """Text-encoder and UNet outputs of the trained model, through the conditioning code training used."""
    hidden, pooled = TextConditioner(model.arch, model.tokenizers, model.text_encoders, cache=False).encode(
        [expanded(PROMPT, vectors)], "cpu")
    return hidden, pooled, unet_output(model.unet, hidden, pooled, model.arch)


def assert_other_rows_unchanged(model, base_model):
    for te, base_te in zip(model.text_encoders, base_model.text_encoders):
        before = base_te.get_input_embeddings().weight
        after = te.get_input_embeddings().weight[:before.shape[0]]
        assert torch.equal(after, before), "an embedding row other than the new token's changed"


@pytest.mark.parametrize("vectors", [1, 3])
def test_sd15_embedding_loads_in_diffusers_and_reproduces_training(tmp_path, tiny_sd15_dir, vectors):
    from diffusers import StableDiffusionPipeline

    job = ti_job(tmp_path, tiny_sd15_dir, vectors=vectors, textual_inversion={"save_a1111_pt": vectors == 3})
    cfg = load_job(job)
    result = train(cfg, default_paths(cfg))
    final = tmp_path / "job" / "test-ti.safetensors"
    assert result.status == "done" and result.outputs[-1] == final

    tensors = load_file(final)
    assert list(tensors) == ["emb_params"] and tensors["emb_params"].shape == (vectors, 32)
    with safe_open(final, "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert meta["modelspec.trigger_phrase"] == TOKEN

    base_model = load_base_model(cfg.model)
    assert_other_rows_unchanged(result.model, base_model)
    init = base_model.text_encoders[0].get_input_embeddings().weight[
        base_model.tokenizers[0]("shape", add_special_tokens=False).input_ids[0]]
    assert (tensors["emb_params"] - init).abs().max() > 1e-3, "training did not move the embedding"

    hidden, _, unet_out = trained_outputs(result.model, vectors)
    files = [final] + ([final.with_suffix(".pt")] if vectors == 3 else [])
    for file in files:
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir)
        pipe.load_textual_inversion(str(file), token=TOKEN)
        loaded_hidden, _ = pipe.encode_prompt(PROMPT, "cpu", 1, do_classifier_free_guidance=False)
        assert torch.allclose(loaded_hidden, hidden, atol=1e-5, rtol=0), (file, (loaded_hidden - hidden).abs().max())
        loaded_unet = unet_output(pipe.unet, loaded_hidden, None, "sd15")
        assert torch.allclose(loaded_unet, unet_out, atol=1e-5, rtol=0), (file, (loaded_unet - unet_out).abs().max())


def test_a1111_pt_layout(tmp_path, tiny_sd15_dir):
    job = ti_job(tmp_path, tiny_sd15_dir, vectors=2, textual_inversion={"save_a1111_pt": True},
                 training={"max_steps": 1}, output={"save_precision": "fp16"})
    cfg = load_job(job)
    train(cfg, default_paths(cfg))
    data = torch.load(tmp_path / "job" / "test-ti.pt", weights_only=True)
    assert data["name"] == TOKEN and data["step"] == 1
    (vectors,) = data["string_to_param"].values()
    assert vectors.shape == (2, 32) and vectors.dtype == torch.float16
    assert torch.equal(vectors, load_file(tmp_path / "job" / "test-ti.safetensors")["emb_params"])


def test_sdxl_embedding_loads_per_encoder_and_reproduces_training(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from trainer.models.tiny import make_tiny_sdxl

    vectors = 2
    cfg = load_job(ti_job(tmp_path, "builtin:tiny-sdxl", vectors=vectors))
    result = train(cfg, default_paths(cfg))
    tensors = load_file(result.outputs[-1])
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"clip_l": (vectors, 32), "clip_g": (vectors, 64)}
    with safe_open(result.outputs[-1], "pt") as f:
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
    assert_other_rows_unchanged(result.model, load_base_model(cfg.model))

    hidden, pooled, unet_out = trained_outputs(result.model, vectors)
    pipe = StableDiffusionXLPipeline(**make_tiny_sdxl(seed=0))  # the weights builtin:tiny-sdxl starts from
    # diffusers' documented way for SDXL: each encoder's tensor, loaded into that encoder and its tokenizer.
    pipe.load_textual_inversion(tensors["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(tensors["clip_g"], token=TOKEN, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    loaded_hidden, _, loaded_pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                            do_classifier_free_guidance=False)
    assert torch.allclose(loaded_hidden, hidden, atol=1e-5, rtol=0), (loaded_hidden - hidden).abs().max()
    assert torch.allclose(loaded_pooled, pooled, atol=1e-5, rtol=0), (loaded_pooled - pooled).abs().max()
    loaded_unet = unet_output(pipe.unet, loaded_hidden, loaded_pooled, "sdxl")
    assert torch.allclose(loaded_unet, unet_out, atol=1e-5, rtol=0), (loaded_unet - unet_out).abs().max()





def test_stop_then_resume_is_bit_identical(tmp_path):
    straight = load_job(ti_job(tmp_path, "builtin:tiny-sd15", vectors=2, name="straight",
                               training={"max_steps": 6, "optimizer": "adamw8bit"}))
    reference = train(straight, default_paths(straight))

    cfg = load_job(ti_job(tmp_path, "builtin:tiny-sd15", vectors=2, name="stopped",
                          training={"max_steps": 6, "optimizer": "adamw8bit"}))
    stopped = train(cfg, default_paths(cfg), controls=StopAt(3))
    assert stopped.status == "stopped" and stopped.outputs[-1].name == "test-ti-step00000003.safetensors"
    resumed = train(cfg, default_paths(cfg), resume=True)
    assert resumed.status == "done"
    assert torch.equal(load_file(reference.outputs[-1])["emb_params"], load_file(resumed.outputs[-1])["emb_params"])


# --- bad tokens and init words ----------------------------------------------------------------------------

@pytest.mark.parametrize("token, message", [
    ("", "textual_inversion.token is required"),
    ("my token", "must be one word with no spaces"),
    (" <x>", "must be one word with no spaces"),
    ("<My-Style>", "must be lower case"),
])
def test_bad_token_spelling_is_a_config_error(tmp_path, token, message):
    with pytest.raises(ConfigError, match=message):
        load_job(ti_job(tmp_path, "builtin:tiny-sd15", textual_inversion={"token": token}))


@pytest.mark.parametrize("token", ["dog", "photo", "<kiln-shape>_1"])
def test_token_already_in_vocabulary_is_refused(tmp_path, token):
    cfg = load_job(ti_job(tmp_path, "builtin:tiny-sd15", textual_inversion={"token": token}))
    model = load_base_model(cfg.model)
    model.tokenizers[0].add_tokens(["<kiln-shape>_1"])  # an added token counts as known too
    with pytest.raises(ConfigError, match=f"textual_inversion.token: '{token}' is already in the tokenizer"):
        TextualInversionMethod(cfg).prepare(model)


def test_init_word_of_several_tokens_starts_from_their_mean(tmp_path):
    cfg = load_job(ti_job(tmp_path, "builtin:tiny-sdxl", vectors=2,
                          textual_inversion={"init_word": "watercolor painting"}))
    model = load_base_model(cfg.model)
    method = TextualInversionMethod(cfg)
    method.prepare(model)
    for te, new_ids, tokenizer in zip(model.text_encoders, method.new_ids, model.tokenizers):
        word_ids = tokenizer("watercolor painting", add_special_tokens=False).input_ids
        assert len(word_ids) == 2
        weight = te.get_input_embeddings().weight
        assert torch.equal(weight[new_ids], weight[word_ids].mean(dim=0).expand(2, -1))


def test_init_word_without_tokens_is_refused(tmp_path):
    with pytest.raises(ConfigError, match='textual_inversion.init_word = "   " is not valid .must hold a word'):
        load_job(ti_job(tmp_path, "builtin:tiny-sd15", textual_inversion={"init_word": "   "}))  # when it loads
    cfg = load_job(ti_job(tmp_path, "builtin:tiny-sd15", textual_inversion={"init_word": "cat"}))
    cfg.textual_inversion.init_word = "   "  # and the method itself, for a config changed after loading
    with pytest.raises(ConfigError, match="textual_inversion.init_word = '   ' has no tokens"):
        TextualInversionMethod(cfg).prepare(load_base_model(cfg.model))


def test_a1111_pt_on_sdxl_is_refused(tmp_path):
    cfg = load_job(ti_job(tmp_path, "builtin:tiny-sdxl", textual_inversion={"save_a1111_pt": True}))
    with pytest.raises(ConfigError, match="save_a1111_pt = true does not apply to SDXL"):
        TextualInversionMethod(cfg).prepare(load_base_model(cfg.model))
