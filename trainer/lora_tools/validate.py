"""Is a LoRA file sound, module by module, before any tool computes with it (issue 25: mismatched or missing
halves, partial LoHa/LoKr, zero-rank modules, complex or fp8 tensors and NaN/inf weights made tracebacks or
files of garbage)? Each broken module gets one reason; `inspect` lists them, every other reader refuses them.
Also the tools' numbers and output paths, checked before any work."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

# safetensors dtypes a LoRA tensor may have (others: complex, fp8, integers, bool).
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_LORA = ("lora_down.weight", "lora_up.weight")
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_EXTRA = ("alpha", "dora_scale")


def module_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    """Why one module (its {suffix: tensor}) cannot be used, or None when it is a sound LoRA, LoHa or LoKr."""
    layout = _layout_problem(set(tensors))
    if layout:
        return layout
    for suffix, tensor in tensors.items():
        if tensor.numel() == 0:
            return f"{suffix} has shape {tuple(tensor.shape)}: an empty (zero-rank) tensor"
        if not bool(torch.isfinite(tensor).all()):
            return f"{suffix} holds NaN or infinite values"
    if "alpha" in tensors and tensors["alpha"].numel() != 1:
        return f"alpha has shape {tuple(tensors['alpha'].shape)}; expected one number"
    return _shape_problem(tensors)


def _layout_problem(suffixes: set[str]) -> str | None:
    kinds = [name for name, parts in (("LoRA", _LORA), ("LoHa", _LOHA)) if suffixes & set(parts)]
    if any(s.startswith("lokr_") for s in suffixes):
        kinds.append("LoKr")
    if len(kinds) != 1:
        return ("no LoRA, LoHa or LoKr tensors" if not kinds else
                f"mixes {' and '.join(kinds)} tensors")
    kind = kinds[0]
    if kind == "LoKr":
        # each factor is whole (lokr_wN) or a product (lokr_wN_a @ lokr_wN_b); with neither, the whole is missing
        factored = lambda n: f"{n}_a" in suffixes or f"{n}_b" in suffixes
        expected = {part for n in ("lokr_w1", "lokr_w2")
                    for part in ((f"{n}_a", f"{n}_b") if factored(n) and n not in suffixes else (n,))}
    else:
        expected = set(_LORA if kind == "LoRA" else _LOHA)
    missing, unknown = sorted(expected - suffixes), sorted(suffixes - expected - set(_EXTRA))
    if missing:
        return f"a partial {kind}: {', '.join(missing)} missing"
    if unknown:
        return f"{', '.join(unknown)} is not part of a {kind} module Kiln reads"
    return None


def _shape_problem(t: dict[str, torch.Tensor]) -> str | None:
    def mismatch(a: str, b: str, i: int, j: int) -> str | None:
        if t[a].dim() <= max(i, j) or t[b].dim() <= j or t[a].shape[i] != t[b].shape[j]:
            return (f"{a} {tuple(t[a].shape)} does not fit {b} {tuple(t[b].shape)} (they must share a "
                    "dimension: the rank)")
        return None

    if "lora_down.weight" in t:
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        if down.dim() not in (2, 4) or up.dim() != down.dim():
            return f"lora_down.weight {tuple(down.shape)} and lora_up.weight {tuple(up.shape)} are not a pair"
        return mismatch("lora_up.weight", "lora_down.weight", 1, 0)
    if "hada_w1_a" in t:
        if any(t[k].dim() != 2 for k in _LOHA):
            return "LoHa tensors must be matrices: " + ", ".join(f"{k} {tuple(t[k].shape)}" for k in _LOHA)
        return (mismatch("hada_w1_a", "hada_w1_b", 1, 0) or mismatch("hada_w2_a", "hada_w2_b", 1, 0)
                or mismatch("hada_w1_a", "hada_w2_a", 0, 0) or mismatch("hada_w1_b", "hada_w2_b", 1, 1))
    for factor in ("lokr_w1", "lokr_w2"):
        if f"{factor}_a" in t:
            problem = mismatch(f"{factor}_a", f"{factor}_b", 1, 0)
            if problem:
                return problem
    return None


def require_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """`tensor`, or ModelError naming `what` when it holds NaN or inf: no tool writes such a tensor."""
    from ..models.errors import ModelError

    if not bool(torch.isfinite(tensor).all()):
        raise ModelError(f"{what} would hold NaN or infinite values (weights too large, or a damaged input); "
                         "nothing was written")
    return tensor


def check_rank(option: str, rank: int | None) -> None:
    if rank is not None and rank < 1:
        raise ValueError(f"{option} {rank}: the rank must be at least 1")


def check_dynamic(method: str | None, value: float | None) -> None:
    """sv_ratio keeps s >= s_max / value (value >= 1); sv_fro and sv_cumulative keep a fraction in (0, 1]."""
    from .lowrank import DYNAMIC_METHODS

    if method is None:
        return
    if method not in DYNAMIC_METHODS:
        raise ValueError(f"lora resize --dynamic {method}: unknown method; expected one of {', '.join(DYNAMIC_METHODS)}")
    if method == "sv_ratio" and not (math.isfinite(value) and value >= 1):
        raise ValueError(f"lora resize --dynamic sv_ratio {value:g}: the ratio must be a number of at least 1 (keep "
                         "singular values within that factor of the largest)")
    if method != "sv_ratio" and not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"lora resize --dynamic {method} {value:g}: the fraction must be above 0 and at most 1")


def check_weights(weights: list[float]) -> None:
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise ValueError(f"--weights: {bad[0]:g} is not a finite number")


def check_output(out: Path) -> None:
    """--out must name a file in a folder that exists and takes new files; an existing path must be a plain
    file (--force replaces only files: never a folder, a device or /proc)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, like {out / 'name.safetensors'}")
    if out.exists() and not out.is_file():
        raise ValueError(f"--out {out} is not a regular file (a device or a system file); choose another path")
    folder = out.parent
    if not folder.is_dir():
        raise ValueError(f"--out {out}: the folder {folder} does not exist")
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"--out {out} cannot be replaced (no write permission)")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".kiln-write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"--out {out}: the folder {folder} is not writable ({e.strerror or e})") from None
