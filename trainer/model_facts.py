"""What `check` can learn about the base model without loading a weight: its architecture, its scheduler's
prediction type, its first text encoder's depth and its tokenizer, read from diffusers configs, a safetensors
header (and the configs Kiln stores in its metadata) or the built-in tiny models' settings. inputs.py turns
them into the refusals `run` would otherwise meet only after loading the model (issue 25)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config.schema import BUILTIN_MODELS
from .families import DEFAULT_FAMILY, FAMILIES

# The built-in tiny models' text encoders have 2 layers (trainer/models/tiny.py; a test compares these facts with
# the built models); their schedulers predict what their family does by default.
BUILTIN_TEXT_ENCODER_LAYERS = 2


@dataclass
class ModelFacts:
    arch: str | None                 # a family id (trainer.families); None where the configs do not tell
    prediction_type: str | None      # what prediction_type = "auto" resolves to
    text_encoder_layers: int | None  # the first text encoder's transformer layers (what clip_skip counts)
    tokenizer: Callable[[], Any]     # builds the first tokenizer (transformers), for textual-inversion checks


def model_facts(ref: str, header: tuple[list[str], dict[str, str]] | None = None) -> ModelFacts | None:
    """The facts of a model reference that passed inputs.model_source_problems; None for what only a load can
    tell (hub ids, pickles). `header` is a single file's (tensor names, metadata) when already read."""
    if ref in BUILTIN_MODELS:
        arch = BUILTIN_MODELS[ref]
        return ModelFacts(arch, FAMILIES[arch].default_prediction, BUILTIN_TEXT_ENCODER_LAYERS,
                          lambda: _offline_tokenizer(arch))
    path = Path(ref).expanduser()
    if path.is_dir():
        return _folder_facts(path)
    if path.is_file() and path.suffix.lower() == ".safetensors" and header is not None:
        return _single_file_facts(path, *header)
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _folder_facts(folder: Path) -> ModelFacts:
    from .models.arch import detect_arch_of_source
    from .models.errors import ModelError

    text_encoder = _read_json(folder / "text_encoder" / "config.json")
    try:
        arch = detect_arch_of_source(str(folder))
    except ModelError:
        arch = None

    def tokenizer():
        if (folder / "tokenizer").is_dir():  # the loader reads the folder's own tokenizer when it has one
            from transformers import CLIPTokenizer

            return CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        return _offline_tokenizer(arch or DEFAULT_FAMILY.id)

    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    default = (FAMILIES[arch] if arch else DEFAULT_FAMILY).default_prediction
    return ModelFacts(arch, scheduler.get("prediction_type", default), _layers(text_encoder), tokenizer)


def _single_file_facts(path: Path, names: list[str], metadata: dict[str, str]) -> ModelFacts:
    from .models.arch import detect_arch_from_keys
    from .models.config_dir import bundled_config_files
    from .models.single_file import METADATA_CONFIGS_KEY

    arch = detect_arch_from_keys(names, str(path))  # inputs.py has checked that it passes
    try:  # the loader reads the configs Kiln stored in the file, else the architecture's bundled ones
        files = json.loads(metadata[METADATA_CONFIGS_KEY])
    except (KeyError, ValueError):
        try:
            files = bundled_config_files(arch)
        except (OSError, ValueError):
            files = {}
    files = files if isinstance(files, dict) else {}
    scheduler = files.get("scheduler/scheduler_config.json") or {}
    return ModelFacts(arch, scheduler.get("prediction_type", FAMILIES[arch].default_prediction),
                      _layers(files.get("text_encoder/config.json") or {}), lambda: _offline_tokenizer(arch))


def _layers(text_encoder_config: dict) -> int | None:
    layers = text_encoder_config.get("num_hidden_layers")
    return layers if isinstance(layers, int) and layers > 0 else None


def _offline_tokenizer(arch: str):
    from .models.config_dir import tokenizers_for

    return tokenizers_for(arch)[0]


def in_vocabulary(vocab: dict[str, int], token: str) -> bool:
    """Whether `token` is already a word of a CLIP vocabulary: CLIP has "dog" (a word start) and "dog</w>"
    (the whole word), and lower-cases prompts; any of them means the word exists."""
    return token in vocab or f"{token.lower()}</w>" in vocab or token.lower() in vocab
