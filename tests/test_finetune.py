"""method = "finetune": the whole UNet (and optionally the text encoder) learns from each image's caption, with
no instance prompt and no class images; the single-file checkpoint loads in diffusers offline; EMA and
validation work beside it; Kohya's fine-tune keys import to it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.helpers import make_dataset, write_job
from trainer.config import ConfigError, load_job, parse_job
from trainer.data import TrainData, scan_dataset
from trainer.evaluate import fixed_denoising_loss
from trainer.loop import default_paths, train
from trainer.methods import make_method, spec_for
from trainer.models import load_base_model


def finetune_job(tmp_path: Path, base, data: Path, name: str = "ft", **sections) -> Path:
    values = {"training": {"max_steps": 40, "batch_size": 2, "learning_rate": 1e-3},
              "output": {"name": name}}
    for section, extra in sections.items():
        values.setdefault(section, {}).update(extra)
    return write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, method="finetune", sections=values)


def test_finetune_learns_from_captions_and_its_single_file_loads_in_diffusers(tmp_path, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    data = make_dataset(tmp_path / "data", n=3)  # each image has its own caption; no instance prompt anywhere
    cfg = load_job(finetune_job(tmp_path, tiny_sd15_dir, data,
                                finetune={"train_text_encoder": True, "stop_text_encoder_step": 20}))
    assert not any("instance_prompt" in w or "class" in w for w in cfg.warnings)
    eval_data = TrainData(scan_dataset(cfg.dataset), cfg.dataset, 3, seed=0)
    assert sorted(eval_data.batch_at(0).captions) == sorted(f"kiln shape, shape {i}" for i in range(3))

    base = load_base_model(cfg.model)
    before = fixed_denoising_loss(base, eval_data)
    result = train(cfg, default_paths(cfg))
    after = fixed_denoising_loss(result.model, eval_data)
    assert result.status == "done" and after <= 0.7 * before, (before, after)
    trained_te = dict(result.model.text_encoders[0].named_parameters())
    assert any(not torch.equal(p, dict(base.text_encoders[0].named_parameters())[n]) for n, p in trained_te.items())
    assert not any(p.requires_grad for p in trained_te.values())  # frozen at stop_text_encoder_step = 20

    final = tmp_path / "ft" / "ft.safetensors"
    with safe_open(str(final), "pt") as f:
        assert f.metadata()["kiln_method"] == "finetune"
    pipe = StableDiffusionPipeline.from_single_file(str(final), config=str(result.model.config_dir),
                                                    local_files_only=True)
    reloaded = type(result.model)(**{**result.model.__dict__, "unet": pipe.unet, "text_encoders": [pipe.text_encoder]})
    assert fixed_denoising_loss(reloaded, eval_data) == pytest.approx(after, rel=1e-5)


def test_sdxl_finetune_single_file_holds_the_trained_weights(tmp_path, tiny_sdxl_dir):
    """The method is arch-agnostic: on SDXL both text encoders learn and the checkpoint reloads offline in
    diffusers with every trained weight as it was."""
    from diffusers import StableDiffusionXLPipeline

    data = make_dataset(tmp_path / "data", n=2)
    cfg = load_job(finetune_job(tmp_path, tiny_sdxl_dir, data, training={"max_steps": 2},
                                finetune={"train_text_encoder": True}, output={"save_precision": "fp32"}))
    result = train(cfg, default_paths(cfg))
    base = load_base_model(cfg.model)
    pipe = StableDiffusionXLPipeline.from_single_file(str(result.outputs[-1]), config=str(result.model.config_dir),
                                                      local_files_only=True)
    pairs = [(result.model.unet, pipe.unet, base.unet),
             (result.model.text_encoders[0], pipe.text_encoder, base.text_encoders[0]),
             (result.model.text_encoders[1], pipe.text_encoder_2, base.text_encoders[1])]
    for trained, reloaded, original in pairs:
        got, before = dict(reloaded.named_parameters()), dict(original.named_parameters())
        for name, param in trained.named_parameters():
            assert torch.allclose(got[name], param, atol=1e-6), name
        assert any(not torch.equal(before[n], p) for n, p in trained.named_parameters())  # it learned


def test_finetune_with_ema_and_validation(tmp_path, tiny_sd15_dir):
    """The savers DreamBooth's full fine-tune has: EMA (both files written), a held-out validation loss."""
    data = make_dataset(tmp_path / "data", n=4)
    cfg = load_job(finetune_job(tmp_path, tiny_sd15_dir, data, training={"max_steps": 4, "ema": True,
                                                                         "ema_save": "both"},
                                validation={"split": 0.25, "every_n_steps": 2}))
    result = train(cfg, default_paths(cfg))
    assert result.status == "done" and result.best_validation is not None
    assert sorted(p.name for p in result.outputs) == ["ft-ema.safetensors", "ft.safetensors"]
    with safe_open(str(result.outputs[0]), "pt") as a, safe_open(str(result.outputs[1]), "pt") as b:
        key = next(k for k in a.keys() if k.startswith("model.diffusion_model.") and k.endswith("weight"))
        assert not torch.equal(a.get_tensor(key), b.get_tensor(key))  # the EMA average is not the last weights


def test_finetune_stop_then_resume_is_bit_identical(tmp_path, tiny_sd15_dir):
    """The text encoder stops at step 3, after the resume at step 2: the step count travels in the state."""
    from safetensors.torch import load_file

    from tests.helpers import StopAt

    data = make_dataset(tmp_path / "data", n=3)
    sections = {"training": {"max_steps": 5, "lr_scheduler": "cosine", "learning_rate": 1e-4},
                "finetune": {"train_text_encoder": True, "stop_text_encoder_step": 3}}
    straight = train(*with_paths(load_job(finetune_job(tmp_path, tiny_sd15_dir, data, "a", **sections))))
    job = finetune_job(tmp_path, tiny_sd15_dir, data, "b", **sections)
    stopped = train(*with_paths(load_job(job)), controls=StopAt(2))
    assert stopped.status == "stopped" and stopped.step == 2
    resumed = train(*with_paths(load_job(job)), resume=True)
    assert resumed.status == "done" and resumed.step == 5
    a, b = load_file(straight.outputs[-1]), load_file(resumed.outputs[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def with_paths(cfg):
    return cfg, default_paths(cfg)


def test_finetune_diffusers_copy_loads_with_the_trained_weights(tmp_path, tiny_sd15_dir):
    """output.save_diffusers writes NAME/ beside the checkpoint (the family's pipeline), loadable by diffusers."""
    from diffusers import StableDiffusionPipeline

    data = make_dataset(tmp_path / "data", n=2)
    cfg = load_job(finetune_job(tmp_path, tiny_sd15_dir, data, training={"max_steps": 1},
                                output={"save_diffusers": True, "save_precision": "fp32"}))
    result = train(cfg, default_paths(cfg))
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "ft" / "ft"), local_files_only=True)
    got = dict(pipe.unet.named_parameters())
    assert all(torch.allclose(got[n], p, atol=1e-6) for n, p in result.model.unet.named_parameters())


def test_finetune_rules(tmp_path):
    """No instance prompt or class images are asked for; the text encoder learns only when switched on; class
    concepts and fp8 (a UNet that learns) are refused by name."""
    base = {"method": "finetune", "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": str(tmp_path)}}
    cfg = parse_job(base)
    spec = spec_for("finetune")
    assert spec.requirements(cfg) == [] and spec.trains_full_unet(cfg) and not spec.text_encoder_learns(cfg)
    assert spec.learning_rates(parse_job({**base, "finetune": {"train_text_encoder": True},
                                          "training": {"text_encoder_lr": 1e-6}})) == {"unet": 1e-4,
                                                                                       "text_encoder": 1e-6}
    assert type(make_method(cfg)).__name__ == "FineTuneMethod"
    with pytest.raises(ConfigError, match=r"concepts\[0\]\.is_regularization = true: method = \"finetune\""):
        parse_job({**base, "dataset": {"concepts": [{"dir": str(tmp_path), "is_regularization": True}]}})
    for saver in ({"base_quantization": "fp8"}, {"base_quantization": "int8"}, {"blocks_to_swap": 2}):
        with pytest.raises(ConfigError, match=r'needs a frozen UNet, but method = "finetune" trains every UNet '
                                              r'weight'):
            parse_job({**base, "training": {**saver, "mixed_precision": "bf16", "gradient_checkpointing": True}})
    with pytest.raises(ConfigError, match=r'method = "finetune" is not available for Flux.1: a full fine-tune'):
        parse_job({**base, "model": {"base": "builtin:tiny-sd15", "arch": "flux"}})
    warned = parse_job({**base, "dreambooth": {"instance_prompt": "sks"}, "training": {"learning_rate": 1e-4}})
    assert any("dreambooth.instance_prompt" in w and "does not use it" in w for w in warned.warnings)
    assert any("high for a full fine-tune" in w for w in warned.warnings)


def test_kohya_fine_tune_script_keys_import_to_finetune(tmp_path):
    """sd-scripts fine_tune.py arguments (in_json metadata, train_data_dir with captions, dataset_repeats,
    train_text_encoder) become a fine-tune job, not DreamBooth (which would demand an instance prompt)."""
    (tmp_path / "train").mkdir()
    path = tmp_path / "ft.json"
    path.write_text(json.dumps({
        "pretrained_model_name_or_path": "builtin:tiny-sd15", "in_json": "meta_lat.json",
        "train_data_dir": "train", "dataset_repeats": 10, "train_text_encoder": True, "learning_rate": 5e-6,
        "learning_rate_te": 1e-6, "max_train_epochs": 3, "resolution": "512,512", "output_name": "ft"}))
    cfg = load_job(path)
    assert cfg.method == "finetune"
    assert (cfg.finetune.train_text_encoder, cfg.dataset.repeats, cfg.training.epochs) == (True, 10, 3)
    assert (cfg.training.learning_rate, cfg.training.text_encoder_lr) == (5e-6, 1e-6)
    assert Path(cfg.dataset.dir) == tmp_path / "train"
    notes = "\n".join(cfg.migration_notes)
    assert 'method = "finetune"' in notes and "in_json" in notes
    assert not any("instance_prompt" in w for w in cfg.warnings)
