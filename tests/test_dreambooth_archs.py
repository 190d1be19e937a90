"""DreamBooth on SD 2.x and SDXL (issue 5 asks for SD 1.x, 2.x and SDXL; tests/test_dreambooth.py covers SD 1.x):
class images through the SD 2.x / SDXL pipelines, a full fine-tune whose single-file checkpoint reloads offline in
diffusers and reproduces the trained model, and SDXL DreamBooth-LoRA whose Kohya file loads in diffusers."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import subject_images, write_job
from trainer.conditioning import TextConditioner
from trainer.config import load_job
from trainer.dreambooth import ClassImageSpec, fill_class_folder, image_files
from trainer.dreambooth.pipeline import ClassImageGenerator
from trainer.loop import default_paths, train
from trainer.models import load_base_model

PIPELINES = {"sd2": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
PROMPT = "sks shape"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own shared class-image cache and config-folder cache."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "kiln-cache"))


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, tiny_sdxl_dir):
    """Tiny diffusers folders per arch: SDXL from conftest, SD 2.x (v-prediction, OpenCLIP) made here."""
    from trainer.models.tiny import save_tiny_model

    sd2 = save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd2", arch="sd2", fmt="diffusers")
    return {"sd2": sd2, "sdxl": tiny_sdxl_dir}


def model_cfg(base) -> SimpleNamespace:
    return SimpleNamespace(base=str(base), arch="auto", allow_pickle=False, prediction_type="auto", vae="")


def dreambooth_job(tmp_path: Path, base, data: Path, name: str, **sections) -> Path:
    values = {"dreambooth": {"instance_prompt": PROMPT, "class_prompt": "shape", "class_images_per_instance": 1,
                             "class_steps": 2, "class_batch_size": 2},
              "training": {"learning_rate": 1e-3, "max_steps": 4},
              "output": {"name": name, "save_precision": "fp32"}}
    for section, extra in sections.items():
        values.setdefault(section, {}).update(extra)
    return write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, method="dreambooth", sections=values)


def unet_outputs(arch: str, unet, text_encoders, tokenizers, prompt: str = PROMPT) -> torch.Tensor:
    """The UNet's predictions on fixed latents, noise levels and a prompt, conditioned the way training conditions
    it (SDXL: both encoders' penultimate layers, the pooled embedding and 64 px size/crop ids)."""
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    timesteps = torch.tensor([30, 700])
    text = TextConditioner(arch, tokenizers, text_encoders, cache=False)
    sizes = SimpleNamespace(original_sizes=[(64, 64)] * 2, crop_top_lefts=[(0, 0)] * 2, target_sizes=[(64, 64)] * 2)
    with torch.no_grad():
        hidden, pooled = text.encode([prompt] * 2, "cpu")
        return unet(latents, timesteps, **text.unet_kwargs(sizes, hidden, pooled)).sample


def pipeline_parts(pipe, arch: str):
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if arch == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if arch == "sdxl" else [])
    return pipe.unet, encoders, tokenizers


# --- class images --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["sdxl", "sd2"])
def test_class_images_come_from_the_arch_pipeline(tmp_path, tiny_dirs, arch):
    """Kiln's generator (built around the already-loaded components) makes what the stock diffusers pipeline of
    the arch makes from the model folder with the same sampler, prompts and per-image seeds."""
    model = load_base_model(model_cfg(tiny_dirs[arch]))
    spec = ClassImageSpec(model="tiny", prompt="shape", negative_prompt="blurry", resolution=64, steps=2,
                          guidance_scale=7.5, sampler="ddim")
    generator = ClassImageGenerator(model, spec)
    assert type(generator.pipe) is PIPELINES[arch]
    assert generator.pipe.scheduler.config.prediction_type == ("v_prediction" if arch == "sd2" else "epsilon")

    folder = tmp_path / "class"
    assert fill_class_folder(folder, 3, generator, batch_size=2) == 3
    files = image_files(folder)
    assert len(files) == 3
    made = [np.asarray(Image.open(path).convert("RGB"), dtype=np.int16) for path in files]
    assert {m.shape for m in made} == {(64, 64, 3)}
    assert not np.array_equal(made[0], made[1])  # one seed per image

    reference = PIPELINES[arch].from_pretrained(tiny_dirs[arch])
    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    seeds = _seeds_of(files)
    expected = reference(prompt=["shape"] * len(seeds), negative_prompt=["blurry"] * len(seeds), height=64, width=64,
                         num_inference_steps=2, guidance_scale=7.5, output_type="np",
                         generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]).images
    expected = np.round(expected * 255).astype(np.int16)
    for got, want in zip(made, expected):
        assert np.abs(got - want).max() <= 1  # PNG rounding of the same picture


def _seeds_of(files: list[Path]) -> list[int]:
    from trainer.dreambooth.class_images import GENERATED_PREFIX, image_seed

    return [image_seed(int(path.stem.removeprefix(GENERATED_PREFIX))) for path in files]


# --- full fine-tune ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["sdxl", "sd2"])
def test_full_finetune_single_file_reloads_offline_and_reproduces_the_model(tmp_path, tiny_dirs, arch):
    data = subject_images(tmp_path / "data", n=2)
    cfg = load_job(dreambooth_job(tmp_path, tiny_dirs[arch], data, "full",
                                  dreambooth={"train_text_encoder": True, "stop_text_encoder_step": 2}))
    result = train(cfg, default_paths(cfg))
    trained = result.model
    assert trained.arch == arch
    assert len(image_files(next((tmp_path / "kiln-cache" / "class-images").iterdir()))) == 2  # prior preservation

    final = tmp_path / "full" / "full.safetensors"
    assert result.outputs == [final]
    with safe_open(final, "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    keys = load_file(final).keys()
    te_prefix = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}[arch]
    assert any(k.startswith("model.diffusion_model.") for k in keys) and any(k.startswith(te_prefix) for k in keys)

    expected = unet_outputs(arch, trained.unet, trained.text_encoders, trained.tokenizers)
    base = load_base_model(model_cfg(tiny_dirs[arch]))
    before = unet_outputs(arch, base.unet, base.text_encoders, base.tokenizers)
    assert (expected - before).abs().max() > 1e-3  # training changed the model
    for trained_te, base_te in zip(trained.text_encoders, base.text_encoders):  # ...text encoders included
        assert any(not torch.equal(a, b) for a, b in zip(trained_te.state_dict().values(),
                                                           base_te.state_dict().values()))

    pipe = PIPELINES[arch].from_single_file(str(final), config=str(trained.config_dir), local_files_only=True)
    got = unet_outputs(arch, *pipeline_parts(pipe, arch))
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()

    reloaded = load_base_model(model_cfg(final))  # Kiln's own loader, from the file alone
    assert reloaded.arch == arch and reloaded.prediction_type == base.prediction_type
    got = unet_outputs(arch, reloaded.unet, reloaded.text_encoders, reloaded.tokenizers)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


# --- DreamBooth-LoRA -----------------------------------------------------------------------------------------

def test_sdxl_dreambooth_lora_loads_in_diffusers(tmp_path, tiny_dirs):
    data = subject_images(tmp_path / "data", n=2)
    cfg = load_job(dreambooth_job(tmp_path, tiny_dirs["sdxl"], data, "dblora",
                                  dreambooth={"use_lora": True, "train_text_encoder": True}))
    result = train(cfg, default_paths(cfg))
    final = tmp_path / "dblora" / "dblora.safetensors"
    assert result.outputs == [final]
    keys = load_file(final).keys()
    assert all(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for k in keys)
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    assert any(k.startswith("lora_te1_") for k in keys) and any(k.startswith("lora_te2_") for k in keys)
    with safe_open(final, "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"

    m = result.model
    trained = unet_outputs("sdxl", m.unet, m.text_encoders, m.tokenizers)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_dirs["sdxl"])
    before = unet_outputs("sdxl", *pipeline_parts(pipe, "sdxl"))
    pipe.load_lora_weights(str(final))
    loaded = unet_outputs("sdxl", *pipeline_parts(pipe, "sdxl"))
    assert (trained - before).abs().max() > 1e-4
    assert torch.allclose(loaded, trained, atol=1e-5, rtol=0), (loaded - trained).abs().max()
