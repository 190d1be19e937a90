"""`python -m trainer lora inspect|resize|merge|extract` on tiny single-file checkpoints and LoRAs."""
from __future__ import annotations

import hashlib
import re

import pytest
import torch

from trainer.cli import main
from trainer.config import parse_job
from trainer.export import LoraExportInfo, save_lora
from trainer.export.kohya_keys import adapter_layers
from trainer.lora_tools.network import module_delta, read_network_file
from trainer.methods.lora import LoraMethod
from trainer.models import load_base_model
from trainer.models.single_file import unet_module_names
from trainer.models.tiny import save_tiny_model

LOCON = {"type": "locon", "rank": 4, "alpha": 2, "conv_rank": 2, "conv_alpha": 1, "train_text_encoder": True}
LOHA = {"type": "loha", "rank": 3, "alpha": 2, "train_text_encoder": True}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {arch: save_tiny_model(root / f"{arch}.safetensors", arch=arch, fmt="single-file")
            for arch in ("sd15", "sdxl")}


def model_cfg(base):
    return parse_job({"method": "lora", "model": {"base": str(base)}, "dataset": {"dir": "data"}},
                     source="test").model


def lora_file(path, checkpoint, lora: dict, seed=3):
    """A LoRA trained as Kiln trains it, its weights set to random values; returns (file, the model with it)."""
    model = load_base_model(model_cfg(checkpoint))
    cfg = parse_job({"method": "lora", "model": {"base": str(checkpoint)}, "dataset": {"dir": "data"},
                     "lora": lora}, source="test")
    LoraMethod(cfg).prepare(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in [model.unet, *model.text_encoders]:
            for p in module.parameters():
                if p.requires_grad:
                    p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    names = unet_module_names(model.unet) if model.arch == "sdxl" else None
    save_lora(path, unet=model.unet, text_encoders=model.text_encoders, arch=model.arch, dtype=torch.float32,
              info=LoraExportInfo(output_name="t", rank=lora["rank"], alpha=float(lora["alpha"]),
                                  network_type=lora["type"]), unet_module_names=names)
    return path, model


@torch.no_grad()
def outputs(model):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    ids = torch.randint(0, 49407, (1, 77), generator=generator)
    hidden = [te(ids, output_hidden_states=True).hidden_states[-2] for te in model.text_encoders]
    states = torch.cat(hidden, dim=-1)
    kwargs = {}
    if model.arch == "sdxl":
        pooled = model.text_encoders[1](ids).text_embeds
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64.]])}
    return [model.unet(latents, 400, states, **kwargs).sample, *hidden]


def cli(*args) -> int:
    return main(["lora", *map(str, args)])


@pytest.mark.parametrize("arch,lora", [("sd15", LOCON), ("sdxl", LOHA)], ids=["sd15-locon", "sdxl-loha"])
def test_merge_into_checkpoint_equals_base_with_the_lora(tmp_path, checkpoints, arch, lora):
    path, model = lora_file(tmp_path / "a.safetensors", checkpoints[arch], lora)
    for module in [model.unet, *model.text_encoders]:
        for layer in adapter_layers(module).values():
            layer.scaling["default"] *= 0.5  # the reference: the trained model at strength 0.5
    expected = outputs(model)
    out = tmp_path / "merged.safetensors"
    # the same file twice at 0.25: the weights add up
    assert cli("merge", path, path, "--weights", "0.25,0.25", "--into", checkpoints[arch], "--out", out) == 0
    merged = outputs(load_base_model(model_cfg(out)))
    base = outputs(load_base_model(model_cfg(checkpoints[arch])))
    for got, want, before in zip(merged, expected, base):
        assert (want - before).abs().max() > 1e-3, "the LoRA changes nothing: the comparison would prove nothing"
        assert (got - want).abs().max() <= 1e-5, (got - want).abs().max()
    assert cli("merge", path, "--into", checkpoints[arch], "--out", out) == 2, "never overwrites without --force"


def test_extract_recovers_a_merged_lora(tmp_path, checkpoints, capsys):
    path, _ = lora_file(tmp_path / "a.safetensors", checkpoints["sd15"], LOCON)
    tuned = tmp_path / "tuned.safetensors"
    assert cli("merge", path, "--into", checkpoints["sd15"], "--out", tuned) == 0
    out = tmp_path / "extracted.safetensors"
    assert cli("extract", "--base", checkpoints["sd15"], "--tuned", tuned, "--rank", 4, "--out", out) == 0
    original, extracted = read_network_file(path, "t"), read_network_file(out, "t")
    assert set(extracted.modules) == set(original.modules)
    errors = {name: (module_delta(extracted.modules[name]) - module_delta(module)).abs().max().item()
              for name, module in original.modules.items()}
    print(f"largest extraction error {max(errors.values()):.2e} in {max(errors, key=errors.get)}")
    assert max(errors.values()) <= 1e-5
    assert "kept 100.0000%" in capsys.readouterr().out


def test_resize_full_rank_is_exact_and_lower_ranks_keep_the_reported_energy(tmp_path, checkpoints, capsys):
    path, _ = lora_file(tmp_path / "a.safetensors", checkpoints["sd15"], LOCON)
    same = tmp_path / "same.safetensors"
    assert cli("resize", path, "--rank", 4, "--out", same) == 0
    original, resized = read_network_file(path, "t"), read_network_file(same, "t")
    for name, module in original.modules.items():
        assert (module_delta(resized.modules[name]) - module_delta(module)).abs().max() <= 1e-5, name

    capsys.readouterr()
    small = tmp_path / "small.safetensors"
    assert cli("resize", path, "--rank", 2, "--out", small) == 0
    report = dict(re.findall(r"  (\S+): rank 2, kept ([\d.]+)%", capsys.readouterr().out))
    lower = read_network_file(small, "t")
    for name, module in original.modules.items():
        full, kept = module_delta(module), module_delta(lower.modules[name])
        energy = 1 - float(((full - kept) ** 2).sum() / (full ** 2).sum())
        assert lower.rank(name) == 2
        assert abs(float(report[name]) - 100 * energy) <= 1e-3, (name, report[name], 100 * energy)

    dynamic = tmp_path / "dynamic.safetensors"
    assert cli("resize", path, "--dynamic", "sv_fro", 0.9, "--out", dynamic) == 0
    chosen = read_network_file(dynamic, "t")
    for name, module in original.modules.items():
        full, kept = module_delta(module), module_delta(chosen.modules[name])
        assert (1 - ((full - kept) ** 2).sum() / (full ** 2).sum()) ** 0.5 >= 0.9 - 1e-6, name

    loha, _ = lora_file(tmp_path / "loha.safetensors", checkpoints["sd15"], LOHA)
    as_lora = tmp_path / "loha-as-lora.safetensors"
    assert cli("resize", loha, "--rank", 64, "--out", as_lora) == 0  # at least the layers' size: exact
    source, converted = read_network_file(loha, "t"), read_network_file(as_lora, "t")
    assert converted.algo == "lora"
    for name, module in source.modules.items():
        assert (module_delta(converted.modules[name]) - module_delta(module)).abs().max() <= 1e-5, name
    assert cli("resize", path, "--rank", 2, "--out", small) == 2, "never overwrites without --force"


def test_merge_loras_into_one_lora(tmp_path, checkpoints):
    a, _ = lora_file(tmp_path / "a.safetensors", checkpoints["sd15"], LOCON, seed=1)
    b, _ = lora_file(tmp_path / "b.safetensors", checkpoints["sd15"], LOCON, seed=2)
    out = tmp_path / "ab.safetensors"
    assert cli("merge", a, b, "--weights", "1,0.5", "--rank", 8, "--out", out) == 0
    na, nb, nab = (read_network_file(p, "t") for p in (a, b, out))
    for name in na.modules:
        want = module_delta(na.modules[name]) + 0.5 * module_delta(nb.modules[name])
        assert (module_delta(nab.modules[name]) - want).abs().max() <= 1e-5, name


def test_inspect_reports_type_ranks_hashes_and_keys_a_base_would_not_load(tmp_path, checkpoints, capsys):
    path, _ = lora_file(tmp_path / "a.safetensors", checkpoints["sd15"], LOCON)
    assert cli("inspect", path, "--base", checkpoints["sd15"]) == 0
    report = capsys.readouterr().out
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    sha, addnet = hashlib.sha256(data).hexdigest(), hashlib.sha256(data[8 + header:]).hexdigest()
    assert f"file sha256 {sha[:10]}" in report and f"LoRA (addnet) hash {addnet[:12]}" in report
    assert f"sshs_model_hash = {addnet}" in report, "the hash saved in the metadata is the one A1111 computes"
    assert "type: lora;" in report and "architecture: sd15" in report
    assert "4/2 x" in report and "2/1 x" in report  # attention layers rank 4 alpha 2, conv layers 2/1
    assert "every module loads" in report
    assert cli("inspect", path, "--base", checkpoints["sdxl"]) == 0
    report = capsys.readouterr().out
    assert "module(s) would not load" in report and "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in report
    assert cli("inspect", tmp_path / "missing.safetensors") == 2
    assert "does not exist" in capsys.readouterr().err


def test_resize_keeps_what_the_source_recorded_of_its_training(tmp_path, checkpoints):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from trainer.export.hashes import addnet_hashes

    path, _ = lora_file(tmp_path / "a.safetensors", checkpoints["sd15"], LOCON)
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    trained = {"ss_loss_type": "huber", "ss_huber_c": "0.1", "ss_learning_rate": "0.0001", "ss_num_epochs": "7"}
    save_file(load_file(str(path)), str(path), metadata={**metadata, **trained})
    small = tmp_path / "small.safetensors"
    assert cli("resize", path, "--rank", 2, "--out", small) == 0
    with safe_open(str(small), "pt") as f:
        resized = dict(f.metadata())
    assert {k: resized[k] for k in trained} == trained
    assert resized["ss_network_dim"] == "2" and resized["kiln_resized_from"] == "a.safetensors (rank 2)"
    tensors = load_file(str(small))
    assert (resized["sshs_model_hash"], resized["sshs_legacy_hash"]) == addnet_hashes(tensors, resized)
