"""training.blocks_to_swap (trainer/blockswap.py). On a CPU the device and host RAM are one place, so the test
gives the swapper a placement of its own: a swapped weight's host copy is a separate tensor, the device copy a
fresh clone made at each fetch, and a parked parameter holds NaN. Any use of a block that was not fetched then
spoils the loss (the loop stops on a non-finite loss) or the weights; a run that gives bit-identical LoRA
weights to one without swapping fetched every block before each use, in the forward and in the recompute."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import make_dataset, write_job
from trainer import blockswap
from trainer.config import load_job
from trainer.config.errors import ConfigError
from trainer.loop import default_paths, train
from trainer.swap_blocks import swap_saving, swapped_indices


class PoisonPlacement(blockswap.Placement):
    def __init__(self):
        self.fetches: list[bool] = []  # one per fetched weight: whether autograd was running backward

    def host(self, tensor, device):
        return tensor.detach().clone()

    def parked(self, host):
        return torch.full_like(host, float("nan"))

    def fetch(self, host, device):
        self.fetches.append(torch._C._current_graph_task_id() != -1)
        return host.clone()


def lora_job(tmp_path, base, name, **training):
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=2)
    values = {"training": {"max_steps": 2, "gradient_checkpointing": True, **training}, "output": {"name": name}}
    return load_job(write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, sections=values))


def lora_weights(model):
    return {n: p.detach().clone() for n, p in model.unet.named_parameters() if "lora_" in n}


def assert_swapping_changes_nothing(tmp_path, base, monkeypatch, count: int):
    """Train `base` without and with `count` blocks swapped (parked weights NaN): equal LoRA weights, the
    swapped blocks fetched in the forward and in the recompute. The swapped run's result and its swapper."""
    cfg = lora_job(tmp_path, base, "kept")
    kept = train(cfg, default_paths(cfg))
    placement = PoisonPlacement()
    monkeypatch.setattr(blockswap, "PLACEMENT", placement)
    swaps = []
    original = blockswap.BlockSwapper.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        swaps.append(self)

    monkeypatch.setattr(blockswap.BlockSwapper, "__init__", record)
    cfg = lora_job(tmp_path, base, "swapped", blocks_to_swap=count)
    swapped = train(cfg, default_paths(cfg))
    assert swapped.status == kept.status == "done"
    a, b = lora_weights(kept.model), lora_weights(swapped.model)
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    swapper, = swaps
    assert len(swapper.blocks) == min(count, len(blockswap.denoiser_blocks(swapped.model.unet)))
    # blocks came in for the forward and again for gradient checkpointing's recompute (in backward)
    assert any(placement.fetches) and not all(placement.fetches)
    # what learns never moved: every LoRA weight is a plain tensor on the device, none of them NaN
    assert all(torch.isfinite(t).all() for t in b.values())
    parked = [p for block in swapper.blocks for p in block.params if not block.resident]
    assert parked and all(torch.isnan(p).all() for p in parked)
    return swapped, swapper


@pytest.mark.parametrize("count", [3, 40])  # some blocks; more than the tiny UNet has (all of them)
def test_swapped_blocks_give_bit_identical_lora_weights(tmp_path, tiny_sdxl_dir, monkeypatch, count):
    assert_swapping_changes_nothing(tmp_path, tiny_sdxl_dir, monkeypatch, count)


def test_the_blocks_cover_the_sdxl_unet_in_run_order(tiny_sdxl_dir):
    from trainer.models import load_base_model
    from trainer.config.sections import ModelSection

    unet = load_base_model(ModelSection(base=str(tiny_sdxl_dir)), device="cpu", dtype=torch.float32).unet
    blocks = blockswap.denoiser_blocks(unet)
    seen = []
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda _m, _a, i=i: seen.append(i))
    inside = {id(p) for b in blocks for p in b.parameters()}
    outside = [n for n, p in unet.named_parameters() if id(p) not in inside]
    assert all(n.split(".")[0] in {"conv_in", "conv_out", "conv_norm_out", "time_embedding", "add_embedding"}
               for n in outside), outside
    c = unet.config
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, unet.config.cross_attention_dim),
             added_cond_kwargs={"text_embeds": torch.randn(1, pooled), "time_ids": torch.zeros(1, 6)})
    assert seen == sorted(seen) and sorted(set(seen)) == list(range(len(blocks)))  # each once, in list order


def test_the_largest_blocks_are_swapped_the_later_ones_on_ties():
    assert swapped_indices([5, 9, 9, 1, 9], 2) == [2, 4]
    assert swapped_indices([5, 9, 9, 1, 9], 0) == []
    assert swapped_indices([5, 9], 7) == [0, 1]
    # two swapped blocks are on the GPU at a time (the running one and the next): their size is not saved
    assert swap_saving([5, 9, 9, 1, 9], 2) == 0
    assert swap_saving([5, 9, 9, 1, 9], 4) == 5 + 9


@pytest.mark.parametrize("training, expected", [
    ({"blocks_to_swap": 2}, "needs training.gradient_checkpointing = true"),
    ({"blocks_to_swap": 2, "gradient_checkpointing": True, "torch_compile": True}, "conflicts with training.torch_compile"),
])
def test_swapping_without_what_it_needs_is_refused(tmp_path, tiny_sd15_dir, training, expected):
    make_dataset(tmp_path / "data", n=1)
    with pytest.raises(ConfigError, match=expected):
        load_job(write_job(tmp_path / "job.toml", tiny_sd15_dir, tmp_path / "data", tmp_path / "out",
                           sections={"training": training}))


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
def test_the_memory_models_block_sizes_are_those_of_the_bundled_architectures(arch):
    from bench.random_models import make_random_components
    from trainer.families import FAMILIES

    unet = make_random_components(arch, device="meta")["unet"]
    sizes = tuple(sum(p.numel() for p in b.parameters()) for b in blockswap.denoiser_blocks(unet))
    assert sizes == FAMILIES[arch].memory.swap_blocks


def test_the_memory_model_counts_the_swapped_blocks_off_the_gpu_and_in_host_ram():
    from trainer.config import parse_job
    from trainer.memory import estimate_memory

    def estimate(count):
        cfg = parse_job({"method": "lora", "model": {"base": "x"}, "dataset": {"dir": "/nowhere"},
                         "training": {"mixed_precision": "bf16", "gradient_checkpointing": True,
                                      "blocks_to_swap": count}}, complete=False)
        return estimate_memory(cfg, "sdxl")

    plain, swapped = estimate(0), estimate(6)  # SDXL's six 10-layer transformers, 350.8 M parameters each
    gib = 350_840_320 * 2 / 2**30
    assert plain.phase("training").gib - swapped.phase("training").gib == pytest.approx(4 * gib)  # 2 on the GPU
    assert sum(line.gib for line in swapped.parked) - sum(line.gib for line in plain.parked) == pytest.approx(6 * gib)


def test_the_transformer_block_sizes_are_flux_dev_and_sd35_large():
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from trainer.families import FAMILIES

    with torch.device("meta"):
        built = {"flux": FluxTransformer2DModel(guidance_embeds=True),  # diffusers' defaults are Flux.1 dev
                 "sd3": SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=38,
                                              attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                                              caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
                                              pos_embed_max_size=192, qk_norm="rms_norm")}
    for arch, model in built.items():
        assert sum(p.numel() for p in model.parameters()) == FAMILIES[arch].memory.denoiser  # the family's model
        sizes = tuple(sum(p.numel() for p in b.parameters()) for b in blockswap.denoiser_blocks(model))
        assert sizes == FAMILIES[arch].memory.swap_blocks
        linear = sum(m.weight.numel() for m in model.modules() if type(m) is torch.nn.Linear)
        assert linear == FAMILIES[arch].memory.linear_weights


@pytest.fixture(scope="module")
def tiny_flow_dirs(tmp_path_factory):
    from trainer.families import adapter_for

    from diffusers import SD3Transformer2DModel
    from trainer.families.dit.tiny_parts import pass_latents_through

    root = tmp_path_factory.mktemp("tiny-flow-swap")
    out = {}
    for family in ("flux", "sd3", "chroma"):
        parts = adapter_for(family).make_tiny(seed=0)
        if family == "sd3":  # the tiny SD3 has 2 blocks, both on the device at once: 4, so that blocks go back
            parts["transformer"] = SD3Transformer2DModel.from_config({**parts["transformer"].config, "num_layers": 4})
            pass_latents_through(parts["transformer"])
        out[family] = adapter_for(family).save_tiny(parts, root / family, "diffusers")
    return out


@pytest.mark.parametrize("family", ["flux", "sd3", "chroma"])
def test_swapped_transformer_blocks_give_bit_identical_lora_weights(tmp_path, tiny_flow_dirs, monkeypatch, family):
    """Flux's and Chroma's double and single blocks, SD3's joint blocks: the same poison test as the UNet's."""
    swapped, _ = assert_swapping_changes_nothing(tmp_path, tiny_flow_dirs[family], monkeypatch, 3)
    assert len(blockswap.denoiser_blocks(swapped.model.unet)) > 3  # so swapped blocks went back and came again
