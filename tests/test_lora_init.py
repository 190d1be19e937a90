"""lora.init_weights: continuing from a Kiln or Kohya LoRA file.

What "continue" means, exactly: the new run's layers start equal to the file's (same rank, alpha and weights:
the model's outputs are those of the run that wrote the file). The continued run is NOT step-for-step the same
as one longer run: it starts a fresh optimizer (Adam's moments at zero), restarts the LR schedule, and draws
its batches from batch index 0 again. That difference is what the file cannot carry."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_dataset, write_job
from trainer.config import load_job
from trainer.loop import default_paths, train
from trainer.methods import make_method
from trainer.models import ModelError, load_base_model

DEFAULT_RANK, DEFAULT_ALPHA = 16, 8.0  # the schema defaults: what a job that does not set rank/alpha has
NETWORKS = {
    "locon": {"type": "locon", "rank": 4, "alpha": 2, "conv_rank": 2, "conv_alpha": 1, "train_ff": True},
    "loha": {"type": "loha", "rank": 4, "alpha": 2},
    "lokr": {"type": "lokr", "rank": 4, "alpha": 2, "train_conv": True},
    "dora": {"type": "lora", "dora": True, "rank": 4, "alpha": 2},
}


def run(job, overrides=()):
    cfg = load_job(job, list(overrides))
    return train(cfg, default_paths(cfg))


def unet_output(model):
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    ids = model.tokenizers[0](["kiln shape"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model.text_encoders[0](ids)[0]
        return model.unet(latents, 300, encoder_hidden_states=hidden).sample


def continued_model(job, overrides=()):
    """A fresh base model prepared as the continuing job prepares it (before its first step)."""
    cfg = load_job(job, list(overrides))
    model = load_base_model(cfg.model)
    method = make_method(cfg)
    method.prepare(model)
    return model, method


@pytest.fixture
def first_run(tmp_path, tiny_sd15_dir):
    def make(kind, train_te=True):
        data = make_dataset(tmp_path / "data")
        lora = {**NETWORKS[kind], "train_text_encoder": train_te}
        job = write_job(tmp_path / "a.toml", tiny_sd15_dir, data, tmp_path / "a",
                        sections={"training": {"max_steps": 4}, "lora": lora})
        result = run(job)
        follow = write_job(tmp_path / "b.toml", tiny_sd15_dir, data, tmp_path / "b", sections={
            "training": {"max_steps": 3},
            "lora": {**lora, "rank": DEFAULT_RANK, "alpha": DEFAULT_ALPHA, "init_weights": str(result.outputs[-1])}})
        return result, follow
    return make


@pytest.mark.parametrize("kind", NETWORKS)
def test_continuing_starts_exactly_where_the_file_stopped(first_run, kind):
    first, follow = first_run(kind)
    model, method = continued_model(follow)
    assert (unet_output(model) - unet_output(first.model)).abs().max() <= 1e-6
    if kind in ("locon", "loha", "dora"):  # LoKr with two full factors has no rank, so its layout may differ
        ours = method.trainable_state(model)
        theirs = make_method(load_job(follow)).trainable_state(first.model)
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), name


def test_continued_run_trains_and_loads_in_diffusers(tmp_path, first_run, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    first, follow = first_run("locon")
    result = run(follow)
    assert result.status == "done" and result.step == 3
    tensors = load_file(result.outputs[-1])
    conv = next(k for k in tensors if "resnets_0_conv1.lora_down" in k)
    attention = next(k for k in tensors if k.endswith("attn1_to_q.lora_down.weight"))
    # rank and alpha came from the first run's file, per module (conv layers have their own)
    assert tensors[attention].shape[0] == 4 and tensors[conv].shape[0] == 2
    assert float(tensors[attention.replace("lora_down.weight", "alpha")]) == 2.0
    assert float(tensors[conv.replace("lora_down.weight", "alpha")]) == 1.0
    first_tensors = load_file(first.outputs[-1])
    assert not torch.equal(tensors[attention], first_tensors[attention]), "the continued run trained"

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir)
    pipe.load_lora_weights(str(result.outputs[-1]))
    loaded = SimpleModel(pipe)
    assert (unet_output(loaded) - unet_output(result.model)).abs().max() <= 1e-5


class SimpleModel:
    def __init__(self, pipe):
        self.unet, self.text_encoders, self.tokenizers = pipe.unet, [pipe.text_encoder], [pipe.tokenizer]


def test_rank_or_alpha_set_differently_from_the_file_is_refused(first_run):
    _, follow = first_run("loha")
    with pytest.raises(ModelError, match=r"has rank 4 but lora.rank = 8: remove lora.rank"):
        continued_model(follow, ["lora.rank=8"])
    with pytest.raises(ModelError, match=r"has alpha 2 but lora.alpha = 3"):
        continued_model(follow, ["lora.alpha=3"])
    with pytest.raises(ModelError, match=r"is a loha network but lora.type = 'lokr'"):
        continued_model(follow, ["lora.type=lokr"])


def test_file_for_other_layers_or_model_is_refused(first_run, tiny_sdxl_dir):
    _, follow = first_run("locon")
    with pytest.raises(ModelError, match=r"module\(s\) this job does not train, e\.g\. lora_unet_.*ff_net"):
        continued_model(follow, ["lora.train_ff=false"])
    with pytest.raises(ModelError, match=r"trained for sd15, but the base model is sdxl"):
        continued_model(follow, [f"model.base={tiny_sdxl_dir}"])


def test_file_without_layers_the_job_trains_is_refused(first_run):
    _, follow = first_run("loha", train_te=False)
    with pytest.raises(ModelError, match=r"has no weights for \d+ layer\(s\) this job trains in the text_encoder_0"):
        continued_model(follow, ["lora.train_text_encoder=true"])


@pytest.mark.parametrize("kind", ["locon", "dora"])
def test_continuing_on_a_base_read_in_bf16_keeps_the_files_weights(first_run, kind):
    """Under bf16 a LoRA job reads its base straight into bf16 (models.loading.base_load_dtype) and peft makes
    the new layers in that dtype: the file's weights still arrive unrounded in the fp32 weights that learn."""
    first, follow = first_run(kind)
    cfg = load_job(follow)
    model = load_base_model(cfg.model, dtype=torch.bfloat16)
    method = make_method(cfg)
    method.prepare(model)
    ours, theirs = method.trainable_state(model), make_method(cfg).trainable_state(first.model)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].dtype == torch.float32 and torch.equal(ours[name], theirs[name]), name
