"""DreamBooth: class-image generation (count, resume, shared cache), paired batches and the prior loss, the
full fine-tune's single-file export and learning, and DreamBooth-LoRA."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import square_images, subject_images, write_job
from trainer.config import load_job
from trainer.data import Batch, TrainData
from trainer.dreambooth import (CACHE_INFO_FILE, ClassImageSpec, fill_class_folder, image_files, instance_index,
                                planned_index)
from trainer.dreambooth.pipeline import ClassImageGenerator
from trainer.loop import RunPaths, default_paths, train
from trainer.methods.dreambooth import DreamBoothMethod, make_dreambooth_method
from trainer.models import load_base_model
from trainer.plan import build_plan
from trainer.preflight import preflight_report
from trainer.progress import RunReporter

SPEC = ClassImageSpec(model="tiny", prompt="shape", negative_prompt="blurry", resolution=64, steps=2,
                      guidance_scale=7.5, sampler="ddim")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own shared class-image cache."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "kiln-cache"))


class CountingGenerator:
    """Wraps a real generator: counts images made, and can fail on a given call (an interrupted run)."""

    def __init__(self, inner, fail_on_call: int | None = None):
        self.inner, self.fail_on_call, self.calls, self.images = inner, fail_on_call, 0, 0

    def __call__(self, seeds):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        self.images += len(seeds)
        return self.inner(seeds)


def dreambooth_job(tmp_path: Path, base, data: Path, name: str, **sections) -> Path:
    values = {"dreambooth": {"instance_prompt": "sks shape", "class_prompt": "shape", "class_images_per_instance": 2,
                             "class_steps": 2, "class_batch_size": 2},
              "training": {"learning_rate": 1e-4, "max_steps": 4},
              "output": {"name": name}}
    for section, extra in sections.items():
        values.setdefault(section, {}).update(extra)
    return write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, method="dreambooth", sections=values)


def load_dataset_of(cfg, tmp_path: Path):
    model = load_base_model(cfg.model)
    method = make_dreambooth_method(cfg)
    method.prepare(model)
    paths = RunPaths(tmp_path / "o", tmp_path / "s", tmp_path / "p", tmp_path / "c", tmp_path / "l")
    return method.load_dataset(model, RunReporter(console=False), paths)


# --- class images ------------------------------------------------------------------------------------------

def test_generation_makes_the_required_count_and_resumes_without_regenerating(tmp_path, tiny_sd15_dir):
    model = load_base_model(load_job(dreambooth_job(tmp_path, tiny_sd15_dir, tmp_path, "x")).model)
    folder = tmp_path / "class"
    interrupted = CountingGenerator(ClassImageGenerator(model, SPEC), fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        fill_class_folder(folder, 5, interrupted, batch_size=2)
    first = {path: path.read_bytes() for path in image_files(folder)}
    assert len(first) == 2 and interrupted.images == 2
    assert sorted(p.name for p in folder.iterdir()) == ["kiln-class-00000.png", "kiln-class-00001.png"]  # no temp

    progress = []
    resumed = CountingGenerator(ClassImageGenerator(model, SPEC))
    made = fill_class_folder(folder, 5, resumed, batch_size=2, progress=lambda d, t: progress.append((d, t)))
    assert made == 3 and resumed.images == 3
    assert progress[0] == (2, 5) and progress[-1] == (5, 5)
    files = image_files(folder)
    assert len(files) == 5
    assert all(path.read_bytes() == data for path, data in first.items())  # kept, not regenerated
    assert {Image.open(path).size for path in files} == {(64, 64)}
    assert fill_class_folder(folder, 5, resumed, batch_size=2) == 0 and resumed.calls == 2


def test_user_class_images_count_and_are_never_touched(tmp_path, tiny_sd15_dir):
    model = load_base_model(load_job(dreambooth_job(tmp_path, tiny_sd15_dir, tmp_path, "x")).model)
    folder = square_images(tmp_path / "mine", 2)
    (folder / "kiln-class-00000.png").write_bytes((folder / "square_0.png").read_bytes())  # a name Kiln uses
    before = {path: path.read_bytes() for path in folder.iterdir()}
    generator = CountingGenerator(ClassImageGenerator(model, SPEC))
    assert fill_class_folder(folder, 4, generator, batch_size=4) == 1 and generator.images == 1
    assert all(path.read_bytes() == data for path, data in before.items())
    assert sorted(p.name for p in folder.iterdir()) == ["kiln-class-00000.png", "kiln-class-00001.png",
                                                        "square_0.png", "square_1.png"]


def test_second_job_with_the_same_class_uses_the_shared_cache(tmp_path, tiny_sd15_dir, monkeypatch):
    made = []
    real_call = ClassImageGenerator.__call__
    monkeypatch.setattr(ClassImageGenerator, "__call__", lambda self, seeds: made.extend(seeds) or real_call(self, seeds))
    data = subject_images(tmp_path / "data", n=2)
    first = load_job(dreambooth_job(tmp_path, tiny_sd15_dir, data, "first"))
    index = load_dataset_of(first, tmp_path)
    assert len(made) == 4 and index.num_class_images == 4 and index.num_images == 2
    cache_folders = list((tmp_path / "kiln-cache" / "class-images").iterdir())
    assert len(cache_folders) == 1 and (cache_folders[0] / CACHE_INFO_FILE).is_file()
    assert {item.caption for item in index.items} == {"sks shape", "shape"}

    second = load_job(dreambooth_job(tmp_path, tiny_sd15_dir, data, "second", training={"seed": 3}))
    assert load_dataset_of(second, tmp_path).num_class_images == 4
    assert len(made) == 4, "the second job regenerated class images instead of using the cache"

    other = load_job(dreambooth_job(tmp_path, tiny_sd15_dir, data, "other", dreambooth={"class_prompt": "circle"}))
    load_dataset_of(other, tmp_path)
    assert len(made) == 8 and len(list((tmp_path / "kiln-cache" / "class-images").iterdir())) == 2


def test_check_counts_class_images_before_they_exist(tmp_path, tiny_sd15_dir):
    data = subject_images(tmp_path / "data", n=3)
    class_dir = square_images(tmp_path / "class", 2)
    cfg = load_job(dreambooth_job(tmp_path, tiny_sd15_dir, data, "job", training={"max_steps": 0, "epochs": 1},
                                  dreambooth={"class_dir": str(class_dir)}))
    planned = planned_index(cfg)
    assert planned.num_class_images == 6 and len(image_files(class_dir)) == 2  # nothing generated by check
    planned_steps = build_plan(cfg, TrainData(planned, cfg.dataset, 2, 7)).total_steps
    assert planned_steps == 6  # 6 class images, the 3 subject images cycled to 6: 12 samples, batch 2
    assert "total steps: 6" in preflight_report(cfg) and "class images: 6" in preflight_report(cfg)

    real = load_dataset_of(cfg, tmp_path)
    assert len(image_files(class_dir)) == 6
    assert build_plan(cfg, TrainData(real, cfg.dataset, 2, 7)).total_steps == planned_steps


# --- batches and the loss ----------------------------------------------------------------------------------

def test_each_batch_pairs_subject_and_class_images_and_weights_give_the_prior_loss(tmp_path, tiny_sd15_dir):
    data = subject_images(tmp_path / "data", n=3)
    class_dir = square_images(tmp_path / "class", 8)
    cfg = load_job(dreambooth_job(tmp_path, tiny_sd15_dir, data, "job",
                                  dreambooth={"class_dir": str(class_dir), "class_images_per_instance": 2,
                                              "prior_loss_weight": 0.5}))
    index = planned_index(cfg)
    assert index.num_class_images == 6 and all(item.path.exists() for item in index.items)
    data2 = TrainData(index, cfg.dataset, batch_size=2, seed=1)
    batches = list(data2.epoch_batches(0))
    assert len(batches) == data2.batches_per_epoch == 6
    assert all(sorted(batch.is_class) == [False, True] for batch in batches)
    used_classes = {path for batch in batches for path, c in zip(batch.paths, batch.is_class) if c}
    assert len(used_classes) == 6  # every class image once per epoch

    method = DreamBoothMethod(cfg)
    losses = torch.tensor([0.3, 1.1, 0.7, 2.0, 0.4])
    for is_class in ([False, True, False, True, True], [False] * 5, [True] * 5):
        batch = Batch(None, None, ["x"] * 5, [], [], [], is_class, [], [], [1.0] * 5)
        loop_loss = (losses * method.example_weights(batch, "cpu")).mean()  # what the loop computes
        mask = torch.tensor(is_class)
        instance = losses[~mask].mean() if (~mask).any() else 0.0
        prior = losses[mask].mean() if mask.any() else 0.0
        assert torch.isclose(loop_loss, torch.as_tensor(instance + 0.5 * prior)), is_class


# --- training ----------------------------------------------------------------------------------------------

def fixed_eval(latents: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed noise and spread timesteps for an evaluation set of latents."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    timesteps = torch.linspace(50, 850, len(latents)).long()
    return noise, timesteps


def encode_images(model, folder: Path, names: list[str]) -> torch.Tensor:
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(folder / name).convert("RGB"), dtype=np.float32))
                          for name in names]).permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        return model.vae.encode(pixels).latent_dist.mean * model.vae.config.scaling_factor


def predictions(model, latents, noise, timesteps, prompt: str) -> torch.Tensor:
    noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
    tokenizer = model.tokenizers[0]
    ids = tokenizer([prompt] * len(latents), padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model.text_encoders[0](ids)[0]
        return model.unet(noisy, timesteps, encoder_hidden_states=hidden).sample


def test_full_finetune_learns_and_its_single_file_reloads_exactly(tmp_path, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    data = subject_images(tmp_path / "data", n=2)
    job = dreambooth_job(tmp_path, tiny_sd15_dir, data, "full",
                         dreambooth={"prior_preservation": False, "train_text_encoder": True,
                                     "stop_text_encoder_step": 6},
                         training={"max_steps": 12, "learning_rate": 1e-3},
                         output={"save_precision": "fp32"})
    cfg = load_job(job)
    base = load_base_model(cfg.model)
    latents = encode_images(base, data, ["img_0.png", "img_1.png"])
    noise, timesteps = fixed_eval(latents)
    loss_before = (predictions(base, latents, noise, timesteps, "sks shape") - noise).pow(2).mean()

    result = train(cfg, default_paths(cfg))
    trained = result.model
    loss_after = (predictions(trained, latents, noise, timesteps, "sks shape") - noise).pow(2).mean()
    assert loss_after <= 0.7 * loss_before, (loss_before, loss_after)
    assert not any(p.requires_grad for p in trained.text_encoders[0].parameters())  # stopped at step 6

    final = tmp_path / "full" / "full.safetensors"
    pipe = StableDiffusionPipeline.from_single_file(str(final), config=str(trained.config_dir),
                                                    local_files_only=True)
    reloaded = type(trained)(**{**trained.__dict__, "unet": pipe.unet, "text_encoders": [pipe.text_encoder]})
    expected = predictions(trained, latents, noise, timesteps, "sks shape")
    got = predictions(reloaded, latents, noise, timesteps, "sks shape")
    assert (expected - predictions(base, latents, noise, timesteps, "sks shape")).abs().max() > 1e-3
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_dreambooth_lora_end_to_end_loads_in_diffusers(tmp_path, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    data = subject_images(tmp_path / "data", n=2)
    cfg = load_job(dreambooth_job(tmp_path, tiny_sd15_dir, data, "dblora",
                                  dreambooth={"use_lora": True, "train_text_encoder": True},
                                  training={"learning_rate": 1e-3}))
    result = train(cfg, default_paths(cfg))
    final = tmp_path / "dblora" / "dblora.safetensors"
    keys = load_file(final).keys()
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys) and any(k.startswith("lora_te_") for k in keys)

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise, timesteps = fixed_eval(latents)
    trained = predictions(result.model, latents, noise, timesteps, "sks shape")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir)
    pipe.load_lora_weights(str(final))
    loaded_model = type(result.model)(**{**result.model.__dict__, "unet": pipe.unet,
                                         "text_encoders": [pipe.text_encoder]})
    loaded = predictions(loaded_model, latents, noise, timesteps, "sks shape")
    assert torch.allclose(loaded, trained, atol=1e-5, rtol=0), (loaded - trained).abs().max()
