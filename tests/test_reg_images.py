"""Generated regularisation images for plain LoRA (issue 15): dataset.reg_prompt makes them with the base model
through DreamBooth's class-image code and shared cache, they pair with the training images and weigh by
dreambooth.prior_loss_weight, `trainer check` counts them before they exist, and bad values name their key."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import make_dataset, square_images, write_job
from trainer.config import ConfigError, load_job, parse_job
from trainer.data import TrainData
from trainer.dreambooth import (CACHE_INFO_FILE, class_spec, image_files, planned_reg_index, shared_cache_folder)
from trainer.dreambooth.pipeline import ClassImageGenerator
from trainer.loop import RunPaths, default_paths, train
from trainer.methods.dreambooth import make_dreambooth_method
from trainer.methods.lora import LoraMethod
from trainer.models import load_base_model
from trainer.plan import build_plan
from trainer.preflight import preflight_report
from trainer.progress import RunReporter

REG_PROMPT = "shape"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own shared class-image cache."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "kiln-cache"))


@pytest.fixture
def generated(monkeypatch) -> list[int]:
    """The seeds of every class/reg image the real generator makes."""
    seeds: list[int] = []
    real_call = ClassImageGenerator.__call__
    monkeypatch.setattr(ClassImageGenerator, "__call__", lambda self, s: seeds.extend(s) or real_call(self, s))
    return seeds


def lora_job(tmp_path: Path, base, data: Path, name: str, **sections) -> Path:
    values = {"dataset": {"reg_prompt": REG_PROMPT, "repeats": 2},
              "dreambooth": {"class_steps": 2, "class_batch_size": 3, "prior_loss_weight": 0.5},
              "training": {"max_steps": 0, "epochs": 1, "batch_size": 2},
              "output": {"name": name}}
    for section, extra in sections.items():
        values.setdefault(section, {}).update(extra)
    return write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, sections=values)


def promised_steps(job: Path) -> int:
    return int(preflight_report(load_job(job)).split("total steps: ")[1].split()[0])


def record_weights(monkeypatch) -> list[tuple[bool, float]]:
    """(is_class, loss weight) of every example the training loop weighs."""
    seen: list[tuple[bool, float]] = []
    real = LoraMethod.example_weights

    def recording(self, batch, device):
        weights = real(self, batch, device)
        seen.extend(zip(batch.is_class, weights.tolist()))
        return weights

    monkeypatch.setattr(LoraMethod, "example_weights", recording)
    return seen


def cache_folders(tmp_path: Path) -> list[Path]:
    root = tmp_path / "kiln-cache" / "class-images"
    return sorted(root.iterdir()) if root.is_dir() else []


def test_reg_prompt_generates_reg_images_into_the_cache_and_trains_with_them(tmp_path, tiny_sd15_dir, generated,
                                                                             monkeypatch):
    data = make_dataset(tmp_path / "data", n=2)
    job = lora_job(tmp_path, tiny_sd15_dir, data, "first")
    report = preflight_report(load_job(job))
    # 2 images x 2 repeats = 4 training samples, so 4 reg images (reg_images_per_image = 0): 8 samples, batch 2.
    assert "total steps: 4" in report and "4 regularisation images will be generated" in report, report
    assert not cache_folders(tmp_path) and not generated  # check generates nothing

    seen = record_weights(monkeypatch)
    cfg = load_job(job)
    result = train(cfg, default_paths(cfg))
    assert result.status == "done" and result.step == result.total_steps == 4
    assert len(generated) == 4
    [folder] = cache_folders(tmp_path)
    assert (folder / CACHE_INFO_FILE).is_file()
    files = image_files(folder)
    assert [p.name for p in files] == [f"kiln-class-{n:05d}.png" for n in range(4)]
    assert {Image.open(p).size for p in files} == {(64, 64)}
    # The loss took 4 training and 4 reg examples, the reg ones at prior_loss_weight.
    assert sorted(seen) == [(False, 1.0)] * 4 + [(True, 0.5)] * 4
    assert (tmp_path / "first" / "first.safetensors").is_file()


def test_a_second_job_with_the_same_spec_reuses_the_cache_and_so_does_dreambooth(tmp_path, tiny_sd15_dir, generated):
    data = make_dataset(tmp_path / "data", n=2)
    first = load_job(lora_job(tmp_path, tiny_sd15_dir, data, "first"))
    assert train(first, default_paths(first)).status == "done" and len(generated) == 4
    [folder] = cache_folders(tmp_path)
    stamps = {path: path.stat().st_mtime_ns for path in image_files(folder)}

    second = load_job(lora_job(tmp_path, tiny_sd15_dir, data, "second", training={"seed": 3, "max_steps": 2}))
    assert train(second, default_paths(second)).status == "done"
    assert len(generated) == 4, "the second job regenerated its regularisation images"
    assert cache_folders(tmp_path) == [folder]
    assert {path: path.stat().st_mtime_ns for path in image_files(folder)} == stamps

    # A DreamBooth job whose class prompt is the reg prompt (same model and settings) finds the same folder.
    db_job = write_job(tmp_path / "db.toml", tiny_sd15_dir, data, tmp_path / "db", method="dreambooth", sections={
        "dreambooth": {"instance_prompt": "sks shape", "class_prompt": REG_PROMPT, "class_images_per_instance": 2,
                       "class_steps": 2, "class_batch_size": 3}})
    db = load_job(db_job)
    model = load_base_model(db.model)
    assert shared_cache_folder(class_spec(db, model, REG_PROMPT)) == folder
    method = make_dreambooth_method(db)
    method.prepare(model)
    paths = RunPaths(tmp_path / "o", tmp_path / "s", tmp_path / "p", tmp_path / "c", tmp_path / "l")
    assert method.load_dataset(model, RunReporter(console=False), paths).num_class_images == 4
    assert len(generated) == 4

    # Another prompt is another spec: its own folder, generated anew.
    other = load_job(lora_job(tmp_path, tiny_sd15_dir, data, "other", dataset={"reg_prompt": "circle"},
                              training={"max_steps": 1}))
    assert train(other, default_paths(other)).status == "done"
    assert len(generated) == 8 and len(cache_folders(tmp_path)) == 2


def test_check_counts_reg_images_of_a_user_folder_before_they_exist(tmp_path, tiny_sd15_dir, generated):
    data = make_dataset(tmp_path / "data", n=3)
    reg_dir = square_images(tmp_path / "reg", 1)
    mine = {path: path.read_bytes() for path in reg_dir.iterdir()}
    cfg = load_job(lora_job(tmp_path, tiny_sd15_dir, data, "job", dataset={
        "reg_dir": str(reg_dir), "reg_images_per_image": 2, "repeats": 1}))
    planned = planned_reg_index(cfg)
    # 2 x 3 images = 6 reg images (1 of them yours), paired with the 3 training samples: 6 samples, batch 2.
    assert planned.num_class_images == 6 and planned.num_images == 3 and len(image_files(reg_dir)) == 1
    planned_steps = build_plan(cfg, TrainData(planned, cfg.dataset, 2, 7)).total_steps
    assert planned_steps == 3 == promised_steps(tmp_path / "job.toml")
    assert "5 regularisation images will be generated" in preflight_report(cfg)
    assert not generated

    model = load_base_model(cfg.model)
    method = LoraMethod(cfg)
    method.prepare(model)
    paths = RunPaths(tmp_path / "o", tmp_path / "s", tmp_path / "p", tmp_path / "c", tmp_path / "l")
    real = method.load_dataset(model, RunReporter(console=False), paths)
    assert len(generated) == 5 and len(image_files(reg_dir)) == 6 and not cache_folders(tmp_path)
    assert all(path.read_bytes() == content for path, content in mine.items())  # your images are never touched
    assert {item.caption for item in real.class_items} == {REG_PROMPT} and real.reg_pairs_with_subjects
    assert build_plan(cfg, TrainData(real, cfg.dataset, 2, 7)).total_steps == planned_steps


def job_dict(**dataset) -> dict:
    return {"method": "lora", "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": "data", **dataset}}


@pytest.mark.parametrize("dataset, message", [
    ({"reg_prompt": "dog", "reg_images_per_image": -1}, "dataset.reg_images_per_image = -1"),
    ({"reg_prompt": "dog", "reg_images_per_image": 20_000}, "dataset.reg_images_per_image = 20000"),
    ({"reg_prompt": "   "}, "dataset.reg_prompt"),
    ({"reg_prompt": "dog", "reg_images_per_image": "many"}, "dataset.reg_images_per_image"),
])
def test_a_bad_value_is_refused_with_its_key(dataset, message):
    with pytest.raises(ConfigError) as info:
        parse_job(job_dict(**dataset))
    assert message in str(info.value), str(info.value)


def test_generation_settings_without_reg_prompt_warn_and_a_reg_dir_inside_the_dataset_fails_check(tmp_path,
                                                                                                   capsys):
    cfg = parse_job({**job_dict(reg_images_per_image=3), "dreambooth": {"class_steps": 10}})
    assert any(w.startswith("dataset.reg_images_per_image = 3 has no effect while dataset.reg_prompt is empty")
               for w in cfg.warnings), cfg.warnings
    assert any(w.startswith("dreambooth.class_steps = 10 has no effect") for w in cfg.warnings), cfg.warnings
    assert not any("has no effect" in w for w in parse_job(job_dict(reg_prompt="dog")).warnings)

    from trainer.cli import main

    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out",
                    sections={"dataset": {"reg_prompt": "dog", "reg_dir": str(data / "reg")}})
    code = main(["check", str(job)])
    err = capsys.readouterr().err
    assert code != 0 and "dataset.reg_dir" in err and "is inside dataset.dir" in err, err


def test_generation_makes_the_base_models_pictures_even_with_trained_lora_layers(tmp_path, tiny_sd15_dir):
    """Reg images are made after the LoRA layers are added (with lora.init_weights they hold a file's
    weights): the pictures, cached under the base model's key, must not depend on them."""
    import numpy as np
    import torch

    from trainer.dreambooth import ClassImageSpec

    spec = ClassImageSpec(model="tiny", prompt=REG_PROMPT, negative_prompt="", resolution=64, steps=2,
                          guidance_scale=7.5, sampler="ddim")
    cfg = load_job(lora_job(tmp_path, tiny_sd15_dir, make_dataset(tmp_path / "data", n=1), "job",
                            lora={"train_text_encoder": True}))
    base = load_base_model(cfg.model)
    expected = np.asarray(ClassImageGenerator(base, spec)([5])[0])

    model = load_base_model(cfg.model)
    LoraMethod(cfg).prepare(model)
    lora_b = [p for name, p in model.unet.named_parameters() if "lora_B" in name]
    with torch.no_grad():
        for parameter in lora_b:
            parameter.normal_(std=1.0)  # layers that change the output, as a loaded LoRA file's do
    trainable = {name for module in (model.unet, *model.text_encoders)
                 for name, p in module.named_parameters(prefix=str(id(module))) if p.requires_grad}
    assert trainable
    with_layers = np.asarray(ClassImageGenerator(model, spec)([5])[0])
    assert np.array_equal(with_layers, expected)
    assert trainable == {name for module in (model.unet, *model.text_encoders)
                         for name, p in module.named_parameters(prefix=str(id(module))) if p.requires_grad}
    # ... and the layers are back on for training.
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        on = model.unet(latents, 10, hidden).sample
        assert not torch.allclose(on, base.unet(latents, 10, hidden).sample)
