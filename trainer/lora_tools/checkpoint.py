"""Single-file checkpoints, one tensor at a time: which Kohya LoRA module changes which checkpoint weight (and
which rows of it: OpenCLIP fuses q/k/v into one in_proj_weight), and a streaming safetensors rewrite so a merge
never holds more than one weight of the model in memory."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import safetensors
import torch

from ..atomic import write_atomically
from ..export.kohya_keys import TEXT_ENCODER_PREFIXES as KOHYA_TE
from ..export.kohya_keys import kohya_module_name as _kohya
from ..families import family
from ..models.arch import detect_arch_from_keys
from ..models.config_dir import bundled_config_files
from ..models.errors import ModelError
from ..models.safetensors_stream import DTYPES_BY_NAME, header_for_layout, write_tensor_bytes
from ..models.single_file import (METADATA_CONFIGS_KEY, OPENCLIP_PREFIXES, TEXT_ENCODER_PREFIXES, UNET_PREFIX,
                                  unet_module_names)

_OPENCLIP_TO_TRANSFORMERS = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_CLIP_LAYER = re.compile(r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
_OPENCLIP_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.(attn\.in_proj|attn\.out_proj|mlp\.c_fc|mlp\.c_proj)$")


@dataclass(frozen=True)
class Target:
    """Rows [start, stop) of checkpoint weight `key` are Kohya module `module`'s weight (None: all rows)."""
    key: str
    rows: tuple[int, int] | None = None


class Checkpoint:
    """An original-layout .safetensors checkpoint, opened lazily."""

    def __init__(self, path: Path, label: str):
        self.path = Path(path)
        if not self.path.is_file() or self.path.suffix.lower() != ".safetensors":
            raise ModelError(f"{label}: {self.path} is not a .safetensors checkpoint file")
        try:
            with safetensors.safe_open(str(self.path), "pt") as f:
                self.metadata = f.metadata() or {}
                self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                self.dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        except Exception as e:
            raise ModelError(f"{label}: {self.path} is not a readable .safetensors file ({e})") from e
        self.arch = detect_arch_from_keys(self.shapes, str(self.path))

    def tensor(self, key: str) -> torch.Tensor:
        with safetensors.safe_open(str(self.path), "pt") as f:
            return f.get_tensor(key)

    def lora_targets(self) -> dict[str, Target]:
        """Kohya module name -> where its weight lives in this checkpoint, for every LoRA-able layer: every
        UNet Linear/Conv2d weight and the text encoders' attention and MLP projections."""
        targets: dict[str, Target] = {}
        # Kohya names SDXL modules after the original layout (the file's own), SD 1.x/2.x after diffusers'
        original_names = family(self.arch).kohya_original_names
        original_to_diffusers = {} if original_names else \
            {orig: name for name, orig in unet_module_names(self._meta_unet()).items()}
        for key, shape in self.shapes.items():
            if key.startswith(UNET_PREFIX) and key.endswith(".weight") and len(shape) in (2, 4):
                module = key[len(UNET_PREFIX):-len(".weight")]
                name = module if original_names else original_to_diffusers.get(module)
                if name is not None:
                    targets[_kohya("lora_unet", name)] = Target(key)
        for prefix, kohya in zip(TEXT_ENCODER_PREFIXES[self.arch], KOHYA_TE[self.arch]):
            for key, shape in self.shapes.items():
                if not key.startswith(prefix):
                    continue
                rest = key[len(prefix):]
                if prefix in OPENCLIP_PREFIXES:
                    targets.update(_openclip_targets(key, rest, shape, kohya))
                elif rest.endswith(".weight") and _CLIP_LAYER.match(rest[:-len(".weight")]):
                    targets[_kohya(kohya, "text_model." + rest[:-len(".weight")])] = Target(key)
        return targets

    def _meta_unet(self):
        """The UNet's module tree without weights (meta device), to learn its diffusers module names."""
        from diffusers import UNet2DConditionModel

        files = json.loads(self.metadata[METADATA_CONFIGS_KEY]) if METADATA_CONFIGS_KEY in self.metadata \
            else bundled_config_files(self.arch)
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(files["unet/config.json"])


def _openclip_targets(key: str, rest: str, shape, kohya: str) -> dict[str, Target]:
    # in_proj is a bare parameter (in_proj_weight); the others are Linear modules (.weight)
    module = rest.removesuffix("_weight") if rest.endswith("in_proj_weight") else rest.removesuffix(".weight")
    match = _OPENCLIP_LAYER.match(module) if module != rest else None
    if not match:
        return {}
    index, part = match.groups()
    layer = f"text_model.encoder.layers.{index}."
    if part == "attn.in_proj":
        d = shape[0] // 3
        return {_kohya(kohya, f"{layer}self_attn.{p}_proj"): Target(key, (i * d, (i + 1) * d))
                for i, p in enumerate("qkv")}
    return {_kohya(kohya, layer + _OPENCLIP_TO_TRANSFORMERS[part]): Target(key)}


def rewrite_checkpoint(source: Checkpoint, out: Path, change: Callable[[str, torch.Tensor], torch.Tensor],
                       metadata: dict[str, str]) -> Path:
    """Write `source` to `out` with every tensor passed through change(key, tensor), one tensor in memory at a
    time: the header comes from the source's shapes and dtypes, then each changed tensor is written in turn."""
    keys = sorted(source.shapes)
    header = header_for_layout(((key, tuple(source.shapes[key]), DTYPES_BY_NAME[source.dtypes[key]]) for key in keys),
                               metadata)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f, safetensors.safe_open(str(source.path), "pt") as src:
            f.write(header)
            for key in keys:
                original = src.get_tensor(key)
                tensor = change(key, original).to(original.dtype)
                if tuple(tensor.shape) != source.shapes[key]:
                    raise ModelError(f"internal: {key} changed shape while merging")
                write_tensor_bytes(f, tensor)

    return write_atomically(out, write)
