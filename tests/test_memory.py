"""trainer/memory.py: its parameter counts are those of the bundled architectures (rebuilt on the meta device,
LoRA layers added by peft exactly as training adds them), and the breakdown moves the way each setting should."""
from __future__ import annotations

import pytest
import torch

from trainer.config import parse_job
from trainer.memory import ARCHS, OPTIMIZER_BYTES, estimate_memory, lora_parameters


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


def line(est, what):
    return next(x.gib for x in est.device if x.what.startswith(what))


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
    assert line(plain, "VAE weights") == pytest.approx(ARCHS["sdxl"].vae * 4 / 2**30)  # fp32 VAE under fp16
    bf16 = estimate_memory(job(training={"mixed_precision": "bf16"}), "sdxl")
    assert line(bf16, "VAE weights") == pytest.approx(line(plain, "VAE weights") / 2)
    uncached = estimate_memory(job(training={"cache_latents": False}), "sdxl")
    assert line(uncached, "VAE encoder activations") > 0 and uncached.vram_gib > plain.vram_gib
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


def test_unknown_arch_has_no_estimate():
    assert estimate_memory(job(), "flux") is None
