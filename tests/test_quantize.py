"""training.base_quantization = "int8" (trainer/quantize.py): the frozen UNet's linear layers as bitsandbytes'
int8 layers (on the CPU through its CPU backend), LoRA fp32 on top. A LoRA trained on an int8 base learns, and
its exported file, loaded by diffusers onto the same int8 base, gives exactly the trained model's output."""
from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from tests.helpers import load_export_into, make_dataset, write_job
from tests.test_mixed_precision import denoiser_output, pipeline
from trainer.config import ConfigError, load_job, parse_job
from trainer.data import TrainData, scan_dataset
from trainer.evaluate import fixed_denoising_loss
from trainer.loop import default_paths, train
from trainer.families import FAMILIES
from trainer.memory import estimate_memory
from trainer.models import load_base_model
from trainer.quantize import quantize_linear_layers


def int8_job(tmp_path, base, name="int8", **training):
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=3)
    return load_job(write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, sections={
        "training": {"base_quantization": "int8", **training}, "output": {"name": name}}))


def test_a_lora_on_an_int8_base_learns(tmp_path):
    cfg = int8_job(tmp_path, "builtin:tiny-sdxl", max_steps=120, batch_size=3, learning_rate=3e-3)
    cfg.lora.rank, cfg.lora.alpha, cfg.lora.train_conv = 8, 8, True  # tests/test_learning.py's job
    eval_data = TrainData(scan_dataset(cfg.dataset), cfg.dataset, 3, seed=0)
    base = load_base_model(cfg.model)
    quantize_linear_layers(base.unet, "cpu")  # the loss before, on the same int8 base
    before = fixed_denoising_loss(base, eval_data)
    result = train(cfg, default_paths(cfg))
    int8 = [m for m in result.model.unet.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert int8 and all(m.weight.dtype == torch.int8 for m in int8)
    assert not any(type(m) is torch.nn.Linear and not m.weight.requires_grad for m in result.model.unet.modules())
    learning = {p.dtype for p in result.model.unet.parameters() if p.requires_grad}
    assert learning == {torch.float32}
    after = fixed_denoising_loss(result.model, eval_data)
    assert after <= 0.7 * before, (before, after)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_the_exported_lora_is_exact_on_the_same_int8_base(tmp_path, arch, request):
    base = request.getfixturevalue(f"tiny_{arch}_dir")
    cfg = int8_job(tmp_path, base, max_steps=3)
    result = train(cfg, default_paths(cfg))

    trained = pipeline(arch, base)
    trained.unet = result.model.unet  # the text encoders are the base's (the LoRA is UNet-only)
    loaded = load_export_into(pipeline(arch, base), arch, "lora", result.outputs[-1], result.model.config_dir)
    quantize_linear_layers(loaded.unet, "cpu")  # the same int8 base under the loaded LoRA layers
    plain = denoiser_output(pipeline(arch, base), arch)
    out, reference = denoiser_output(loaded, arch), denoiser_output(trained, arch)
    assert (reference - plain).abs().max() > 1e-4, "nothing was learned, so the comparison proves nothing"
    assert torch.equal(out, reference)


def test_fp8_base_and_base_quantization_fp8_are_one_setting(tmp_path, tiny_sd15_dir):
    old = int8_job(tmp_path, tiny_sd15_dir, "old", base_quantization="none", fp8_base=True, mixed_precision="bf16",
                   gradient_checkpointing=True)
    new = int8_job(tmp_path, tiny_sd15_dir, "new", base_quantization="fp8", mixed_precision="bf16",
                   gradient_checkpointing=True)
    for cfg in (old, new):
        assert cfg.training.fp8_base and cfg.training.base_quantization == "fp8"


@pytest.mark.parametrize("extra, named", [
    ({"fp8_base": True, "mixed_precision": "bf16"}, "conflicts with training.fp8_base = true"),
    ({"blocks_to_swap": 2, "gradient_checkpointing": True}, "conflicts with training.blocks_to_swap = 2"),
])
def test_int8_refusals_name_the_key(tmp_path, tiny_sd15_dir, extra, named):
    with pytest.raises(ConfigError, match=named):
        int8_job(tmp_path, tiny_sd15_dir, **extra)


def test_int8_with_dora_is_refused(tmp_path, tiny_sd15_dir):
    make_dataset(tmp_path / "data", n=1)
    with pytest.raises(ConfigError, match="does not work with lora.dora = true"):
        load_job(write_job(tmp_path / "job.toml", tiny_sd15_dir, tmp_path / "data", tmp_path / "out",
                           sections={"training": {"base_quantization": "int8"}, "lora": {"dora": True}}))


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
def test_the_memory_models_linear_weights_are_those_of_the_bundled_architectures(arch):
    from bench.random_models import make_random_components

    unet = make_random_components(arch, device="meta")["unet"]
    assert sum(m.weight.numel() for m in unet.modules() if type(m) is torch.nn.Linear) == FAMILIES[arch].memory.linear_weights


def test_int8_takes_a_byte_per_linear_weight_off_the_training_phase():
    def training_gib(quantization):
        cfg = parse_job({"method": "lora", "model": {"base": "x"}, "dataset": {"dir": "/nowhere"},
                         "training": {"mixed_precision": "bf16", "base_quantization": quantization}}, complete=False)
        return estimate_memory(cfg, "sdxl").phase("training").gib

    assert training_gib("none") - training_gib("int8") == pytest.approx(FAMILIES["sdxl"].memory.linear_weights / 2**30)
