"""training.t5_quantization (issue 22): the frozen T5-XXL of SD 3 / Flux / Chroma stored in fp8, int8 or nf4.
Tiny models on the CPU: jobs train through the real loop with the T5's linear layers really quantized while the
captions are cached; the quantized encoder's embeddings stay close to the full-precision ones without being
equal; an fp8 model.t5xxl file stays fp8; the SD families refuse the key by name; the memory model counts it."""
from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file

from tests.helpers import make_dataset, write_job
from trainer import loop
from trainer.config import ConfigError, load_job
from trainer.families import adapter_for
from trainer.families.dit.single_file import write_single_files
from trainer.families.dit.t5 import tiny_t5_encoder, tiny_t5_tokenizer
from trainer.families.dit.text import t5_hidden
from trainer.families.flux.model import FLUX_LAYOUT
from trainer.families.flux.tiny import make_tiny_flux
from trainer.loop import default_paths, train
from trainer.memory import estimate_memory
from trainer.t5_quantize import is_t5, quantize_t5

KINDS = ("fp8", "int8", "nf4")
LINEAR_TYPES = {"fp8": "Linear", "int8": "Int8Linear", "nf4": "AutocastLinear4bit"}
CAPTIONS = ["a photo of a dog", "a red cat painting in the style", "sks person portrait", "a man with a blue dog"]
# Lowest cosine similarity of a caption's whole embedding to the full-precision one, on the tiny random T5 (2
# layers, 6 quantized linears each). One rounding of relative RMS error r per weight moves each layer's output by
# about r, and 1 - cos is about half the squared relative error of the result: fp8 e4m3 (3 mantissa bits, r about
# 2^-4/sqrt(3) = 3.6 %) measures 0.9989; int8 (a scale per row, r below 0.5 %) 0.99995; nf4 (16 levels per block of
# 64, r about 10 %, amplified through the attention softmax) 0.86. The bounds leave room below those.
MIN_COSINE = {"fp8": 0.99, "int8": 0.999, "nf4": 0.8}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-t5q")
    return {f: adapter_for(f).save_tiny(adapter_for(f).make_tiny(seed=0), root / f, "diffusers")
            for f in ("flux", "sd3")}


def _linear_types_while_caching(monkeypatch) -> list[dict]:
    """What the T5's linear layers are when the caching phase starts, per run."""
    seen, real = [], loop.build_caches

    def spy(cfg, model, *args, **kwargs):
        t5 = next(te for te in model.text_encoders if te is not None and is_t5(te))
        attention = t5.encoder.block[0].layer[0].SelfAttention
        seen.append({"q": type(attention.q).__name__, "q_dtype": attention.q.weight.dtype,
                     "wo": type(t5.encoder.block[0].layer[1].DenseReluDense.wo).__name__,
                     "wo_dtype": t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype,
                     "q_weight": attention.q.weight.detach().clone()})
        return real(cfg, model, *args, **kwargs)

    monkeypatch.setattr(loop, "build_caches", spy)
    return seen


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_job_trains_with_a_quantized_t5(tmp_path, tiny_dirs, monkeypatch, family, kind):
    seen = _linear_types_while_caching(monkeypatch)
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", tiny_dirs[family], data, tmp_path / "out",
                    sections={"training": {"max_steps": 2, "t5_quantization": kind}})
    cfg = load_job(job)
    result = train(cfg, default_paths(cfg))
    assert result.outputs and result.outputs[0].is_file()
    assert seen[0]["q"] == LINEAR_TYPES[kind]
    if kind == "fp8":
        assert seen[0]["q_dtype"] == torch.float8_e4m3fn
    assert (seen[0]["wo"], seen[0]["wo_dtype"]) == ("Linear", torch.float32)  # kept, as transformers keeps it


@pytest.mark.parametrize("kind", KINDS)
def test_a_bf16_flux_job_with_a_quantized_t5_and_base(tmp_path, tiny_dirs, monkeypatch, kind):
    """The GPU's path on the CPU: bf16 weights under autocast, the denoiser quantized as well."""
    seen = _linear_types_while_caching(monkeypatch)
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", tiny_dirs["flux"], data, tmp_path / "out",
                    sections={"training": {"max_steps": 2, "t5_quantization": kind, "base_quantization": kind,
                                           "mixed_precision": "bf16", "cpu_mixed_precision": True}})
    cfg = load_job(job)
    AcceleratorState._reset_state()  # the process's accelerate state holds the precision of the first run
    try:
        assert train(cfg, default_paths(cfg)).outputs
    finally:
        AcceleratorState._reset_state()
    assert seen[0]["q"] == LINEAR_TYPES[kind]
    assert seen[0]["wo_dtype"] == torch.bfloat16


@pytest.mark.parametrize("kind", KINDS)
def test_quantized_t5_embeddings_are_close_but_not_equal(kind):
    torch.manual_seed(0)
    full = tiny_t5_encoder().eval().requires_grad_(False)
    quantized = tiny_t5_encoder().eval().requires_grad_(False)
    quantized.load_state_dict(full.state_dict())
    stored = quantize_t5(quantized, kind, torch.float32)
    assert stored == 2 * (4 * 32 * 32 + 2 * 32 * 64)  # per layer q, k, v, o, wi_0, wi_1 (not wo)
    tokenizer = tiny_t5_tokenizer()
    with torch.no_grad():
        a, _ = t5_hidden(tokenizer, full, CAPTIONS, 32, "cpu")
        b, _ = t5_hidden(tokenizer, quantized, CAPTIONS, 32, "cpu")
    cosine = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))
    assert cosine.min() >= MIN_COSINE[kind], cosine
    assert not torch.equal(a, b)  # it really quantized


def test_an_fp8_t5_file_stays_fp8(tmp_path, monkeypatch):
    """model.t5xxl in fp8 with t5_quantization = "fp8": the T5 caches captions with the file's own fp8 bytes."""
    seen = _linear_types_while_caching(monkeypatch)
    files = write_single_files(FLUX_LAYOUT, make_tiny_flux(), tmp_path / "parts", all_in_one=False)
    fp8_file = tmp_path / "t5xxl_fp8_e4m3fn.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in load_file(str(files["t5xxl"])).items()}, str(fp8_file))
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", files["transformer"], data, tmp_path / "out",
                    sections={"model": {"clip_l": str(files["clip_l"]), "t5xxl": str(fp8_file),
                                        "vae": str(files["vae"])},
                              "training": {"max_steps": 1, "t5_quantization": "fp8"}})
    cfg = load_job(job)
    train(cfg, default_paths(cfg))
    stored = load_file(str(fp8_file))["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert seen[0]["q_weight"].dtype == torch.float8_e4m3fn
    assert torch.equal(seen[0]["q_weight"].view(torch.uint8), stored.view(torch.uint8))


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
def test_sd_families_refuse_it_by_name(tmp_path, arch):
    job = write_job(tmp_path / "job.toml", "/nowhere", tmp_path, tmp_path / "out",
                    sections={"model": {"arch": arch}, "training": {"t5_quantization": "fp8"}})
    with pytest.raises(ConfigError) as err:
        load_job(job)
    assert "training.t5_quantization" in str(err.value) and "T5" in str(err.value)


def test_a_detected_sd_model_refuses_it_in_check_as_in_run(tmp_path, tiny_sd15_dir):
    """arch = auto: `check` detects SD 1.x from the folder, `run` loads it; both refuse with the same line."""
    from trainer.preflight import preflight

    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, make_dataset(tmp_path / "data", n=2), tmp_path / "out",
                    sections={"training": {"t5_quantization": "nf4"}})
    errors = []
    for action in (preflight, lambda cfg: train(cfg, default_paths(cfg))):
        with pytest.raises(ConfigError) as caught:
            action(load_job(job))
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "\n" not in errors[0]
    assert 'training.t5_quantization = "nf4"' in errors[0] and "no T5-XXL text encoder" in errors[0]


@pytest.mark.parametrize("arch", ["flux", "sd3"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_memory_model_counts_the_quantized_t5(tmp_path, arch, kind):
    def caching(value):
        job = write_job(tmp_path / f"{value}.toml", "/nowhere", tmp_path, tmp_path / "out",
                        sections={"model": {"arch": arch}, "dataset": {"resolution": 1024, "min_bucket_reso": 256, "max_bucket_reso": 2048},
                                  "training": {"mixed_precision": "bf16", "t5_quantization": value}})
        return estimate_memory(load_job(job), arch).phase("caching text-encoder outputs")

    full, quantized = caching("none"), caching(kind)
    assert quantized.gib < full.gib - 3.0  # T5-XXL: 3.6 G of its 4.9 G parameters quantized
    assert any(kind in line.note for line in quantized.lines)
