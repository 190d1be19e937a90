"""trainer/memory.py: its parameter counts are those of the bundled architectures (rebuilt on the meta device,
LoRA layers added by peft exactly as training adds them), and the breakdown moves the way each setting should."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.config import parse_job
from trainer.memory import ARCHS, OPTIMIZER_BYTES, estimate_memory, lora_parameters

ROOT = Path(__file__).resolve().parents[1]


def lora_settings(**values):
    from trainer.config import LoraSection

    return LoraSection(**{"rank": 1, "alpha": 1.0, **values})


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
def test_parameter_counts_are_those_of_the_bundled_architectures(arch):
    from bench.random_models import make_random_components
    from trainer.methods.lora import text_encoder_lora_config, unet_lora_config

    facts = ARCHS[arch]
    parts = make_random_components(arch, device="meta")
    encoders = [parts[k] for k in ("text_encoder", "text_encoder_2") if k in parts]
    count = lambda module, lora=False: sum(p.numel() for n, p in module.named_parameters() if ("lora_" in n) == lora)
    assert count(parts["unet"]) == facts.unet and count(parts["vae"]) == facts.vae
    assert tuple(count(te) for te in encoders) == facts.text_encoders
    assert tuple(te.get_input_embeddings().weight.numel() for te in encoders) == facts.embeddings
    pooled = encoders[-1].config.projection_dim if arch == "sdxl" else 0  # SDXL's pooled text embedding
    # the fp8 base covers what diffusers' layerwise casting hooks (the loop's call): linear/conv, not the norms
    with torch.device("meta"):
        parts["unet"].enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    hooked = [m for m in parts["unet"].modules() if getattr(m, "_diffusers_hook", None) is not None
              and m._diffusers_hook.get_hook("layerwise_casting") is not None]
    assert sum(p.numel() for m in hooked for p in m.parameters(recurse=False)) == facts.fp8_layers
    assert facts.text_values == 77 * parts["unet"].config.cross_attention_dim + pooled

    lora = lora_settings(rank=3, train_ff=True, train_conv=True, conv_rank=2)
    with torch.device("meta"):
        parts["unet"].add_adapter(unet_lora_config(lora))
        for te in encoders:
            # every layer: the memory model counts them all (training skips SDXL CLIP-L's last one: a bound)
            te.add_adapter(text_encoder_lora_config(lora, te.config.num_hidden_layers))
    learned = count(parts["unet"], lora=True) + sum(count(te, lora=True) for te in encoders)
    assert learned == lora_parameters(facts, lora, with_text=True)


def job(method="lora", **sections):
    values = {"method": method, "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": "/nonexistent"},
              "training": {"mixed_precision": "fp16", "optimizer": "adamw8bit"}}
    if method == "textual_inversion":
        values["textual_inversion"] = {"token": "<t>", "init_word": "dog"}
    if method == "dreambooth":
        values["dreambooth"] = {"instance_prompt": "sks dog", "class_prompt": "dog"}
    for section, extra in sections.items():
        values.setdefault(section, {}).update(extra)
    return parse_job(values, source="<test>")


def line(est, what, phase="training"):
    return next(x.gib for x in est.phase(phase).lines if x.what.startswith(what))


def test_each_setting_moves_its_own_line():
    plain = estimate_memory(job(), "sdxl")
    ckpt = estimate_memory(job(training={"gradient_checkpointing": True}), "sdxl")
    assert line(ckpt, "UNet activations") < line(plain, "UNet activations")
    assert ckpt.vram_gib < plain.vram_gib
    adamw = estimate_memory(job(training={"optimizer": "adamw"}), "sdxl")
    ratio = line(adamw, "optimizer state") / line(plain, "optimizer state")
    assert ratio == pytest.approx(OPTIMIZER_BYTES["adamw"] / OPTIMIZER_BYTES["adamw8bit"])
    fp32 = estimate_memory(job(training={"mixed_precision": "no"}), "sdxl")
    assert line(fp32, "UNet weights") == pytest.approx(2 * line(plain, "UNet weights"))
    vae = lambda est: line(est, "VAE weights", "caching latents")
    assert vae(plain) == pytest.approx(ARCHS["sdxl"].vae * 4 / 2**30)  # fp32 VAE under fp16
    bf16 = estimate_memory(job(training={"mixed_precision": "bf16"}), "sdxl")
    assert vae(bf16) == pytest.approx(vae(plain) / 2)
    uncached = estimate_memory(job(training={"cache_latents": False}), "sdxl")
    assert line(uncached, "VAE encoder activations") > 0 and uncached.vram_gib > plain.vram_gib
    assert line(uncached, "VAE weights") == vae(plain) and uncached.phase("caching latents") is None
    bigger = estimate_memory(job(dataset={"resolution": 2048}, training={"batch_size": 2}), "sdxl")
    assert line(bigger, "UNet activations") == pytest.approx(8 * line(plain, "UNet activations"))


def test_what_learns_per_method():
    full = estimate_memory(job("dreambooth", dreambooth={"train_text_encoder": True}), "sd15")
    assert line(full, "UNet weights") == pytest.approx(ARCHS["sd15"].unet * 4 / 2**30)
    assert line(full, "gradients") == pytest.approx((ARCHS["sd15"].unet + ARCHS["sd15"].text_encoders[0]) * 4 / 2**30)
    ti = estimate_memory(job("textual_inversion"), "sd15")
    assert line(ti, "gradients") == pytest.approx(ARCHS["sd15"].embeddings[0] * 4 / 2**30)
    assert line(ti, "token-embedding tables") == pytest.approx(2 * ARCHS["sd15"].embeddings[0] * 4 / 2**30)
    lora = estimate_memory(job(lora={"rank": 8}), "sd15")
    assert line(lora, "gradients") == pytest.approx(ARCHS["sd15"].lora_attention * 8 * 4 / 2**30)
    assert full.vram_gib > ti.vram_gib > lora.vram_gib


def test_ram_side_counts_the_fp32_load_and_the_latent_cache():
    est = estimate_memory(job(dataset={"resolution": 512}), "sd15", images=100)
    facts = ARCHS["sd15"]
    loaded = next(x.gib for x in est.ram if x.what.startswith("base model"))
    assert loaded == pytest.approx((facts.unet + facts.vae + sum(facts.text_encoders)) * 4 / 2**30)
    cache = next(x.gib for x in est.ram if x.what.startswith("latent cache"))
    assert cache == pytest.approx(100 * 4 * 64 * 64 * 2 / 2**30)  # fp16 job: latents kept in fp16
    full = estimate_memory(job(dataset={"resolution": 512}, training={"mixed_precision": "no"}), "sd15", images=100)
    assert next(x.gib for x in full.ram if x.what.startswith("latent cache")) == pytest.approx(2 * cache)
    assert est.cpu_ram_gib() >= est.ram_gib
    loading = lambda e: next(x.gib for x in e.ram if x.what == "while loading")
    single = estimate_memory(job(model={"base": "/models/x.safetensors"}), "sd15")
    assert loading(single) == pytest.approx((facts.unet + facts.vae + sum(facts.text_encoders)) * 2 / 2**30)
    assert loading(est) < loading(single)
    text = "\n".join(est.lines())
    assert "UNet weights" in text and "gradient_checkpointing" in text and "host RAM" in text


def sdxl_all_savers(resolution=1024, **training):
    """The GPU suite's SDXL case: LoRA rank 16, 8-bit AdamW, both caches, gradient checkpointing, 1024 px, batch 1."""
    return job(dataset={"resolution": resolution}, lora={"rank": 16, "alpha": 8},
               training={"batch_size": 1, "gradient_checkpointing": True, "cache_latents": True,
                         "cache_text_encoder_outputs": True, **training})


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_sdxl_lora_1024_all_savers_peaks_in_training_without_vae_and_text_encoders(precision):
    est = estimate_memory(sdxl_all_savers(mixed_precision=precision), "sdxl")
    assert [p.name for p in est.phases] == ["caching latents", "caching text-encoder outputs", "training"]
    training = est.phase("training")
    assert est.peak is training and est.vram_gib == pytest.approx(training.gib)
    names = [x.what for x in training.lines]
    assert "VAE weights" not in names and "text encoder weights" not in names
    facts = ARCHS["sdxl"]
    assert line(est, "text encoder weights", "caching text-encoder outputs") == pytest.approx(
        sum(facts.text_encoders) * 2 / 2**30)
    parked = sum(x.gib for x in est.parked)
    assert parked == pytest.approx(line(est, "VAE weights", "caching latents") + sum(facts.text_encoders) * 2 / 2**30)
    # The same job with the VAE and the text encoders kept on the GPU all along (as before offloading): the
    # training phase held them too, so the peak drops by exactly what is parked.
    kept = training.gib + parked
    assert kept - est.vram_gib == pytest.approx(parked) and parked > 1.5
    assert est.lines()[0].startswith(f"GPU at its peak: about {est.vram_gib:.1f} GiB, while training")
    assert f"  training: about {training.gib:.1f} GiB  <- peak" in est.lines()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fp8_base_takes_a_byte_per_covered_unet_parameter_off_the_training_phase(precision):
    plain = estimate_memory(sdxl_all_savers(mixed_precision=precision), "sdxl")
    fp8 = estimate_memory(sdxl_all_savers(mixed_precision=precision, base_quantization="fp8"), "sdxl")
    saving = ARCHS["sdxl"].fp8_layers / 2**30
    assert plain.phase("training").gib - fp8.phase("training").gib == pytest.approx(saving)
    assert line(fp8, "UNet weights") == pytest.approx((2 * ARCHS["sdxl"].unet - ARCHS["sdxl"].fp8_layers) / 2**30)
    assert next(x for x in fp8.savers if x.what == "base_quantization = fp8").gib == pytest.approx(-saving)
    # printed 2026-12-01: 8.51 GiB without; with the fp8 base the training phase is 6.12 GiB, and under fp16 the peak
    # moves to caching latents (the fp32 VAE at 1024 px, 7.21 GiB): below 8 GB either way
    assert round(fp8.phase("training").gib, 2) == 6.12 and fp8.vram_gib * 2**30 < 8e9
    # without gradient checkpointing backward keeps every upcast layer: no saving
    no_ckpt = estimate_memory(sdxl_all_savers(mixed_precision=precision, base_quantization="fp8",
                                              gradient_checkpointing=False), "sdxl")
    assert line(no_ckpt, "upcast UNet layers kept for backward") == pytest.approx(ARCHS["sdxl"].fp8_layers * 2 / 2**30)


def test_the_peak_phase_is_named_when_caching_is_the_larger():
    # fp16 at 2048 px: the fp32 VAE encoding one 2048 px image outweighs training with checkpointing
    est = estimate_memory(sdxl_all_savers(2048, mixed_precision="fp16"), "sdxl")
    caching = est.phase("caching latents")
    assert est.peak is caching and est.vram_gib == pytest.approx(caching.gib)
    assert caching.gib > est.phase("training").gib
    assert "while caching latents" in est.lines()[0]
    assert [x for x in est.lines() if x.endswith("<- peak")] == [f"  caching latents: about {caching.gib:.1f} GiB  <- peak"]


def test_text_encoders_stay_on_the_gpu_when_their_outputs_cannot_be_cached():
    for cfg in (job("textual_inversion"), job("dreambooth", dreambooth={"train_text_encoder": True}),
                job(lora={"train_text_encoder": True}), job(dataset={"shuffle_caption": True}),
                job(dataset={"concepts": [{"dir": "/x", "shuffle_caption": True}]}),
                job(training={"cache_text_encoder_outputs": False})):
        est = estimate_memory(cfg, "sd15")
        assert est.phase("caching text-encoder outputs") is None, cfg.method
        assert line(est, "text encoder weights") > 0 and line(est, "text encoder activations") > 0
    saver = next(x for x in estimate_memory(job(dataset={"caption_dropout_rate": 0.1}), "sd15").savers
                 if x.what == "cache_text_encoder_outputs")
    assert "captions vary" in saver.note


def test_what_learns_comes_from_the_method_spec(monkeypatch):
    import dataclasses

    from trainer.methods import lora_spec, spec

    plain = estimate_memory(job(lora={"rank": 4}), "sd15")
    # A LoRA spec that says it trains the text encoder: the model follows it, with no rule of its own.
    changed = dataclasses.replace(lora_spec.LORA, trains_text_encoder=lambda cfg: True)
    monkeypatch.setattr(spec, "spec_for", lambda method: changed)
    told = estimate_memory(job(lora={"rank": 4}), "sd15")
    facts = ARCHS["sd15"]
    assert line(told, "gradients") - line(plain, "gradients") == pytest.approx(sum(facts.lora_text) * 4 * 4 / 2**30)
    assert told.phase("caching text-encoder outputs") is None and plain.phase("caching text-encoder outputs")


def test_previews_and_validation_note_what_they_borrow():
    assert not estimate_memory(job(), "sdxl").notes
    note = estimate_memory(job(sample={"prompts": ["a kiln"]}), "sdxl").notes
    assert len(note) == 1 and "VAE weights and text encoder weights" in note[0]


def test_the_preflight_card_reads_the_peak_from_the_report():
    from ui.preflight_card import read_check_report

    est = estimate_memory(sdxl_all_savers(), "sdxl")
    summary = read_check_report("\n".join(["total steps: 10   epochs: 1", *est.lines()]))
    assert summary.memory_gib == round(est.vram_gib, 1) and "while training" in summary.memory_line


def test_unknown_arch_has_no_estimate():
    assert estimate_memory(job(), "lumina2") is None  # (flux was unknown before the family layer)


def test_the_preflight_card_advises_the_savers_that_are_off_largest_first():
    """An SDXL job with only the caches on, on an 8 GiB GPU: the card names the savers the memory model says
    are off (checkpointing, fp8 base), each with what it saves, in the order they help."""
    from trainer.config import load_job
    from ui.preflight_card import card_html, read_check_report

    cfg = sdxl_all_savers(mixed_precision="bf16", gradient_checkpointing=False)
    report = "\n".join(["total steps: 10   epochs: 1", *estimate_memory(cfg, "sdxl").lines()])
    summary = read_check_report(report)
    names = [name for name, _ in summary.unused_savers]
    assert names[0] == "gradient_checkpointing" and "cache_latents" not in names
    gains = [gib for _, gib in summary.unused_savers]
    assert gains == sorted(gains, reverse=True) and all(g > 0 for g in gains)

    ckpt = estimate_memory(sdxl_all_savers(mixed_precision="bf16"), "sdxl")  # checkpointing on: fp8 now counts
    on_ckpt = read_check_report("\n".join(["total steps: 10   epochs: 1", *ckpt.lines()]))
    fp8 = dict(on_ckpt.unused_savers)["base_quantization = fp8"]
    assert fp8 == pytest.approx(2.39, abs=0.01)
    card = card_html(load_job(ROOT / "presets" / "demo-lora.toml"), True,
                     "\n".join(["total steps: 10   epochs: 1", *ckpt.lines()]), gpu_gib=6.0)
    assert "turn on Quantized base UNet = fp8 (−2.4 GiB)" in card


def test_transformer_families_load_in_bf16_under_bf16():
    """models.loading.base_load_dtype: Flux / SD3 / Chroma read their base straight into bf16 under bf16 (no
    fp32 copy on the host); under fp16 and for the SD families the base is read in fp32."""
    def loaded(arch, precision):
        est = estimate_memory(job(model={"base": "/models/x"}, training={"mixed_precision": precision}), arch)
        return next(x for x in est.ram if x.what.startswith("base model"))
    facts = ARCHS["flux"]
    total = facts.unet + facts.vae + sum(facts.text_encoders)
    assert loaded("flux", "bf16").what == "base model loaded in bf16"
    assert loaded("flux", "bf16").gib == pytest.approx(total * 2 / 2**30)
    assert loaded("flux", "fp16").gib == pytest.approx(total * 4 / 2**30)
    assert loaded("sdxl", "bf16").what == "base model loaded in fp32"
