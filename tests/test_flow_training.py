"""SD 3, Flux.1 and Chroma LoRAs through the real loop on tiny models: they learn, resume bit-identically,
run under the CPU mixed-precision path, and the exported files give back the trained deltas (Kohya layout, by
the readers' formula) and the trained model's outputs (diffusers layout, reloaded in the pipeline)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers import StopAt, learn_losses, make_dataset, write_job
from trainer.config import load_job
from trainer.families import adapter_for
from trainer.families.dit.fused_lora import reader_deltas, trained_deltas
from trainer.loop import default_paths, train

FAMILIES = ("flux", "sd3", "chroma")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-flow")
    out = {}
    for family in FAMILIES:
        adapter = adapter_for(family)
        out[family] = adapter.save_tiny(adapter.make_tiny(seed=0), root / family, "diffusers")
    return out


def run(job, resume=False, controls=None):
    cfg = load_job(job)
    return cfg, train(cfg, default_paths(cfg), controls=controls, resume=resume)


def _job(tmp_path, name, base, data, **sections):
    values = {"lora": {"rank": 4, "alpha": 4}}
    for section, keys in sections.items():
        values.setdefault(section, {}).update(keys)
    return write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, sections=values)


@pytest.mark.parametrize("family", FAMILIES)
def test_flow_lora_learns_a_small_concept(tmp_path, tiny_dirs, family):
    data = make_dataset(tmp_path / "data", n=3)
    job = _job(tmp_path, "learn", tiny_dirs[family], data,
               training={"max_steps": 100, "batch_size": 3, "learning_rate": 5e-3}, lora={"rank": 8, "alpha": 8})
    before, after, _ = learn_losses(job)
    assert after <= 0.7 * before, (before, after)


@pytest.mark.parametrize("family, prediction", [(f, "raw") for f in FAMILIES] + [("flux", "sigma_scaled")])
def test_flow_lora_stop_then_resume_is_bit_identical(tmp_path, tiny_dirs, family, prediction):
    data = make_dataset(tmp_path / "data")
    sections = {"training": {"max_steps": 4, "lr_scheduler": "cosine", "optimizer": "adamw8bit",
                             "model_prediction_type": prediction},
                "dataset": {"flip": True}}
    _, straight = run(_job(tmp_path, "a", tiny_dirs[family], data, **sections))
    job = _job(tmp_path, "b", tiny_dirs[family], data, **sections)
    _, stopped = run(job, controls=StopAt(2))
    assert stopped.status == "stopped" and stopped.step == 2
    _, resumed = run(job, resume=True)
    assert resumed.status == "done" and resumed.step == 4
    a, b = load_file(straight.outputs[-1]), load_file(resumed.outputs[-1])
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_flux_lora_trains_with_each_prediction_type(tmp_path, tiny_dirs):
    """sigma_scaled (the Kohya GUI's default) and additive train (a non-finite loss would stop the run) and reach
    the loop: the same seed and batches give other weights than raw."""
    data = make_dataset(tmp_path / "data", n=2)
    trained = {}
    for kind in ("raw", "sigma_scaled", "additive"):
        training = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-2, "model_prediction_type": kind,
                    "weighting_scheme": "sigma_sqrt" if kind == "sigma_scaled" else "none"}
        _, result = run(_job(tmp_path, kind, tiny_dirs["flux"], data, training=training))
        assert result.status == "done" and result.step == 3
        trained[kind] = load_file(result.outputs[-1])
        ups = [v for k, v in trained[kind].items() if "lora_up" in k or "lora_B" in k]
        assert ups and all(torch.isfinite(v).all() for v in trained[kind].values())
        assert any(v.abs().sum() > 0 for v in ups), kind  # LoRA's up matrices start at zero
    for kind in ("sigma_scaled", "additive"):
        assert any(not torch.equal(trained["raw"][k], trained[kind][k]) for k in trained["raw"]), kind


@pytest.mark.parametrize("family", FAMILIES)
def test_flow_lora_under_cpu_mixed_precision_exports_exact_deltas(tmp_path, tiny_dirs, family):
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state()
    data = make_dataset(tmp_path / "data", n=2)
    job = _job(tmp_path, "mp", tiny_dirs[family], data,
               training={"max_steps": 3, "mixed_precision": "bf16", "cpu_mixed_precision": True},
               output={"save_precision": "fp32"})
    try:
        _, result = run(job)
    finally:
        AcceleratorState._reset_state()
    assert result.status == "done"
    tensors = load_file(result.outputs[-1])
    transformer = result.model.unet
    rows = adapter_for(family).layout.rows(transformer.config)
    trained, read = trained_deltas(transformer), reader_deltas(tensors)
    owner = {path: (r, i) for r in rows for i, (path, _) in enumerate(r.parts)}
    for module, delta in trained.items():
        r, i = owner[module]
        start = sum(n for _, n in r.parts[:i])
        name = "lora_unet_" + r.original.replace(".", "_")
        part = read[name][start:start + r.parts[i][1]] if r.fused else read[name]
        assert (part - delta).norm() <= 1e-5 * max(delta.norm(), 1e-12), module
    with safe_open(result.outputs[-1], "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_base_model_version"] == adapter_for(family).spec.ss_base_model_version


@torch.no_grad()
def _latents_out(pipe):
    return pipe("kiln shape", height=64, width=64, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(0), max_sequence_length=16).images


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_lora_reloads_in_diffusers_with_equal_outputs(tmp_path, tiny_dirs, family):
    """The run's diffusers-layout copy (output.save_diffusers) and, for Flux, its Kohya file (double blocks:
    diffusers' Kohya-Flux reader hard-codes the full-size width for single blocks) reload into a fresh pipeline
    of the base model and give the trained model's outputs."""
    adapter = adapter_for(family)
    data = make_dataset(tmp_path / "data", n=2)
    lora = {"train_blocks": "double"} if family == "flux" else {}
    text = {"train_text_encoder": True} if family != "chroma" else {}
    _, result = run(_job(tmp_path, "r", tiny_dirs[family], data, training={"max_steps": 3, "learning_rate": 1e-2},
                         lora={**lora, **text}, output={"save_diffusers": True}))
    trained = adapter.pipeline(result.model)
    expected = _latents_out(trained)
    pipeline_class = adapter.pipeline_class()
    final = Path(result.outputs[-1])
    files = [str(final.with_name(f"{final.stem}-diffusers"))]
    if family == "flux":
        files.append(str(final))
    for lora_file in files:
        pipe = pipeline_class.from_pretrained(tiny_dirs[family], local_files_only=True)
        base = _latents_out(pipe)
        pipe.load_lora_weights(lora_file)
        assert not torch.allclose(base, expected)
        torch.testing.assert_close(_latents_out(pipe), expected, rtol=1e-4, atol=1e-5)


def test_block_indices_outside_the_model_are_refused(tmp_path, tiny_dirs):
    from trainer.models.errors import ModelError
    data = make_dataset(tmp_path / "data", n=2)
    job = _job(tmp_path, "idx", tiny_dirs["flux"], data, lora={"train_blocks": "single",
                                                               "train_single_block_indices": "0-5"})
    with pytest.raises(ModelError, match=r"train_single_block_indices = '0-5': '0-5' is outside the model's blocks 0-1"):
        run(job)


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_savers_and_clip_lora_run(tmp_path, tiny_dirs, family):
    """fp8 base weights, gradient checkpointing and bf16 on the CPU path, the family's own sigma sampling, and a
    CLIP LoRA where the family has CLIP: the run finishes and the file holds the text encoders' keys."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state()
    data = make_dataset(tmp_path / "data", n=2)
    job = _job(tmp_path, "savers", tiny_dirs[family], data, training={
        "max_steps": 2, "mixed_precision": "bf16", "cpu_mixed_precision": True, "base_quantization": "fp8",
        "gradient_checkpointing": True, "timestep_sampling": "flux_shift" if family == "flux" else "shift"},
        lora={"train_text_encoder": family != "chroma"})
    try:
        _, result = run(job)
    finally:
        AcceleratorState._reset_state()
    assert result.status == "done"
    keys = load_file(result.outputs[-1]).keys()
    prefixes = {k.split("_", 2)[0] + "_" + k.split("_", 2)[1] for k in keys}
    expected = {"flux": {"lora_unet", "lora_te1"}, "sd3": {"lora_unet", "lora_te1", "lora_te2"},
                "chroma": {"lora_unet"}}[family]
    assert prefixes == expected


def _save_without_t5(folder: Path, family: str, slot: str, omit: bool) -> Path:
    """A tiny pipeline saved with its T5 slot None (model_index.json: [null, null]) or, `omit`, left out."""
    import json
    adapter = adapter_for(family)
    components = adapter.make_tiny(seed=0)
    components[slot] = components[slot.replace("text_encoder", "tokenizer")] = None
    adapter.pipeline_class()(**components).save_pretrained(folder)
    if omit:
        index = json.loads((folder / "model_index.json").read_text())
        for name in (slot, slot.replace("text_encoder", "tokenizer")):
            index.pop(name)
        (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("omit", [False, True], ids=["null-slot", "omitted-slot"])
def test_sd3_folder_without_t5_checks_trains_samples_and_exports(tmp_path, capsys, omit):
    """Issue 21: an SD3 diffusers folder saved without T5 passes `trainer check`, trains (caching and previews
    on, T5's zeros in its place) and its diffusers-layout LoRA reloads into a T5-less pipeline with the trained
    model's outputs."""
    from diffusers import StableDiffusion3Pipeline

    from trainer.cli import main
    from trainer.worker import EXIT_OK
    base = _save_without_t5(tmp_path / "sd3-no-t5", "sd3", "text_encoder_3", omit)
    data = make_dataset(tmp_path / "data", n=2)
    job = _job(tmp_path, "r", base, data, training={"max_steps": 2, "learning_rate": 1e-2,
                                                    "cache_text_encoder_outputs": True},
               lora={"train_text_encoder": True}, sample={"prompts": ["kiln shape --w 64 --h 64 --s 2"]},
               output={"save_diffusers": True})
    assert main(["check", str(job)]) == EXIT_OK, capsys.readouterr().err
    _, result = run(job)
    assert result.model.text_encoders[2] is None
    assert list((tmp_path / "r").rglob("*.png")), "no sample preview was written"
    expected = _latents_out(adapter_for("sd3").pipeline(result.model))
    final = Path(result.outputs[-1])
    pipe = StableDiffusion3Pipeline.from_pretrained(base, local_files_only=True, text_encoder_3=None,
                                                    tokenizer_3=None)
    plain = _latents_out(pipe)
    pipe.load_lora_weights(str(final.with_name(f"{final.stem}-diffusers")))
    assert not torch.allclose(plain, expected)
    torch.testing.assert_close(_latents_out(pipe), expected, rtol=1e-4, atol=1e-5)


def test_flux_folder_without_t5_is_one_line_in_check_and_run(tmp_path, capsys):
    from trainer.cli import main
    from trainer.families.dit.loading import load_components
    from trainer.families.flux.model import FLUX_LAYOUT
    from trainer.models.errors import ModelError
    from trainer.worker import EXIT_BAD_INPUT
    base = _save_without_t5(tmp_path / "flux-no-t5", "flux", "text_encoder_2", omit=False)
    job = _job(tmp_path, "r", base, make_dataset(tmp_path / "data", n=2), training={"max_steps": 2})
    lines = []
    for verb in ("check", "run"):
        assert main([verb, str(job)]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        lines.append(next(line for line in err.splitlines() if "text_encoder_2" in line))
        assert "[model] t5xxl" in lines[-1] and "Traceback" not in err, err
    assert lines[0] == lines[1]
    with pytest.raises(ModelError, match=r"text_encoder_2 \(t5-xxl\).*\[model\] t5xxl"):
        load_components(FLUX_LAYOUT, adapter_for("flux").pipeline_class(), str(base))
