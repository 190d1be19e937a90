"""A LoRA file as Kiln's tools read it: Kohya/LyCORIS modules ({suffix: tensor} by module name), what kind of
network it is, and the weight change each module makes (the formulas ComfyUI and A1111 use; kohya_keys.py
writes the same layout)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import torch

from ..families import FAMILIES, SD2, SDXL, family_of_version
from ..models.errors import ModelError

LORA, LOHA, LOKR = "lora", "loha", "lokr"
_ALGO_OF_TENSOR = {"lora_down.weight": LORA, "hada_w1_a": LOHA, "lokr_w1": LOKR, "lokr_w1_a": LOKR}
BASE_MODEL_VERSION = {f.id: f.ss_base_model_version for f in FAMILIES.values()}  # Kohya's ss_base_model_version


@dataclass
class NetworkFile:
    """A LoRA file's modules, by Kohya module name: {tensor suffix: tensor}."""

    path: Path
    modules: dict[str, dict[str, torch.Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # module -> why it cannot be used (validate.py)

    @property
    def algo(self) -> str:
        return next(_ALGO_OF_TENSOR[s] for tensors in self.modules.values() for s in tensors if s in _ALGO_OF_TENSOR)

    @property
    def dora(self) -> bool:
        return any("dora_scale" in tensors for tensors in self.modules.values())

    def rank(self, name: str) -> int | None:
        """The module's rank, or None for a LoKr whose factors are both full (it has no rank)."""
        t = self.modules[name]
        for key in ("lora_down.weight", "hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
            if key in t:
                return int(t[key].shape[0])
        return None

    def alpha(self, name: str) -> float:
        return float(self.modules[name]["alpha"]) if "alpha" in self.modules[name] else float(self.rank(name) or 1)

    @property
    def arch(self) -> str | None:
        """The architecture the metadata names, else the one the text-encoder prefixes imply (None: unknown)."""
        named = family_of_version(self.metadata.get("ss_base_model_version", ""))
        if named is not None:
            return named.id
        if self.metadata.get("ss_v2") == "True":
            return SD2.id
        if any(name.startswith(("lora_te1_", "lora_te2_")) for name in self.modules):  # SDXL's two CLIPs
            return SDXL.id
        return None

    def typical(self) -> tuple[int | None, float]:
        """The most common (rank, alpha): what Kohya's ss_network_dim / ss_network_alpha describe."""
        counts: dict[tuple, int] = defaultdict(int)
        for name in self.modules:
            counts[(self.rank(name), self.alpha(name))] += 1
        return max(counts, key=counts.get)


def read_network_file(path: Path, label: str, strict: bool = True) -> NetworkFile:
    """Read a Kohya/LyCORIS LoRA file; `label` (an option or key name) starts every error message. Every module
    is validated (validate.py): with `strict` a broken one is refused, naming it and why; without (inspect),
    broken modules are set aside in `.broken` with their reasons."""
    from .validate import FLOAT_DTYPES, module_problem

    path = Path(path)
    try:
        is_file = path.is_file()
    except OSError as e:  # a name too long for the file system
        raise ModelError(f"{label}: cannot use {str(path)[:80]}...: {e.strerror}") from None
    if not is_file:
        raise ModelError(f"{label}: {path} does not exist (expected a LoRA .safetensors file)")
    modules: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    broken: dict[str, str] = {}
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                module, _, suffix = key.partition(".")
                dtype = f.get_slice(key).get_dtype()
                if dtype not in FLOAT_DTYPES:  # complex, fp8, integers: not read (torch may not even hold them)
                    broken.setdefault(module, f"{suffix} has dtype {dtype}; expected one of {', '.join(FLOAT_DTYPES)}")
                    continue
                modules[module][suffix] = f.get_tensor(key).float()
    except Exception as e:  # a damaged or non-safetensors file
        raise ModelError(f"{label}: {path} is not a readable .safetensors file ({e})") from e
    lora_like = lambda suffix: suffix.startswith(("lora_", "hada_", "lokr_"))
    if not broken and not any(lora_like(suffix) for tensors in modules.values() for suffix in tensors):
        raise ModelError(f"{label}: {path} holds no LoRA, LoHa or LoKr tensors (Kohya/LyCORIS key layout "
                         "expected, e.g. lora_unet_..._to_q.lora_down.weight)")
    for name, tensors in modules.items():
        if name not in broken and (problem := module_problem(tensors)):
            broken[name] = problem
    healthy = {name: tensors for name, tensors in modules.items() if name not in broken}
    if broken and strict:
        name = sorted(broken)[0]
        raise ModelError(f"{label}: {path} has {len(broken)} broken module(s), e.g. {name}: {broken[name]} (`trainer "
                         "lora inspect FILE` lists them)")
    return NetworkFile(path, healthy, metadata, broken)


def module_delta(tensors: dict[str, torch.Tensor], shape: torch.Size | tuple[int, ...] | None = None) -> torch.Tensor:
    """The weight change of one module, flattened to [out, in*k*k] unless `shape` is given; DoRA's dora_scale
    is not applied here (it needs the base weight: see apply_module)."""
    alpha = float(tensors["alpha"]) if "alpha" in tensors else None
    if "lora_down.weight" in tensors:
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        delta = (up.flatten(1) @ down.flatten(1)) * ((alpha or down.shape[0]) / down.shape[0])
        kernel = down.shape[2:]
    elif "hada_w1_a" in tensors:
        inner = tensors["hada_w1_b"].shape[0]
        delta = (tensors["hada_w1_a"] @ tensors["hada_w1_b"]) * (tensors["hada_w2_a"] @ tensors["hada_w2_b"]) \
            * ((alpha or inner) / inner)
        kernel = ()
    else:
        w1 = tensors["lokr_w1"] if "lokr_w1" in tensors else tensors["lokr_w1_a"] @ tensors["lokr_w1_b"]
        w2 = tensors["lokr_w2"] if "lokr_w2" in tensors else tensors["lokr_w2_a"] @ tensors["lokr_w2_b"]
        inner = next((tensors[k].shape[0] for k in ("lokr_w2_b", "lokr_w1_b") if k in tensors), None)
        kernel = w2.shape[2:]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2) * (alpha / inner if inner and alpha is not None else 1.0)
        delta = delta.flatten(1)
    if shape is not None:
        return delta.reshape(shape)
    return delta if not kernel else delta.reshape(delta.shape[0], -1)


def apply_module(tensors: dict[str, torch.Tensor], weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """`weight` with this module applied at `strength` (DoRA: rescaled per output channel, the norm in fp32)."""
    delta = module_delta(tensors, weight.shape).to(torch.float32)
    merged = weight.float() + delta
    if "dora_scale" in tensors:
        scale = tensors["dora_scale"].float().reshape(weight.shape[0], *[1] * (weight.dim() - 1))
        merged = scale * merged / merged.flatten(1).norm(dim=1).reshape(scale.shape)
        merged = weight.float() + strength * (merged - weight.float())
    else:
        merged = weight.float() + strength * delta
    return merged.to(weight.dtype)
