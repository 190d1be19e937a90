"""SD3, Flux and Chroma caption encoding and denoiser calls give the tensors their diffusers pipelines' own
code paths give (encode_prompt, _pack_latents / _prepare_latent_image_ids / _unpack_latents, the transformer
call of the denoising loop)."""
from __future__ import annotations

import pytest
import torch
from diffusers import ChromaPipeline, FluxPipeline, StableDiffusion3Pipeline

from trainer.families.chroma import conditioning as chroma
from trainer.families.chroma.tiny import make_tiny_chroma
from trainer.families.flux import conditioning as flux
from trainer.families.flux.tiny import make_tiny_flux
from trainer.families.sd3 import conditioning as sd3
from trainer.families.sd3.tiny import T5_WIDTH, make_tiny_sd3

CAPTIONS = ["a photo of sks dog", "a red painting of a cat in the style of sks"]
CPU = torch.device("cpu")


def _eval(components):
    for value in components.values():
        if isinstance(value, torch.nn.Module):
            value.eval()
    return components


@torch.no_grad()
@pytest.mark.parametrize("guidance", [True, False])
def test_flux_encoding_and_prediction_match_the_pipeline(guidance):
    c = _eval(make_tiny_flux(guidance=guidance))
    pipe = FluxPipeline(**c)
    embeds, pooled, text_ids = pipe.encode_prompt(CAPTIONS, None, device=CPU, max_sequence_length=24)
    cond = flux.encode([c["tokenizer"], c["tokenizer_2"]], [c["text_encoder"], c["text_encoder_2"]], CAPTIONS, CPU,
                       max_length=24)
    assert torch.equal(cond.t5, embeds) and torch.equal(cond.pooled, pooled)

    latents = torch.randn(2, 16, 8, 6, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.3, 0.9])
    packed = pipe._pack_latents(latents, 2, 16, 8, 6)
    assert torch.equal(flux.pack(latents), packed)
    guidance_input = torch.full((2,), 1.0) if guidance else None
    expected = c["transformer"](hidden_states=packed, timestep=sigmas, guidance=guidance_input,
                                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                img_ids=pipe._prepare_latent_image_ids(2, 4, 3, CPU, torch.float32),
                                return_dict=False)[0]
    expected = pipe._unpack_latents(expected, 8 * pipe.vae_scale_factor, 6 * pipe.vae_scale_factor,
                                    pipe.vae_scale_factor)
    assert torch.equal(flux.predict(c["transformer"], latents, sigmas, cond, guidance=1.0), expected)


@torch.no_grad()
@pytest.mark.parametrize("with_t5", [True, False])
def test_sd3_encoding_and_prediction_match_the_pipeline(with_t5):
    c = _eval(make_tiny_sd3())
    if not with_t5:
        c["text_encoder_3"] = c["tokenizer_3"] = None
    pipe = StableDiffusion3Pipeline(**c)
    embeds, _, pooled, _ = pipe.encode_prompt(CAPTIONS, None, None, device=CPU, do_classifier_free_guidance=False,
                                              max_sequence_length=20)
    cond = sd3.encode([c["tokenizer"], c["tokenizer_2"], c["tokenizer_3"]],
                      [c["text_encoder"], c["text_encoder_2"], c["text_encoder_3"]], CAPTIONS, CPU,
                      joint_width=T5_WIDTH, max_length=20)
    assert torch.equal(cond.hidden, embeds)  # without T5: zeros of T5's width in its place
    assert torch.equal(cond.pooled, pooled)

    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.25, 0.75])
    expected = c["transformer"](hidden_states=latents, timestep=sigmas * 1000, encoder_hidden_states=cond.hidden,
                                pooled_projections=pooled, return_dict=False)[0]
    assert torch.equal(sd3.predict(c["transformer"], latents, sigmas, cond), expected)


@torch.no_grad()
def test_sd3_t5_cache_gives_the_same_conditioning():
    c = _eval(make_tiny_sd3())
    toks, encs = [c["tokenizer"], c["tokenizer_2"], c["tokenizer_3"]], [c["text_encoder"], c["text_encoder_2"], c["text_encoder_3"]]
    cached = sd3.encode_t5(c["tokenizer_3"], c["text_encoder_3"], CAPTIONS, CPU, T5_WIDTH)
    a = sd3.encode(toks, encs, CAPTIONS, CPU, T5_WIDTH)
    b = sd3.encode(toks, [encs[0], encs[1], None], CAPTIONS, CPU, T5_WIDTH, t5=cached)
    assert torch.equal(a.hidden, b.hidden)


@torch.no_grad()
def test_chroma_encoding_and_prediction_match_the_pipeline():
    c = _eval(make_tiny_chroma())
    pipe = ChromaPipeline(**c)
    embeds, text_ids, mask, *_ = pipe.encode_prompt(CAPTIONS, device=CPU, do_classifier_free_guidance=False,
                                                    max_sequence_length=16)
    cond = chroma.encode([c["tokenizer"]], [c["text_encoder"]], CAPTIONS, CPU, max_length=16)
    assert torch.equal(cond.t5, embeds) and torch.equal(cond.mask, mask)

    latents = torch.randn(2, 16, 6, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.5, 0.1])
    packed = pipe._pack_latents(latents, 2, 16, 6, 8)
    # The installed pipeline passes this mask as floats, which attention adds as a bias instead of masking
    # (diffusers issue #12116); Kiln masks with booleans, as the fix for that issue does.
    full_mask = pipe._prepare_attention_mask(2, packed.shape[1], torch.bool, mask.bool())
    assert full_mask.dtype == torch.bool
    expected = c["transformer"](hidden_states=packed, timestep=sigmas, encoder_hidden_states=embeds, txt_ids=text_ids,
                                img_ids=pipe._prepare_latent_image_ids(2, 3, 4, CPU, torch.float32),
                                attention_mask=full_mask, return_dict=False)[0]
    expected = pipe._unpack_latents(expected, 6 * pipe.vae_scale_factor, 8 * pipe.vae_scale_factor,
                                    pipe.vae_scale_factor)
    assert torch.equal(chroma.predict(c["transformer"], latents, sigmas, cond), expected)


@torch.no_grad()
@pytest.mark.parametrize("family", ["flux", "sd3", "chroma"])
def test_caching_conditioner_gives_the_uncached_conditioning(family):
    from trainer.families.dit.conditioner import FlowTextConditioner
    if family == "flux":
        c, parts, names = _eval(make_tiny_flux()), flux.text_parts(16), ("", "_2")
    elif family == "sd3":
        c, parts, names = _eval(make_tiny_sd3()), sd3.text_parts(T5_WIDTH, 16), ("", "_2", "_3")
    else:
        c, parts, names = _eval(make_tiny_chroma()), chroma.text_parts(16), ("",)
    tokenizers = [c[f"tokenizer{n}"] for n in names]
    encoders = [c[f"text_encoder{n}"] for n in names]
    uncached = FlowTextConditioner(parts, tokenizers, encoders, cache=False)
    cached = FlowTextConditioner(parts, tokenizers, encoders, cache=True)
    cached.precompute(CAPTIONS, CPU)
    for caption in CAPTIONS:  # one caption at a time: exactly what the cache stored
        a, b = vars(uncached.encode([caption], CPU)), vars(cached.encode([caption], CPU))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    both = vars(cached.encode(CAPTIONS, CPU))
    assert all(v.shape[0] == 2 for v in both.values())
    # T5 is cached even while the CLIP encoders train (cache=False): its encoder runs once per caption
    calls = []
    encoders[parts.t5_index].register_forward_hook(lambda *_: calls.append(1))
    uncached.encode(CAPTIONS, CPU)
    uncached.encode(CAPTIONS[::-1], CPU)
    assert len(calls) == 0  # filled by the first round above
    fresh = FlowTextConditioner(parts, tokenizers, encoders, cache=False)
    fresh.encode(CAPTIONS, CPU)
    fresh.encode(CAPTIONS, CPU)
    assert len(calls) == len(CAPTIONS)
