"""What a caption job must do, checked before it is created (and before any model loads): a run that would
skip every image says so instead of loading BLIP for nothing, and a model whose weights are not on this machine
(and cannot be fetched) is named in one line with how to get them, instead of the library's error minutes later.
No torch; huggingface_hub only looks in its cache."""
from __future__ import annotations

import os
from pathlib import Path

import httpx

from trainer.caption import CaptionOptions
from trainer.data import DatasetError, scan_dataset
from trainer.data.settings import dataset_settings

from .labels import label_of

# The files whose presence in the hub cache means a model's weights are on this machine.
NEEDED_FILES = {"blip": ("config.json", "preprocessor_config.json"), "wd14": ("model.onnx", "selected_tags.csv")}
MODEL_NAMES = {"blip": "BLIP", "wd14": "WD14"}
HUB_URL = "https://huggingface.co"


def caption_gate(folder: Path, options: CaptionOptions, hub_reachable=None) -> str | None:
    """Why the caption job should not be created (one line), or None when it has work it can do."""
    if options.method is None:
        return None
    try:
        index = scan_dataset(dataset_settings(folder, caption_extension=options.caption_extension,
                                              enable_bucket=False))
    except DatasetError as exc:
        return f"Nothing to caption: {exc}"
    kept = [item for item in index.items if _has_caption(item, options)]
    if options.mode == "skip-existing" and len(kept) == len(index.items) and not options.edit_kept:
        return (f"Nothing to do: all {len(index.items)} images in {folder.name} already have a caption and "
                f"“{label_of('--mode')}” keeps them; choose overwrite or append to caption them again.")
    return missing_weights(options, hub_reachable or _hub_reachable)


def missing_weights(options: CaptionOptions, hub_reachable) -> str | None:
    """One line when the captioner's weights are neither in a local folder nor in the hub cache, and the hub
    cannot be reached to fetch them."""
    files = NEEDED_FILES.get(options.method or "")
    if not files:
        return None
    model, name, field = options.model_or_default, MODEL_NAMES[options.method], label_of("--model")
    folder = Path(model).expanduser()
    if folder.is_dir():
        lacking = [f for f in files if not (folder / f).is_file()]
        return (f"The {name} folder {folder} lacks {' and '.join(lacking)}: download the model's files into it."
                if lacking and options.method == "wd14" else None)
    if _in_hub_cache(model, files) or hub_reachable():
        return None
    return (f"The {name} weights ({model}) are not on this machine and the hub cannot be reached: on a connected "
            f"machine run `hf download {model} --local-dir {name.lower()}-model`, copy that folder here and give "
            f"its path as “{field}”.")


def _has_caption(item, options: CaptionOptions) -> bool:
    sidecar = item.caption_file or item.path.with_name(item.path.stem + options.caption_extension)
    try:
        return bool(sidecar.read_bytes().decode("utf-8-sig").strip())
    except (OSError, UnicodeDecodeError):
        return False


def _in_hub_cache(repo: str, files: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return all(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    except ValueError:  # not a repo id
        return False


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return False
    try:
        httpx.head(HUB_URL, timeout=3)
        return True
    except httpx.HTTPError:
        return False
