"""Config folders: the bundled configs of the real architectures, the configs of in-memory components, and the
local folder (model_index.json + component configs + tokenizer files, no weights) that pipelines and
`from_single_file(config=...)` read offline."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import CLIPTokenizer

from ..atomic import write_folder_atomically
from ..families import FAMILIES, FAMILY_IDS, family
from .tokenizers import clip_tokenizer, openclip_tokenizer

BUNDLED_CONFIGS = Path(__file__).parent / "configs"
ARCHES = FAMILY_IDS
TEXT_ENCODER_NAMES = {f.id: [te.component for te in f.text_encoders] for f in FAMILIES.values()}
TOKENIZER_NAMES = {f.id: [te.tokenizer for te in f.text_encoders] for f in FAMILIES.values()}
# the offline CLIP tokenizers by encoder kind (the T5 families' adapters bring their own)
_TOKENIZER_OF_KIND = {"clip-l": clip_tokenizer, "openclip-h": openclip_tokenizer, "openclip-g": openclip_tokenizer}
_CONFIG_FILE = {"scheduler": "scheduler_config.json"}  # every other component keeps its config in config.json


def tokenizers_for(arch: str) -> list[CLIPTokenizer]:
    """Fresh offline tokenizers in pipeline order: CLIP-L pads with <|endoftext|>, OpenCLIP with "!"."""
    return [_TOKENIZER_OF_KIND[te.kind]() for te in family(arch).text_encoders]


def bundled_config_files(arch: str) -> dict[str, dict]:
    """The bundled config files of a real architecture, as {relative path: JSON content}."""
    root = BUNDLED_CONFIGS / arch
    return {p.relative_to(root).as_posix(): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))}


def component_config_files(arch: str, components: Mapping[str, Any]) -> dict[str, dict]:
    """Config files describing in-memory components (a tiny model's, or a fine-tuned model's), in the same
    {relative path: JSON} form as the bundled ones, so they can be written as a config folder."""
    files = {"model_index.json": bundled_config_files(arch)["model_index.json"]}
    spec = family(arch)
    for name in [spec.denoiser_component, spec.vae_component, *TEXT_ENCODER_NAMES[arch], "scheduler"]:
        component = components.get(name)
        if component is None:
            continue
        if hasattr(component, "to_json_string"):  # diffusers models and schedulers
            config = json.loads(component.to_json_string())
        else:  # transformers models
            config = component.config.to_dict()
        files[f"{name}/{_CONFIG_FILE.get(name, 'config.json')}"] = config
        if name == "scheduler":
            files["model_index.json"] = dict(files["model_index.json"], scheduler=["diffusers", config["_class_name"]])
    return files


def _cache_root() -> Path:
    from ..paths import kiln_cache_dir

    return kiln_cache_dir()


def materialize_config_dir(arch: str, files: Mapping[str, dict]) -> Path:
    """A local config folder holding `files` and the architecture's tokenizers. Folders are keyed by content
    in Kiln's cache (KILN_CACHE_DIR, default ~/.cache/kiln), built under a temporary name and renamed in place,
    so concurrent loads never see a half-written folder."""
    digest = hashlib.sha256(json.dumps([arch, files], sort_keys=True).encode()).hexdigest()[:16]
    target = _cache_root() / "configs" / f"{arch}-{digest}"
    if (target / "model_index.json").is_file():
        return target

    def write(folder: Path) -> None:
        for rel, content in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        for name, tokenizer in zip(TOKENIZER_NAMES[arch], tokenizers_for(arch)):
            tokenizer.save_pretrained(folder / name)

    try:
        # A cache, rebuilt whenever it is missing: no fsync needed.
        write_folder_atomically(target, write, durable=False)
    except OSError:
        if not (target / "model_index.json").is_file():  # a concurrent loader did not win the race either
            raise
    return target
