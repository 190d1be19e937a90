"""Mixed precision on the CPU (training.cpu_mixed_precision): the GPU's placement and autocast, for every method
on SD 1.x and SDXL in bf16 and fp16 with 8-bit AdamW. Each run is compared with the same job in fp32, through
the exported file loaded into a fresh diffusers pipeline."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import load_export_into, make_dataset, write_job
from trainer.config import load_job
from trainer.loop import TrainingError, default_paths, train

TOKEN = "<kiln-shape>"
PROMPT = f"a photo of a {TOKEN}, kiln shape"
SAVED = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
METHODS = {  # method id -> (job method, extra sections)
    "lora": ("lora", {"lora": {"train_text_encoder": True}}),
    "dreambooth": ("dreambooth", {"dreambooth": {"prior_preservation": False, "instance_prompt": "sks shape",
                                                 "train_text_encoder": True},
                                  "training": {"learning_rate": 1e-4}}),
    "dreambooth_lora": ("dreambooth", {"dreambooth": {"prior_preservation": False, "instance_prompt": "sks shape",
                                                      "use_lora": True}}),
    "finetune": ("finetune", {"finetune": {"train_text_encoder": True}, "training": {"learning_rate": 1e-4}}),
    "textual_inversion": ("textual_inversion", {"textual_inversion": {"token": TOKEN, "init_word": "shape"},
                                                "training": {"learning_rate": 5e-2}}),
}


def fresh_accelerator_state():
    """accelerate keeps one precision per process (a worker trains one job); these tests train several."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()


@pytest.fixture(autouse=True)
def reset_accelerator_state_after():
    yield
    fresh_accelerator_state()


def mp_job(tmp_path, base, method_id: str, precision: str, name: str, **extra_training):
    method, sections = METHODS[method_id]
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=2)
    values = {s: dict(v) for s, v in sections.items()}
    values.setdefault("training", {}).update(
        {"max_steps": 3, "optimizer": "adamw8bit", "mixed_precision": precision, "cpu_mixed_precision": True,
         **extra_training})
    values["output"] = {"name": name, "save_precision": "fp32" if precision == "no" else precision}
    return write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, method=method, sections=values)


def pipeline(arch: str, base):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return (StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline).from_pretrained(base)


EXPORT_KIND = {"lora": "lora", "dreambooth_lora": "lora", "dreambooth": "checkpoint", "finetune": "checkpoint",
               "textual_inversion": "embedding"}


@torch.no_grad()
def denoiser_output(pipe, arch: str) -> torch.Tensor:
    """The UNet's prediction for PROMPT on fixed latents, through the pipeline's own prompt encoding (fp32)."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    kwargs = {}
    if arch == "sdxl":
        hidden, _, pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    else:
        hidden, _ = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                       do_classifier_free_guidance=False)
    return pipe.unet(latents, torch.tensor([500]), encoder_hidden_states=hidden, **kwargs).sample


def run_and_load(tmp_path, base, arch, method_id, precision):
    cfg = load_job(mp_job(tmp_path, base, method_id, precision, f"{method_id}-{precision}"))
    fresh_accelerator_state()
    result = train(cfg, default_paths(cfg))
    final = result.outputs[-1]
    tensors = load_file(final)
    floats = {v.dtype for v in tensors.values() if v.is_floating_point()}
    pipe = load_export_into(pipeline(arch, base), arch, EXPORT_KIND[method_id], final, result.model.config_dir,
                            token=TOKEN, dtype=torch.float32)
    return result, floats, denoiser_output(pipe, arch)


@pytest.fixture(scope="module")
def fp32_runs(tmp_path_factory):
    """The fp32 reference of each (arch, method), trained once per module."""
    runs = {}

    def get(base, arch, method_id):
        if (arch, method_id) not in runs:
            folder = tmp_path_factory.mktemp(f"fp32-{arch}-{method_id}")
            _, _, out = run_and_load(folder, base, arch, method_id, "no")
            runs[arch, method_id] = out
        return runs[arch, method_id]

    return get


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method_id", list(METHODS))
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_mixed_precision_run_matches_fp32(tmp_path, arch, method_id, precision, fp32_runs, request):
    base = request.getfixturevalue(f"tiny_{arch}_dir")
    result, floats, out = run_and_load(tmp_path, base, arch, method_id, precision)
    model = result.model
    # the GPU placement: frozen weights in the half dtype, learning ones in fp32, the VAE fp32 under fp16
    half = SAVED[precision]
    params = [p for m in (model.unet, *model.text_encoders) for p in m.parameters()]
    assert {p.dtype for p in params if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in params if not p.requires_grad} <= {half}  # full DreamBooth/fine-tune: nothing frozen
    assert half in {p.dtype for p in params} or method_id in ("dreambooth", "finetune")
    assert model.vae.dtype == (torch.float32 if precision == "fp16" else half)
    assert floats == {SAVED[precision]}, "saved dtype must be output.save_precision"

    reference = fp32_runs(base, arch, method_id)
    base_out = denoiser_output(pipeline(arch, base), arch)
    learned = (reference - base_out).abs().max()
    assert learned > 1e-4, "the fp32 run changed nothing, so the comparison proves nothing"
    # Three steps in bf16 (8 mantissa bits, ~4e-3 relative rounding per op) or fp16 (11 bits) move the weights
    # almost as fp32 does; AdamW's first steps are nearly sign(gradient), so coordinates whose gradient is
    # close to 0 may flip. Seen: what was learned agreed to 0.2-11% (bf16) and 0.1-1% (fp16), the output
    # overall to 0.7%; the bounds (25%, 2%) leave room for other thread counts and CPUs, and still fail
    # when a dtype is wrong (an fp16 VAE, a half LoRA weight) or the scaler skips every step.
    diff = (out - reference).abs().max()
    assert diff <= 0.25 * learned, (float(diff), float(learned))
    assert diff <= 0.02 * reference.abs().max(), (float(diff), float(reference.abs().max()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_nan_in_a_step_is_caught_with_advice(tmp_path, tiny_sd15_dir, monkeypatch, precision):
    from trainer import diffusion

    real, calls = diffusion.example_losses, []

    def poisoned(pred, target, *args, **kwargs):
        calls.append(1)
        losses = real(pred, target, *args, **kwargs)
        return losses * float("nan") if len(calls) == 2 else losses

    monkeypatch.setattr(diffusion, "example_losses", poisoned)
    cfg = load_job(mp_job(tmp_path, tiny_sd15_dir, "lora", precision, "nan"))
    fresh_accelerator_state()
    with pytest.raises(TrainingError, match="NaN/inf at step 2") as err:
        train(cfg, default_paths(cfg))
    assert "max_grad_norm" in str(err.value)
    assert ('mixed_precision = "bf16"' in str(err.value)) == (precision == "fp16")
    assert not (tmp_path / "nan" / "nan.safetensors").exists()


def test_lion8bit_under_bf16_trains_and_saves_the_asked_dtype(tmp_path, tiny_sd15_dir):
    cfg = load_job(mp_job(tmp_path, tiny_sd15_dir, "lora", "bf16", "lion", optimizer="lion8bit"))
    fresh_accelerator_state()
    result = train(cfg, default_paths(cfg))
    tensors = load_file(result.outputs[-1])
    assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.bfloat16}
    learned = [p for n, p in result.model.unet.named_parameters() if "lora_B" in n]
    assert all(p.dtype == torch.float32 for p in learned) and any(p.abs().max() > 0 for p in learned)
