"""LoHa, LoKr and DoRA export: the weight change a reader (ComfyUI's comfy/weight_adapter, A1111's Lora
extension, LyCORIS) computes from the saved file equals the change of the trained peft layer."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from trainer.config import parse_job
from trainer.export import build_lora_metadata, kohya_lora_tensors
from trainer.export.kohya_keys import TEXT_ENCODER_PREFIXES, adapter_layers
from trainer.methods.lora import LoraMethod
from trainer.models.single_file import unet_module_names
from trainer.models.tiny import make_tiny

TOLERANCE = 1e-6

# (id, [lora] settings): every algorithm, LoKr with each factor full or decomposed, DoRA on linear and conv.
NETWORKS = [
    ("locon", {"type": "locon", "rank": 4, "alpha": 2, "conv_rank": 2, "conv_alpha": 3}),
    ("dora", {"type": "lora", "dora": True, "rank": 4, "alpha": 2}),
    ("locon-dora", {"type": "locon", "dora": True, "rank": 4, "alpha": 2, "conv_rank": 2}),
    ("loha", {"type": "loha", "train_conv": True, "rank": 4, "alpha": 2, "conv_rank": 2, "conv_alpha": 1}),
    ("lokr-full", {"type": "lokr", "train_conv": True, "rank": 8, "alpha": 2}),
    ("lokr-low-rank", {"type": "lokr", "train_conv": True, "rank": 2, "alpha": 3}),
    ("lokr-both", {"type": "lokr", "rank": 1, "alpha": 1, "lokr_decompose_both": True, "lokr_factor": 4}),
]


def job_config(lora: dict):
    return parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": "data"},
                      "lora": {"train_text_encoder": True, "train_ff": True, **lora}}, source="test")


def trained_model(arch: str, lora: dict):
    """A tiny model with the network added as training adds it, every adapter weight set to random values (a
    fresh adapter is a zero change, which would prove nothing)."""
    components = make_tiny(arch)
    encoders = [components[k] for k in ("text_encoder", "text_encoder_2") if components.get(k) is not None]
    model = SimpleNamespace(arch=arch, unet=components["unet"], text_encoders=encoders)
    LoraMethod(job_config(lora)).prepare(model)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for module in [model.unet, *encoders]:
            for name, param in module.named_parameters():
                if not param.requires_grad:
                    continue
                noise = torch.randn(param.shape, generator=generator)
                # a DoRA magnitude starts as the weight's norm: vary it around that
                param.copy_(param * (1 + 0.2 * noise) if "magnitude" in name else 0.3 * noise)
    return model


def kohya_names(model) -> dict[str, torch.nn.Module]:
    """Kohya module name -> the peft layer it was saved from."""
    names = {}
    unet_names = unet_module_names(model.unet) if model.arch == "sdxl" else None
    for name, layer in adapter_layers(model.unet).items():
        names["lora_unet_" + (unet_names[name] if unet_names else name).replace(".", "_")] = layer
    for prefix, encoder in zip(TEXT_ENCODER_PREFIXES[model.arch], model.text_encoders):
        level = "" if hasattr(encoder, "text_model") else "text_model."
        for name, layer in adapter_layers(encoder).items():
            names[f"{prefix}_{level}{name}".replace(".", "_")] = layer
    return names


def reader_weight(tensors: dict[str, torch.Tensor], name: str, weight: torch.Tensor) -> torch.Tensor:
    """The weight a reader makes of module `name`, from the published LyCORIS definitions."""
    t = {k[len(name) + 1:]: v.float() for k, v in tensors.items() if k.startswith(name + ".")}
    alpha = float(t["alpha"])
    if "lora_down.weight" in t:
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        delta = (up.flatten(1) @ down.flatten(1)) * (alpha / down.shape[0])
    elif "hada_w1_a" in t:
        rank = t["hada_w1_b"].shape[0]
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * (alpha / rank)
    else:
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        inner = t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else None
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2) * (alpha / inner if inner else 1.0)
    merged = weight + delta.reshape(weight.shape)
    if "dora_scale" not in t:
        return merged
    scale = t["dora_scale"]
    assert scale.shape == (weight.shape[0],) + (1,) * (weight.dim() - 1), "dora_scale must be on the output axis"
    norm = merged.flatten(1).norm(dim=1).reshape(scale.shape)  # fp32, per output channel
    return scale * merged / norm


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
@pytest.mark.parametrize("lora", [n[1] for n in NETWORKS], ids=[n[0] for n in NETWORKS])
def test_reader_delta_equals_trained_delta(arch, lora):
    model = trained_model(arch, lora)
    tensors = kohya_lora_tensors(model.unet, model.text_encoders, arch,
                                 unet_module_names(model.unet) if arch == "sdxl" else None)
    layers = kohya_names(model)
    assert {k.split(".")[0] for k in tensors} == set(layers), "every trained layer is saved, nothing else"
    algo_keys = {"loha": "hada_w1_a", "lokr": "lokr_w"}
    if lora["type"] in algo_keys:
        assert all(any(algo_keys[lora["type"]] in k for k in tensors if k.startswith(n + ".")) for n in layers)
    assert any(m.get_base_layer().weight.dim() == 4 and m.get_base_layer().kernel_size != (1, 1)
               for m in layers.values()) == \
        (lora["type"] == "locon" or bool(lora.get("train_conv")))
    for name, layer in layers.items():
        base = layer.get_base_layer()
        weight = base.weight.detach().clone()
        layer.merge(adapter_names=["default"])  # peft's own merged weight: the trained layer's effect
        trained = base.weight.detach()
        assert (trained - weight).abs().max() > 1e-3, f"{name}: no change, the comparison would prove nothing"
        read = reader_weight(tensors, name, weight)
        assert (read - trained).abs().max() <= TOLERANCE, (name, (read - trained).abs().max())


# --- DoRA in each reader, by the reader's own formula ------------------------------------------------------------
# Written from the readers' code as it is (2026-12): ComfyUI comfy/weight_adapter/base.py weight_decompose, A1111
# extensions-builtin/Lora/network.py apply_weight_decompose (+ finalize_updown), LyCORIS modules' wd_on_out branch.

def lora_delta(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    return ((up.flatten(1) @ down.flatten(1)) * (float(t["alpha"]) / down.shape[0])).reshape(weight.shape)


def module_tensors(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {k[len(name) + 1:]: v.float() for k, v in tensors.items() if k.startswith(name + ".")}


def comfyui_weight(t: dict[str, torch.Tensor], weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """ComfyUI: the axis is the output one when dora_scale.shape[0] == out; there it divides by the row norm of
    the BASE weight W (its input-axis branch takes the norm of W + delta), plus the dtype's eps; strength blends
    the result with W."""
    scale, merged = t["dora_scale"], weight + lora_delta(t, weight)
    if scale.shape[0] == weight.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True).reshape(
            weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True).reshape(
            merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
    result = merged * (scale / (norm + torch.finfo(weight.dtype).eps))
    return weight + strength * (result - weight)


def a1111_weight(t: dict[str, torch.Tensor], weight: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
    """AUTOMATIC1111: always the input axis, the norm of each input column of W + delta (over the outputs and
    the kernel); an output-axis dora_scale [out, 1(, 1, 1)] broadcasts against those [1, in(, 1, 1)] norms."""
    merged = weight + lora_delta(t, weight)
    norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True).reshape(
        merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
    return weight + multiplier * (merged * (t["dora_scale"] / norm) - weight)


def lycoris_weight(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """LyCORIS (wd_on_out, as Kiln's ss_network_args say), peft and the DoRA paper: each output row of W + delta
    rescaled to its trained magnitude."""
    merged = weight + lora_delta(t, weight)
    norm = merged.reshape(merged.shape[0], -1).norm(dim=1, keepdim=True).reshape(
        merged.shape[0], *[1] * (merged.dim() - 1))
    return merged * (t["dora_scale"] / (norm + torch.finfo(weight.dtype).eps))


@pytest.mark.parametrize("lora", [n[1] for n in NETWORKS if n[1].get("dora")],
                         ids=[n[0] for n in NETWORKS if n[1].get("dora")])
def test_dora_in_each_reader(lora):
    """Which readers apply Kiln's DoRA files as trained: LyCORIS (and peft: the trained layer) exactly; ComfyUI
    today off by ||W + delta|| / ||W|| per output row; AUTOMATIC1111 normalises input columns instead."""
    model = trained_model("sd15", lora)
    tensors = kohya_lora_tensors(model.unet, model.text_encoders, "sd15")
    comfy_off, a1111_off = [], []
    for name, layer in kohya_names(model).items():
        base = layer.get_base_layer()
        weight = base.weight.detach().clone()
        layer.merge(adapter_names=["default"])
        trained = base.weight.detach()
        t = module_tensors(tensors, name)
        assert (lycoris_weight(t, weight) - trained).abs().max() <= TOLERANCE, name
        comfy = comfyui_weight(t, weight)
        merged = weight + lora_delta(t, weight)
        rows = lambda w: w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *[1] * (w.dim() - 1))
        # ComfyUI's result is the trained weight times ||W + delta|| / ||W||, row by row
        assert torch.allclose(comfy, trained * rows(merged) / rows(weight), atol=1e-5, rtol=1e-5), name
        comfy_off.append(((comfy - trained).norm() / trained.norm()).item())
        a1111_off.append(((a1111_weight(t, weight) - trained).norm() / trained.norm()).item())
    assert min(comfy_off) > 1e-3 and min(a1111_off) > 1e-2, (comfy_off, a1111_off)


def test_reader_formulas_on_known_numbers():
    """The reader formulas above on a 2x2 weight worked by hand, so they cannot drift into agreeing with Kiln."""
    weight = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    t = {"lora_up.weight": torch.tensor([[1.0], [0.0]]), "lora_down.weight": torch.tensor([[0.0, 1.0]]),
         "alpha": torch.tensor(1.0), "dora_scale": torch.tensor([[10.0], [1.0]])}  # delta: +1 at [0, 1]
    # merged = [[3, 5], [0, 2]]: row norms sqrt(34), 2; base row norms 5, 2; column norms 3, sqrt(29)
    expected_lycoris = torch.tensor([[30 / 34 ** 0.5, 50 / 34 ** 0.5], [0.0, 1.0]])
    expected_comfy = torch.tensor([[6.0, 10.0], [0.0, 1.0]])
    expected_a1111 = torch.tensor([[10.0, 50 / 29 ** 0.5], [0.0, 2 / 29 ** 0.5]])
    assert torch.allclose(lycoris_weight(t, weight), expected_lycoris, atol=1e-6)
    assert torch.allclose(comfyui_weight(t, weight), expected_comfy, atol=1e-6)
    assert torch.allclose(a1111_weight(t, weight), expected_a1111, atol=1e-6)
    assert torch.allclose(comfyui_weight(t, weight, strength=0.5), (weight + expected_comfy) / 2, atol=1e-6)


def test_dora_help_names_the_readers():
    """lora.dora's help, which the UI shows under the DoRA switch, says where DoRA applies as trained."""
    from trainer.config import find_field

    help_text = find_field("lora.dora").help
    assert "Applied as trained by LyCORIS, peft and Kiln" in help_text and "save_diffusers" in help_text
    assert "NOT as trained by ComfyUI today" in help_text and "AUTOMATIC1111" in help_text


def test_metadata_names_the_lycoris_network():
    def network(**kwargs):
        metadata = build_lora_metadata(job_info(**kwargs), "sd15")
        args = metadata.get("ss_network_args")
        return metadata["ss_network_module"], json.loads(args) if args else None

    def job_info(**kwargs):
        from trainer.export import LoraExportInfo

        return LoraExportInfo(output_name="x", rank=4, alpha=2.0, **kwargs)

    assert network() == ("networks.lora", None)
    assert network(network_type="locon", conv_rank=2, conv_alpha=1.0) == \
        ("networks.lora", {"conv_dim": "2", "conv_alpha": "1.0"})
    assert network(network_type="loha", conv_rank=2, conv_alpha=1.0) == \
        ("lycoris.kohya", {"algo": "loha", "conv_dim": "2", "conv_alpha": "1.0"})
    assert network(network_type="lokr", lokr_factor=8) == \
        ("lycoris.kohya", {"algo": "lokr", "factor": "8", "decompose_both": "False"})
    assert network(dora=True) == ("lycoris.kohya", {"algo": "lora", "dora_wd": "True", "wd_on_output": "True"})


def test_options_peft_lacks_are_refused_by_name():
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match=r'lora.dora = true needs lora.type = "lora" or "locon"'):
        job_config({"type": "lokr", "dora": True})
    with pytest.raises(ConfigError, match=r'lora.dropout = 0.1 is not available with lora.type = "loha"'):
        job_config({"type": "loha", "dropout": 0.1})


def test_kohya_lycoris_job_imports_the_network_type(tmp_path):
    from trainer.config import load_job

    job = tmp_path / "kohya.toml"
    job.write_text('version = 0\nmethod = "lora"\npretrained_model_name_or_path = "org/model"\n'
                   'train_data_dir = "/data"\nnetwork_module = "lycoris.kohya"\nnetwork_weights = "old.safetensors"\n'
                   'network_args = ["algo=lokr", "factor=8", "decompose_both=True", "conv_dim=4"]\n')
    cfg = load_job(job)
    assert (cfg.lora.type, cfg.lora.lokr_factor, cfg.lora.lokr_decompose_both) == ("lokr", 8, True)
    assert (cfg.lora.train_conv, cfg.lora.conv_rank) == (True, 4)
    assert cfg.lora.init_weights == str(tmp_path / "old.safetensors")
    job.write_text('version = 0\nmethod = "lora"\npretrained_model_name_or_path = "org/model"\n'
                   'train_data_dir = "/data"\nnetwork_module = "lycoris.kohya"\n'
                   'network_args = ["algo=locon", "dora_wd=True"]\n')  # algo means LyCORIS only with its module
    cfg = load_job(job)
    # LoCon is a LoRA that also adapts conv layers: Kiln writes it as type "lora" with train_conv
    assert (cfg.lora.type, cfg.lora.train_conv, cfg.lora.dora) == ("lora", True, True)
