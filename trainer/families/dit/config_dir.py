"""Config folders of the transformer families: the component configs (model_index.json + one config per
component, no weights, no tokenizers) that `from_single_file(config=...)` and Kiln's reloads read offline."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...atomic import write_folder_atomically
from ...models.config_dir import _cache_root

_MODELS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def component_configs(components: Mapping[str, Any], pipeline_class: str = "") -> dict[str, dict]:
    """{relative path: JSON} describing in-memory components (a tiny model's), like a diffusers folder's."""
    files: dict[str, dict] = {}
    index: dict[str, Any] = {"_class_name": pipeline_class} if pipeline_class else {}
    for name in (*_MODELS, "scheduler"):
        component = components.get(name)
        if component is None:
            continue
        library = "diffusers" if hasattr(component, "to_json_string") else "transformers"
        config = json.loads(component.to_json_string()) if library == "diffusers" else component.config.to_dict()
        files[f"{name}/{'scheduler_config.json' if name == 'scheduler' else 'config.json'}"] = config
        index[name] = [library, type(component).__name__]
    files["model_index.json"] = index
    return files


def materialize(family: str, files: Mapping[str, dict]) -> Path:
    """A local folder holding `files`, keyed by content in Kiln's cache (built under a temporary name)."""
    digest = hashlib.sha256(json.dumps([family, files], sort_keys=True, default=str).encode()).hexdigest()[:16]
    target = _cache_root() / "configs" / f"{family}-{digest}"
    if (target / "model_index.json").is_file():
        return target

    def write(folder: Path) -> None:
        for rel, content in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(json.dumps(content, indent=2, sort_keys=True, default=str) + "\n")

    try:
        write_folder_atomically(target, write, durable=False)
    except OSError:
        if not (target / "model_index.json").is_file():
            raise
    return target
