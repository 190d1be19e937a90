"""training.base_quantization = "int8" | "nf4" (trainer/quantize.py): the frozen UNet's linear layers as
bitsandbytes' int8 or 4-bit NormalFloat layers (on the CPU through its CPU backend), LoRA fp32 on top. A LoRA
trained on a quantized base learns, and its exported file, loaded by diffusers onto the same quantized base,
gives exactly the trained model's output."""
from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import load_export_into, make_dataset, write_job
from tests.test_mixed_precision import denoiser_output, pipeline
from trainer.config import ConfigError, load_job, parse_job
from trainer.data import TrainData, scan_dataset
from trainer.evaluate import fixed_denoising_loss
from trainer.loop import default_paths, train
from trainer.families import FAMILIES
from trainer.memory import estimate_memory
from trainer.config.sections import ModelSection
from trainer.models import load_base_model
from trainer.quantize import quantize_linear_layers


QUANTIZED = {"int8": (bnb.nn.Linear8bitLt, torch.int8), "nf4": (bnb.nn.Linear4bit, torch.uint8)}


def int8_job(tmp_path, base, name="int8", kind="int8", **training):
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=3)
    training = {"base_quantization": kind, **training}
    return load_job(write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, sections={
        "training": training, "output": {"name": name}}))


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_a_lora_on_a_quantized_base_learns(tmp_path, tiny_sdxl_dir, kind):
    cfg = int8_job(tmp_path, tiny_sdxl_dir, kind=kind, max_steps=120, batch_size=3, learning_rate=3e-3)
    cfg.lora.rank, cfg.lora.alpha, cfg.lora.train_conv = 8, 8, True  # tests/test_learning.py's job
    eval_data = TrainData(scan_dataset(cfg.dataset), cfg.dataset, 3, seed=0)
    base = load_base_model(cfg.model)
    quantize_linear_layers(base.unet, "cpu", kind)  # the loss before, on the same quantized base
    before = fixed_denoising_loss(base, eval_data)
    result = train(cfg, default_paths(cfg))
    assert "quantized layer by layer as they were read" in result.model.load_note  # the folder: as read
    layer_type, stored = QUANTIZED[kind]
    quantized = [m for m in result.model.unet.modules() if isinstance(m, layer_type)]
    assert quantized and all(m.weight.dtype == stored for m in quantized)
    assert not any(type(m) is torch.nn.Linear and not m.weight.requires_grad for m in result.model.unet.modules())
    learning = {p.dtype for p in result.model.unet.parameters() if p.requires_grad}
    assert learning == {torch.float32}
    after = fixed_denoising_loss(result.model, eval_data)
    assert after <= 0.7 * before, (before, after)


@pytest.mark.parametrize("kind", ["int8", "nf4"])
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_the_exported_lora_is_exact_on_the_same_quantized_base(tmp_path, arch, kind, request):
    base = request.getfixturevalue(f"tiny_{arch}_dir")
    cfg = int8_job(tmp_path, base, kind=kind, max_steps=3)
    result = train(cfg, default_paths(cfg))

    trained = pipeline(arch, base)
    trained.unet = result.model.unet  # the text encoders are the base's (the LoRA is UNet-only)
    loaded = load_export_into(pipeline(arch, base), arch, "lora", result.outputs[-1], result.model.config_dir)
    quantize_linear_layers(loaded.unet, "cpu", kind)  # the same quantized base under the loaded LoRA layers
    plain = denoiser_output(pipeline(arch, base), arch)
    out, reference = denoiser_output(loaded, arch), denoiser_output(trained, arch)
    assert (reference - plain).abs().max() > 1e-4, "nothing was learned, so the comparison proves nothing"
    assert torch.equal(out, reference)


@pytest.mark.parametrize("kind", ["int8", "nf4"])
@pytest.mark.parametrize("extra, named", [
    ({"blocks_to_swap": 2, "gradient_checkpointing": True}, "conflicts with training.blocks_to_swap = 2"),
])
def test_int8_and_nf4_refusals_name_the_key(tmp_path, tiny_sd15_dir, extra, named, kind):
    with pytest.raises(ConfigError, match=f'base_quantization = "{kind}" {named}'):
        int8_job(tmp_path, tiny_sd15_dir, kind=kind, **extra)


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

    linear = FAMILIES["sdxl"].memory.linear_weights
    assert training_gib("none") - training_gib("int8") == pytest.approx(linear / 2**30)
    # nf4: half a byte and an fp32 scale per 64 weights instead of bf16's 2 bytes (SDXL: ~3.0 GiB)
    assert training_gib("none") - training_gib("nf4") == pytest.approx(linear * (2 - 0.5 - 4 / 64) / 2**30)


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_a_denoiser_quantized_as_it_is_read_equals_one_quantized_after_loading(tmp_path, tiny_sdxl_dir, kind):
    """trainer/quantize_load.py reads the file tensor by tensor into a meta-built UNet: the same layers, the
    same quantized bytes and the same output as loading the whole UNet in the training dtype, then quantizing."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from trainer.quantize_load import load_quantized_denoiser

    unet = load_base_model(ModelSection(base=str(tiny_sdxl_dir)), device="cpu", dtype=torch.float32).unet
    path = tmp_path / "unet.safetensors"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    linear = sum(m.weight.numel() for m in unet.modules() if type(m) is torch.nn.Linear)
    whole = unet.to(torch.bfloat16)
    quantize_linear_layers(whole, "cpu", kind, torch.bfloat16)
    with torch.device("meta"):
        streamed = UNet2DConditionModel.from_config(unet.config)
    count = load_quantized_denoiser(streamed, path, kind, "cpu", torch.bfloat16)
    assert count == linear and count
    a, b = whole.state_dict(), streamed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    layer_type, stored = QUANTIZED[kind]
    layers = [m for m in streamed.modules() if isinstance(m, layer_type)]
    assert layers and all(m.weight.dtype == stored for m in layers)
    assert not any(type(m) is torch.nn.Linear for m in streamed.modules())
    c = unet.config
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    args = (torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), torch.tensor([10]),
            torch.randn(1, 77, c.cross_attention_dim, dtype=torch.bfloat16))
    extra = {"text_embeds": torch.randn(1, pooled, dtype=torch.bfloat16), "time_ids": torch.zeros(1, 6)}
    with torch.no_grad():
        assert torch.equal(whole(*args, added_cond_kwargs=extra).sample, streamed(*args, added_cond_kwargs=extra).sample)


def test_a_file_missing_a_tensor_is_named(tmp_path, tiny_sdxl_dir):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from trainer.quantize_load import load_quantized_denoiser

    unet = load_base_model(ModelSection(base=str(tiny_sdxl_dir)), device="cpu", dtype=torch.float32).unet
    state = {k: v.contiguous() for k, v in unet.state_dict().items() if k != "conv_in.weight"}
    save_file(state, str(tmp_path / "unet.safetensors"))
    with torch.device("meta"):
        streamed = UNet2DConditionModel.from_config(unet.config)
    with pytest.raises(ValueError, match="no tensor 'conv_in.weight'"):
        load_quantized_denoiser(streamed, tmp_path / "unet.safetensors", "int8")


def _frozen_in(unet, dtype):
    """What the loop's cast_model makes of a frozen denoiser: its floating tensors in `dtype`."""
    for p in unet.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    return unet


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if isinstance(sa[k], torch.Tensor) and not torch.equal(sa[k], sb[k])]
    assert not different, different[:3]
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]


@pytest.mark.parametrize("kind", ["int8", "nf4"])
@pytest.mark.parametrize("sharded", [False, True])
def test_the_job_loader_quantizes_a_diffusers_folder_as_it_reads_it(tmp_path, tiny_sdxl_dir, kind, sharded):
    """load_base_model with a QuantizedLoad (what a job with base_quantization asks) builds the UNet on the meta
    device and fills it from unet/diffusion_pytorch_model*.safetensors (one file, or shards with their index):
    the same layers and bytes as the old way, loading it whole in fp32, casting to the training dtype, then
    quantizing."""
    import shutil

    from diffusers import UNet2DConditionModel
    from trainer.quantize_load import QuantizedLoad

    folder = tiny_sdxl_dir
    if sharded:  # the same model with its UNet in several files and diffusers' index of them
        folder = tmp_path / "sharded"
        shutil.copytree(tiny_sdxl_dir, folder)
        shutil.rmtree(folder / "unet")
        UNet2DConditionModel.from_pretrained(tiny_sdxl_dir, subfolder="unet").save_pretrained(
            folder / "unet", max_shard_size="50KB")
        assert len(list((folder / "unet").glob("*.safetensors"))) > 1
        assert (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    section = ModelSection(base=str(folder))
    old = load_base_model(section)
    quantize_linear_layers(_frozen_in(old.unet, torch.bfloat16), "cpu", kind, torch.bfloat16)
    new = load_base_model(section, quantize=QuantizedLoad(kind, torch.bfloat16))
    assert "quantized layer by layer as they were read" in new.load_note
    assert ("shards" in new.load_note) == sharded
    layer_type, stored = QUANTIZED[kind]
    assert [m for m in new.unet.modules() if isinstance(m, layer_type)]  # quantized by the load itself
    assert new.unet.conv_in.weight.dtype == torch.float32  # what is not quantized: in the load dtype
    _same_tensors(old.unet, _frozen_in(new.unet, torch.bfloat16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="quantizing on the training device needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_on_a_gpu_the_loader_quantizes_there_and_keeps_the_bytes_on_the_host(tiny_sdxl_dir, kind):
    """With a GPU each layer is quantized by bitsandbytes' CUDA kernels as it is read (the old way quantized
    there too), then held in host RAM until the loop places the model: the same bytes as the old way's."""
    from trainer.quantize_load import QuantizedLoad

    section = ModelSection(base=str(tiny_sdxl_dir))
    old = load_base_model(section)
    quantize_linear_layers(_frozen_in(old.unet, torch.bfloat16), "cuda", kind, torch.bfloat16)
    new = load_base_model(section, quantize=QuantizedLoad(kind, torch.bfloat16, "cuda"))
    assert all(t.device.type == "cpu" for t in new.unet.state_dict().values() if isinstance(t, torch.Tensor))
    _same_tensors(old.unet.to("cuda"), _frozen_in(new.unet, torch.bfloat16).to("cuda"))


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_a_flux_folders_transformer_is_quantized_as_it_is_read(tmp_path, kind):
    """The transformer families load a folder with their pipeline: the transformer is made first, quantized as it
    is read, and handed to the pipeline as given (then cast like the rest, which leaves quantized bytes alone)."""
    from trainer.models.tiny import save_tiny_model
    from trainer.quantize_load import QuantizedLoad

    section = ModelSection(base=str(save_tiny_model(tmp_path / "flux", arch="flux")))
    old = load_base_model(section)
    quantize_linear_layers(old.unet, "cpu", kind)
    new = load_base_model(section, quantize=QuantizedLoad(kind, torch.float32))
    assert f"{kind} base: " in new.load_note and "as they were read from transformer/" in new.load_note
    assert type(new.unet).__name__ == "FluxTransformer2DModel"
    _same_tensors(old.unet, new.unet)


def test_a_folder_without_safetensors_weights_is_quantized_after_loading(tmp_path, tiny_sd15_dir):
    import shutil

    from diffusers import UNet2DConditionModel
    from trainer.quantize_load import QuantizedLoad

    folder = tmp_path / "bin"
    shutil.copytree(tiny_sd15_dir, folder)
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel.from_pretrained(tiny_sd15_dir, subfolder="unet").save_pretrained(
        folder / "unet", safe_serialization=False)  # diffusion_pytorch_model.bin: a pickle, not read lazily
    model = load_base_model(ModelSection(base=str(folder)), quantize=QuantizedLoad("nf4", torch.float32))
    assert model.load_note.startswith("nf4 base: bin/unet holds no diffusion_pytorch_model.safetensors")
    assert any(type(m) is torch.nn.Linear for m in model.unet.modules())


def test_a_single_file_is_quantized_after_loading_and_the_load_says_why(tmp_path):
    from trainer.models.tiny import save_tiny_model
    from trainer.quantize_load import QuantizedLoad

    path = save_tiny_model(tmp_path / "tiny.safetensors", arch="sd15", fmt="single-file")
    model = load_base_model(ModelSection(base=str(path)), quantize=QuantizedLoad("int8", torch.float32))
    assert model.load_note.startswith("int8 base: tiny.safetensors is a single-file checkpoint")
    assert "peak host RAM while loading is its full-precision size" in model.load_note
    assert any(type(m) is torch.nn.Linear for m in model.unet.modules())  # left for the loop to quantize


def test_an_int8_layer_moves_between_devices_with_its_scales():
    """A base quantized on the host as it is read goes to the GPU later (and parked modules move back and
    forth): Module.to must carry the int8 weight's row scales along, before and after a forward (bitsandbytes'
    own layer refuses to move once quantized). "meta" stands for the other device on the CPU."""
    from trainer.quantize import quantized_linear

    fresh = quantized_linear(torch.randn(8, 16), torch.randn(8), "int8").to("cpu")
    used = quantized_linear(torch.randn(8, 16), torch.randn(8), "int8").to("cpu")
    x = torch.randn(2, 16)
    before = used(x)  # a forward moves the scales into the layer's matmul state
    torch.nn.Sequential(used).to(dtype=torch.float64).to("cpu").float()  # casts leave the int8 bytes alone
    assert used.weight.dtype == torch.int8 and torch.equal(used(x), before)
    torch.nn.Sequential(fresh, used).to("meta")
    assert fresh.weight.is_meta and fresh.weight.SCB.is_meta and fresh.bias.is_meta
    assert used.weight.is_meta and used.state.SCB.is_meta and used.state.CB.is_meta


def test_an_int8_job_runs_through_the_worker_on_a_base_quantized_as_read(tmp_path, tiny_sd15_dir):
    """The real run path (`python -m trainer run`, the job manager's command) on a saved diffusers folder: the
    run's log (what the job manager keeps of its output) says the base was quantized as it was read, and the
    LoRA it writes loads."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, make_dataset(tmp_path / "data", n=2), tmp_path / "out",
                    sections={"training": {"base_quantization": "int8", "max_steps": 2}})
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "trainer", "run", str(job), "--job-dir", str(tmp_path / "job")],
                         cwd=repo, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)})
    assert run.returncode == 0, run.stderr[-2000:]
    log = run.stdout + run.stderr
    assert "kiln: int8 base: " in log and "quantized layer by layer as they were read from unet/" in log
    weights = load_file(str(tmp_path / "out" / "test-lora.safetensors"))
    assert weights and all(k.startswith("lora_unet_") for k in weights)


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_trainer_check_counts_host_ram_of_a_base_quantized_as_read(kind):
    """The memory model's host RAM while loading: a diffusers folder's denoiser linear layers at their quantized
    size (the loader quantizes them as it reads them), a single file's in full precision (converted whole)."""
    from trainer.memory import QUANTIZED_BYTES

    def loaded(base, quantization):
        cfg = parse_job({"method": "lora", "model": {"base": base}, "dataset": {"dir": "/nowhere"},
                         "training": {"mixed_precision": "bf16", "base_quantization": quantization}}, complete=False)
        est = estimate_memory(cfg, "sdxl")
        return sum(line.gib for line in est.ram if line.what.startswith(("base model loaded", "while loading")))

    facts = FAMILIES["sdxl"].memory
    # a LoRA job under bf16 reads its base in bf16 (models.loading.base_load_dtype); a folder read into bf16
    # holds 0.55 of what it reads meanwhile (trainer/memory.py)
    saved = facts.linear_weights * (2 - QUANTIZED_BYTES[kind]) + 0.55 * facts.unet * 2
    assert loaded("/models/sdxl", "none") - loaded("/models/sdxl", kind) == pytest.approx(saved / 2**30)
    assert loaded("/models/sdxl.safetensors", kind) == loaded("/models/sdxl.safetensors", "none")


def test_a_flux_lora_trains_on_a_transformer_quantized_as_read(tmp_path):
    """The transformer families' path through the loop: the folder's transformer comes quantized from the
    loader, the LoRA goes on top, the run saves its file."""
    from trainer.models.tiny import save_tiny_model

    base = save_tiny_model(tmp_path / "flux", arch="flux")
    cfg = int8_job(tmp_path, base, max_steps=2)
    result = train(cfg, default_paths(cfg))
    assert "as they were read from transformer/" in result.model.load_note
    assert [m for m in result.model.unet.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert any(p.requires_grad for p in result.model.unet.parameters()) and result.outputs[-1].is_file()
