"""Where a transformers captioner's files are: a local folder (checked for its config and weights), or a hub id
found in the Hugging Face cache or fetchable now. Checked before any model is built, so a missing model on an
offline machine costs one line and no time."""
from __future__ import annotations

from pathlib import Path

from .errors import CaptionError

CONFIG_FILE = "config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def resolve_model_source(model: str, what: str) -> str:
    """The path or hub id to pass to from_pretrained; raises CaptionError (one line) naming the model and what
    to do when its files are not there. `what` names the captioner in the message ("Florence-2")."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / CONFIG_FILE).is_file():
            raise CaptionError(f"{what} model folder {folder} has no {CONFIG_FILE}: save the model there with "
                               "save_pretrained, or give a hub id")
        if not any(path.name.endswith(_WEIGHT_SUFFIXES) for path in folder.iterdir()):
            raise CaptionError(f"{what} model folder {folder} holds no weights (*.safetensors)")
        return str(folder)
    if folder.exists() or model.count("/") != 1:
        raise CaptionError(f"--model {model!r} is neither a model folder nor a hub id like owner/name")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, CONFIG_FILE), str):
        return model  # downloaded before (its weights are checked by from_pretrained)
    if constants.HF_HUB_OFFLINE:
        raise CaptionError(_offline_message(model, what))
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(model, CONFIG_FILE)  # a few KB: proves the hub answers before gigabytes are asked for
    except Exception as error:  # the hub client raises many types (offline, no such repo, gated, HTTP)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CaptionError(f"{_offline_message(model, what)} ({reason})") from None
    return model


def _offline_message(model: str, what: str) -> str:
    return (f"the {what} model {model!r} is not downloaded and the hub cannot be reached (offline?): download it "
            f"once with `hf download {model}` on a connected machine, or pass --model FOLDER")
