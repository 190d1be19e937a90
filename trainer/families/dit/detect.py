"""Which bundled variant of a transformer family a full-size single file is, from its key names alone (the
family itself: trainer/families/detect.py)."""
from __future__ import annotations

from collections.abc import Iterable

DIFFUSION_PREFIX = "model.diffusion_model."  # ComfyUI's and Stability's all-in-one files; BFL's have none


def transformer_keys(keys: Iterable[str]) -> set[str]:
    """The denoiser's key names without the all-in-one prefix (other components' keys dropped)."""
    keys = list(keys)
    if any(k.startswith(DIFFUSION_PREFIX) for k in keys):
        return {k[len(DIFFUSION_PREFIX):] for k in keys if k.startswith(DIFFUSION_PREFIX)}
    return set(keys)


def bundled_variant(family: str, keys: Iterable[str]) -> str:
    """The folder under trainer/models/configs whose configs fit a full-size checkpoint of `family`."""
    names = transformer_keys(keys)
    if family == "flux":
        return "flux-dev" if any(k.startswith("guidance_in.") for k in names) else "flux-schnell"
    if family == "sd3":
        depth = len({k.split(".")[1] for k in names if k.startswith("joint_blocks.")})
        if depth >= 38:
            return "sd35-large"
        return "sd35-medium" if any(".attn2." in k for k in names) else "sd3-medium"
    return family
