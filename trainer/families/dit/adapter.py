"""The torch side shared by the transformer families (SD 3/3.5, Flux.1, Chroma): loading, tiny models, the
caching text conditioner, LoRA targets and export, pipelines. Each family's adapter (flux/adapter.py,
sd3/adapter.py, chroma/adapter.py) says what differs: its layout, its conditioning and its denoiser call."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..adapter import FamilyAdapter
from .single_file import Layout

FILE_KEYS = ("clip_l", "clip_g", "t5xxl", "vae")


class TransformerAdapter(FamilyAdapter):
    layout: Layout
    pipeline_name: str
    loaded_config: dict | None = None

    # --- per family ---------------------------------------------------------------------------------------
    def text_parts(self, model):
        raise NotImplementedError

    def lora_pattern(self, lora_cfg, transformer_config=None) -> str:
        raise NotImplementedError

    # --- models -------------------------------------------------------------------------------------------
    def pipeline_class(self):
        import diffusers
        return getattr(diffusers, self.pipeline_name)

    def save_tiny(self, components, out: Path, fmt: str) -> Path:
        from .tiny_files import write_tiny
        return write_tiny(self.layout, self.pipeline_class(), components, out, fmt)

    def load(self, model_cfg, device, dtype, quantize=None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from ...hashing import file_sha256
        from ...models.loading import BaseModel
        from ...models.tiny import TINY_NOTICE
        from ...quantize_load import quantized_after
        from .components import cast
        from .config_dir import component_configs, materialize
        from .loading import load_components, quantized_transformer

        base = str(model_cfg.base).strip()
        name, digest, notice, note = Path(base).name, "", "", ""
        if base.startswith("builtin:"):
            components = self.make_tiny(seed=0)
            scheduler = components.pop("scheduler")
            config_dir = materialize(self.spec.id, component_configs({**components, "scheduler": scheduler},
                                                                      self.pipeline_name))
            name, notice = base.removeprefix("builtin:"), TINY_NOTICE
            note = quantized_after(quantize.kind, base, "is built in memory") if quantize else ""
        else:
            files = {key: str(getattr(model_cfg, key, "") or "") for key in FILE_KEYS}
            given, note = quantized_transformer(base, dtype, quantize)
            components, config_dir = load_components(self.layout, self.pipeline_class(), base, files, dtype,
                                                     str(getattr(model_cfg, "t5_tokenizer", "") or ""), given)
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(
                json.loads((Path(config_dir) / "scheduler" / "scheduler_config.json").read_text()))
            path = Path(base).expanduser()
            if path.is_file():
                digest = file_sha256(path)
                notice = _file_notice(path)
            elif (path / "README.txt").is_file() and TINY_NOTICE in (path / "README.txt").read_text():
                notice = TINY_NOTICE
        # the block counts that [lora] block indices are checked against (one model per job and process)
        self.loaded_config = dict(components["transformer"].config)
        text_encoders = [components.get(te.component) for te in self.spec.text_encoders]
        tokenizers = [components.get(te.tokenizer) for te in self.spec.text_encoders]
        for model in (components["transformer"], components["vae"], *text_encoders):
            if model is not None:
                cast(model, dtype).to(device=device).eval().requires_grad_(False)
        return BaseModel(arch=self.spec.id, unet=components["transformer"], vae=components["vae"],
                         text_encoders=text_encoders, tokenizers=tokenizers, noise_scheduler=scheduler,
                         prediction_type="flow", name=name, hash=digest, config_dir=Path(config_dir), notice=notice,
                         load_note=note)

    def objective(self, training, model):
        from ...flow_matching import FlowObjective
        return FlowObjective.from_config(training, patch_size=2)  # SD3 patches and Flux packs 2x2 latents

    # --- captions -----------------------------------------------------------------------------------------
    def text_conditioner(self, model, cache: bool, clip_skip: int = 1):
        from .conditioner import FlowTextConditioner
        return FlowTextConditioner(self.text_parts(model), model.tokenizers, model.text_encoders, cache=cache)

    # --- LoRA ---------------------------------------------------------------------------------------------
    def denoiser_lora_config(self, lora_cfg, patterns=({}, {})):
        from ...methods.lora import network_config
        return network_config(lora_cfg, self.lora_pattern(lora_cfg, self.loaded_config), *patterns)

    def export_names(self, model) -> dict[str, str]:
        """Each adapted diffusers module → the original module it is part of (fused ones share a name)."""
        rows = self.layout.rows(model.unet.config)
        return {path: r.original for r in rows for path, _ in r.parts}

    def kohya_tensors(self, model, text_encoders) -> dict[str, torch.Tensor]:
        from .lora_export import kohya_lora_tensors
        encoders = [(te, spec.kohya_prefix) for te, spec in zip(text_encoders, self.spec.text_encoders)
                    if spec.trainable and te is not None]
        return kohya_lora_tensors(model.unet, self.layout.rows(model.unet.config), encoders)

    kohya_network_module = "networks.lora_flux"  # what sd-scripts writes for this family's plain LoRA

    def save_lora(self, path, model, text_encoders, info, dtype):
        from ...export.metadata import build_lora_metadata
        from .lora_export import save_kohya
        metadata = build_lora_metadata(info, self.spec.id)
        if metadata.get("ss_network_module") == "networks.lora":
            metadata["ss_network_module"] = self.kohya_network_module
        return save_kohya(Path(path), self.kohya_tensors(model, text_encoders), metadata, dtype)

    writes_diffusers_lora = True

    def save_lora_diffusers(self, folder, model, text_encoders, dtype) -> Path:
        """diffusers' own LoRA layout (transformer.… / text_encoder.…), for output.save_diffusers."""
        from .lora_export import save_diffusers
        models = {"transformer": model.unet}
        for encoder, spec in zip(text_encoders, self.spec.text_encoders):
            if spec.trainable:
                models[spec.component] = encoder
        return save_diffusers(Path(folder), self.pipeline_class(), models, dtype)

    # --- sampling -----------------------------------------------------------------------------------------
    def pipeline(self, model, scheduler=None):
        parts: dict[str, Any] = dict(transformer=model.unet, vae=model.vae, scheduler=scheduler or model.noise_scheduler)
        for spec, encoder, tokenizer in zip(self.spec.text_encoders, model.text_encoders, model.tokenizers):
            parts[spec.component], parts[spec.tokenizer] = encoder, tokenizer
        return self.pipeline_class()(**parts)


def _file_notice(path: Path) -> str:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("kiln_notice", "")
    except Exception:  # a pickle or an odd file: no notice
        return ""
