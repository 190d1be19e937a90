"""Frozen modules off the training device while their outputs are cached (trainer/offload.py, the set-up order
in trainer/loop.py). On a CPU the training device and the parking place are the same, so these tests park on
the "meta" device, where a module has no values and any use of it fails: training that still gives the same
weights touched nothing parked, and previews, validation and cache misses that still work borrowed what they
needed."""
from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import make_dataset, subject_images, write_job
from trainer import offload
from trainer.config import load_job
from trainer.loop import default_paths, train


def lora_job(tmp_path, base, name: str, **sections):
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=2)
    values = {"training": {"max_steps": 2, "cache_latents": True, "cache_text_encoder_outputs": True},
              "output": {"name": name}}
    for section, extra in sections.items():
        values.setdefault(section, {}).update(extra)
    return load_job(write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, sections=values))


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.unet.named_parameters() if "lora_" in n}


def tensors(module):
    return itertools.chain(module.named_parameters(), module.named_buffers())


class MetaParking:
    """offload.park / offload.on_device for a machine with one device: a parked module goes to "meta" (its
    values kept aside), so using it outside a borrow fails; borrowing gives it its values back on the device
    for the block and parks it again after. Each borrow of parked modules is recorded."""

    def __init__(self, monkeypatch):
        self.kept: dict[int, dict[str, torch.Tensor]] = {}
        self.borrows: list[tuple[list[torch.nn.Module], torch.device]] = []
        monkeypatch.setattr(offload, "park", self.park)
        monkeypatch.setattr(offload, "on_device", self.on_device)

    def park(self, modules) -> None:
        for module in modules:
            self.kept[id(module)] = {name: t.detach().clone() for name, t in tensors(module)}
            module.to("meta")

    @contextlib.contextmanager
    def on_device(self, modules, device):
        parked = [m for m in modules if id(m) in self.kept and offload.device_of(m).type == "meta"]
        if parked:
            self.borrows.append((parked, torch.device(device)))
        for module in parked:
            module.to_empty(device=device)
            with torch.no_grad():
                for name, t in tensors(module):
                    t.copy_(self.kept[id(module)][name])
        try:
            yield
        finally:
            for module in parked:
                module.to("meta")


def on_meta(module) -> bool:
    return offload.device_of(module).type == "meta"


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_training_never_touches_the_parked_vae_and_text_encoders(tmp_path, tiny_sd15_dir, tiny_sdxl_dir, arch,
                                                                 monkeypatch):
    base = tiny_sd15_dir if arch == "sd15" else tiny_sdxl_dir
    def run(name: str):
        cfg = lora_job(tmp_path, base, name)
        return train(cfg, default_paths(cfg))

    with monkeypatch.context() as patch:
        patch.setattr(offload, "park", lambda modules: None)  # offloading off: everything stays put
        kept = run("kept")
    with monkeypatch.context() as patch:
        patch.setattr(offload, "PARKING", "meta")
        parked = run("parked")
    assert parked.status == kept.status == "done"
    model = parked.model
    assert on_meta(model.vae) and all(on_meta(te) for te in model.text_encoders) and not on_meta(model.unet)
    assert not on_meta(kept.model.vae)
    a, b = lora_weights(kept.model), lora_weights(model)
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "parked" / "parked.safetensors").is_file()


def test_previews_and_validation_borrow_what_is_parked_and_park_it_again(tmp_path, tiny_sdxl_dir, monkeypatch):
    from trainer.jobs import StatusWriter, read_events
    from trainer.progress import RunReporter

    held = make_dataset(tmp_path / "held", n=2, seed=5, caption="a held-out kiln")  # captions of its own

    def run(name: str):
        job_dir = tmp_path / f"job-{name}"
        job_dir.mkdir()
        cfg = lora_job(tmp_path, tiny_sdxl_dir, name, sample={"prompts": ["kiln shape --s 2 --d 5"],
                                                              "every_n_steps": 1},
                       validation={"dir": str(held), "every_n_steps": 1})
        result = train(cfg, default_paths(cfg, job_dir), RunReporter(StatusWriter(job_dir), console=False))
        events, _ = read_events(job_dir)
        losses = [e["loss"] for e in events if e["kind"] == "validation"]
        samples = sorted((job_dir / "samples").glob("*.png"))
        return result, losses, samples

    kept, kept_losses, kept_samples = run("kept")  # nothing parked (the CPU is both places)
    parking = MetaParking(monkeypatch)
    result, losses, samples = run("parked")
    model = result.model
    vae, encoders = model.vae, model.text_encoders
    assert len(samples) == 2 and len(losses) == 2  # at step 1 and at the end
    # Validation borrows the VAE (the held-out captions were encoded ahead with the training ones), each
    # preview the VAE and both encoders; all onto the training device, and parked again after.
    borrowed = [[{id(vae): "vae", id(encoders[0]): "te0", id(encoders[1]): "te1"}[id(m)] for m in modules]
                for modules, _ in parking.borrows]
    assert borrowed == [["vae"], ["vae", "te0", "te1"]] * 2, borrowed
    assert {device for _, device in parking.borrows} == {torch.device("cpu")}
    assert on_meta(vae) and all(on_meta(te) for te in encoders)
    # ... with the very values they hold when nothing is parked
    assert losses == kept_losses
    for a, b in zip(samples, kept_samples):
        with Image.open(a) as one, Image.open(b) as other:
            assert np.array_equal(np.asarray(one), np.asarray(other))


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_a_caption_the_cache_did_not_foresee_borrows_the_encoders(tmp_path, tiny_sd15_dir, tiny_sdxl_dir, arch,
                                                                  monkeypatch):
    from trainer.conditioning import TextConditioner
    from trainer.config import ModelSection
    from trainer.models import load_base_model

    model = load_base_model(ModelSection(base=str(tiny_sd15_dir if arch == "sd15" else tiny_sdxl_dir)))
    plain = TextConditioner(arch, model.tokenizers, model.text_encoders, cache=False)
    with torch.no_grad():
        expected = [plain.encode([c], "cpu") for c in ("kiln shape", "a new caption")]
    text = TextConditioner(arch, model.tokenizers, model.text_encoders, cache=True)
    text.precompute(["kiln shape"], "cpu")
    parking = MetaParking(monkeypatch)
    parking.park(model.text_encoders)

    hidden, pooled = text.encode(["kiln shape", "a new caption"], "cpu")
    assert [modules for modules, _ in parking.borrows] == [model.text_encoders]
    assert all(on_meta(te) for te in model.text_encoders)  # parked again
    for i, (want_hidden, want_pooled) in enumerate(expected):
        assert torch.allclose(hidden[i], want_hidden[0], atol=1e-6)
        assert (pooled is None) == (want_pooled is None) == (arch == "sd15")
        if pooled is not None:
            assert torch.allclose(pooled[i], want_pooled[0], atol=1e-6)
    text.encode(["a new caption"], "cpu")
    assert len(parking.borrows) == 1  # now cached: no borrow


class ParkSpy:
    """Records what the loop parks and what it borrows (real parking: on a CPU, nothing moves)."""

    def __init__(self, monkeypatch):
        self.parked: list[torch.nn.Module] = []
        self.borrowed: list[list[torch.nn.Module]] = []
        real_park, real_on_device = offload.park, offload.on_device

        def park(modules):
            self.parked += list(modules)
            real_park(modules)

        def on_device(modules, device):
            self.borrowed.append(list(modules))
            return real_on_device(modules, device)

        monkeypatch.setattr(offload, "park", park)
        monkeypatch.setattr(offload, "on_device", on_device)


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_full_dreambooth_parks_only_what_is_frozen_and_cached_and_saves_it(tmp_path, tiny_sd15_dir,
                                                                            train_text_encoder, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from trainer.models import load_base_model

    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "kiln-cache"))
    data = subject_images(tmp_path / "data", n=2)
    cfg = load_job(write_job(tmp_path / "db.toml", tiny_sd15_dir, data, tmp_path / "db", method="dreambooth",
                             sections={"dreambooth": {"instance_prompt": "sks shape", "class_prompt": "shape",
                                                      "class_images_per_instance": 1, "class_steps": 2,
                                                      "train_text_encoder": train_text_encoder},
                                       "training": {"max_steps": 2}, "output": {"name": "db"}}))
    spy = ParkSpy(monkeypatch)
    result = train(cfg, default_paths(cfg))
    model = result.model
    assert result.status == "done"
    # the class images borrowed the whole model first
    assert spy.borrowed[0] == [model.unet, model.vae, *model.text_encoders]
    expected = [model.vae] if train_text_encoder else [model.vae, *model.text_encoders]
    assert spy.parked == expected and model.unet not in spy.parked
    # The checkpoint holds the parked modules' weights as they are (fp32 saves): read from where they wait.
    pipe = StableDiffusionPipeline.from_single_file(str(tmp_path / "db" / "db.safetensors"),
                                                    config=str(model.config_dir), local_files_only=True)
    base = load_base_model(cfg.model)
    saved_vae, base_vae = pipe.vae.state_dict(), base.vae.state_dict()
    assert saved_vae.keys() == base_vae.keys() and all(torch.equal(saved_vae[k], base_vae[k]) for k in saved_vae)
    saved_te, base_te = pipe.text_encoder.state_dict(), base.text_encoders[0].state_dict()
    same_te = all(torch.equal(saved_te[k], base_te[k]) for k in saved_te if k in base_te)
    assert same_te != train_text_encoder  # a trained text encoder changed; a parked one is saved as it was


def test_textual_inversion_keeps_its_text_encoder_and_parks_the_vae(tmp_path, tiny_sd15_dir, monkeypatch):
    data = make_dataset(tmp_path / "data", n=2)
    cfg = load_job(write_job(tmp_path / "ti.toml", tiny_sd15_dir, data, tmp_path / "ti",
                             method="textual_inversion",
                             sections={"textual_inversion": {"token": "<kiln-shape>", "init_word": "shape"},
                                       "training": {"max_steps": 2, "learning_rate": 5e-3},
                                       "output": {"name": "ti"}}))
    parking = MetaParking(monkeypatch)  # the VAE truly unusable while parked
    result = train(cfg, default_paths(cfg))
    model = result.model
    assert result.status == "done" and (tmp_path / "ti" / "ti.safetensors").is_file()
    assert on_meta(model.vae) and not on_meta(model.text_encoders[0]) and not on_meta(model.unet)
    assert not parking.borrows


def test_park_keeps_the_dtype_and_on_device_leaves_what_is_already_there(monkeypatch):
    module = torch.nn.Linear(3, 3).to(torch.bfloat16)
    with offload.on_device([module, module], "cpu"):
        assert offload.device_of(module) == torch.device("cpu")
    monkeypatch.setattr(offload, "PARKING", "meta")
    offload.park([module])
    assert module.weight.device.type == "meta" and module.weight.dtype == torch.bfloat16
    assert offload.device_of(torch.nn.ReLU()) == torch.device("meta")  # nothing to move: counts as parked
