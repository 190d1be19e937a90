"""What a job reads and writes outside its own file: the base model (and VAE) it names and the output folder it
fills. `trainer check` and the start of `trainer run` call the same `input_problems`, so check approves exactly
what run accepts, and run refuses before it loads a model or caches a latent.

Cheap by design: a .safetensors file is judged by its header (names, shapes, offsets), never its weights."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .config.job import JobConfig
from .config.schema import BUILTIN_MODELS, HUB_ID, PICKLE_SUFFIXES

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors itself refuses larger headers


def input_problems(cfg: JobConfig, output_dir: Path, state_dir: Path, resume: bool) -> list[str]:
    """Every problem with the job's paths, model sources, what the model's files say against the job's
    settings, the packages the job asks for and the output folder, each one complete line."""
    problems = path_length_problems(cfg)
    if problems:  # the OS refuses such paths ("file name too long") wherever they are touched
        return problems
    problems = model_source_problems(cfg.model.base, "model.base", cfg.model.allow_pickle)
    if cfg.model.vae:
        problems += model_source_problems(cfg.model.vae, "model.vae", allow_pickle=False, vae=True)
    for name in ("clip_l", "clip_g", "t5xxl"):  # text encoders of SD 3 / Flux / Chroma kept as separate files
        ref = str(getattr(cfg.model, name, "") or "")
        if ref:
            problems += _component_file_problems(Path(ref), f"model.{name}")
    if not problems:
        from .model_checks import model_setting_problems

        problems += model_setting_problems(cfg)
    problems += package_problems(cfg)
    problems += output_problems(cfg, output_dir, state_dir, resume)
    return problems


_NAME_MAX, _PATH_MAX = 255, 4096  # bytes per name and per path on Linux (and most file systems)


def path_length_problems(cfg: JobConfig) -> list[str]:
    """Paths the OS would refuse as too long, named by their key before anything touches them."""
    problems = []
    for key, value in _path_values(cfg):
        longest = max(value.split(os.sep), key=lambda name: len(os.fsencode(name)))
        if len(os.fsencode(value)) > _PATH_MAX:
            problems.append(f"{key} is a path of {len(value)} characters; paths may be at most {_PATH_MAX} bytes")
        elif len(os.fsencode(longest)) > _NAME_MAX:
            problems.append(f"{key} = {value[:60]!r}...: the name {longest[:40]!r}... is {len(longest)} characters; "
                            f"file and folder names may be at most {_NAME_MAX} bytes")
    return problems


def _path_values(cfg: JobConfig) -> list[tuple[str, str]]:
    from .config.schema import FIELDS, PATH

    values = [(f.name, cfg.get(f.name)) for f in FIELDS if f.type == PATH or f.model_ref]
    values += [(key, folder) for key, folder in _image_folders(cfg)]
    return [(key, str(value)) for key, value in values if isinstance(value, str) and value]


def package_problems(cfg: JobConfig) -> list[str]:
    """Optional packages the job asks for, found without importing them (import cost, and side effects)."""
    problems = []
    if cfg.training.attention == "xformers" and not _installed("xformers"):
        problems.append('training.attention = "xformers" but the xformers package is not installed; install it '
                        '(.venv/bin/python -m pip install xformers) or use training.attention = "sdpa"')
    if cfg.logging.wandb and not _installed("wandb"):
        problems.append("logging.wandb = true but the wandb package is not installed; install it (.venv/bin/python "
                        "-m pip install wandb, then `wandb login`) or set logging.wandb = false")
    return problems


def _installed(name: str) -> bool:
    """Whether a package can be imported, without importing it. One already imported counts as installed (its
    module may carry no __spec__, which find_spec would raise on); a None entry in sys.modules means "blocked"."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def model_source_problems(ref: str, key: str, allow_pickle: bool, vae: bool = False) -> list[str]:
    """Problems with one model reference (a builtin id, a file, a diffusers folder or a hub id)."""
    if ref.startswith("builtin:"):
        if vae:
            return [f"{key} = {ref!r}: built-in models have no separate VAE; give a VAE file or folder"]
        if ref not in BUILTIN_MODELS:
            return [f"{key} = {ref!r} is not a built-in model (there are {', '.join(BUILTIN_MODELS)})"]
        return []
    path = Path(ref)
    if path.is_dir():
        return _folder_problems(path, key, vae)
    if path.is_file():
        return _file_problems(path, key, allow_pickle, vae)
    if HUB_ID.fullmatch(ref) and not os.path.isabs(ref):
        return []  # a hub id: only the download can tell
    return [f"{key}: model not found: {path} is neither a file nor a folder (nor a hub id like "
            '"stabilityai/stable-diffusion-xl-base-1.0")']


def _folder_problems(folder: Path, key: str, vae: bool) -> list[str]:
    if vae:
        if (folder / "config.json").is_file() or (folder / "vae" / "config.json").is_file():
            return []
        return [f"{key}: {folder} is a folder without config.json or vae/config.json; expected a diffusers VAE"]
    if not (folder / "model_index.json").is_file():
        return [f"{key}: {folder} is a folder without model_index.json; expected a diffusers model folder (or give "
                "the path of a .safetensors file)"]
    try:  # the transformer families keep their denoiser in transformer/, the SD ones in unet/
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        return [f"{key}: {folder}/model_index.json is not readable JSON ({e})"]
    denoiser = "transformer" if isinstance(index, dict) and "transformer" in index else "unet"
    missing = [name for name in (denoiser, "vae") if not (folder / name / "config.json").is_file()]
    if missing:
        return [f"{key}: {folder} has model_index.json but no {' or '.join(f'{m}/config.json' for m in missing)}; "
                "the diffusers folder is incomplete"]
    from .families import FAMILIES
    from .families.folder_parts import family_of_index, missing_text_encoder_problem

    family = family_of_index(index, FAMILIES.values())
    problem = missing_text_encoder_problem(family, folder, index) if family else ""
    return [f"{key}: {problem}"] if problem else []


def _file_problems(path: Path, key: str, allow_pickle: bool, vae: bool) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if allow_pickle:
            return []
        return [f"{key}: {path} is a pickle ({suffix}), and loading a pickle can run any code it contains. Prefer a "
                ".safetensors copy of the model; if you trust this file, set model.allow_pickle = true"]
    if suffix != ".safetensors":
        return [f"{key}: {path}: unknown model file type {suffix!r}; expected .safetensors (or, with "
                f"model.allow_pickle = true, {'/'.join(PICKLE_SUFFIXES)})"]
    try:
        names, _ = safetensors_header(path)
    except ValueError as e:
        return [f"{key}: {path} is not a readable .safetensors file ({e})"]
    if vae:
        return []
    # Imported here: trainer.models loads diffusers, which a job on a built-in model never needs to check.
    from .models.arch import detect_arch_from_keys
    from .models.errors import ModelError

    try:
        detect_arch_from_keys(names, str(path))
    except ModelError as e:
        return [f"{key}: {e}"]
    return []


def _component_file_problems(path: Path, key: str) -> list[str]:
    """A separate text-encoder file: an existing, readable .safetensors (its contents are checked on loading)."""
    if not path.is_file():
        return [f"{key}: {path} is not a file; expected a .safetensors text encoder (e.g. clip_l.safetensors)"]
    if path.suffix.lower() != ".safetensors":
        return [f"{key}: {path}: expected a .safetensors file, not {path.suffix!r}"]
    try:
        safetensors_header(path)
    except ValueError as e:
        return [f"{key}: {path} is not a readable .safetensors file ({e})"]
    return []


def safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """The tensor names and the metadata of a .safetensors file, read from its header alone. Raises ValueError
    saying what is wrong when the header is damaged or the file is shorter than the header says (a truncated
    download)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"only {size} bytes, too short for a header")
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"the header claims {header_len} bytes but the file has {size}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    data_bytes = size - 8 - header_len
    names = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"tensor {name!r} has no valid data_offsets")
        if offsets[1] > data_bytes:
            raise ValueError(f"truncated: tensor {name!r} ends at byte {offsets[1]} of the data but the file holds "
                             f"{data_bytes}")
        names.append(name)
    metadata = header.get("__metadata__")
    return names, {k: v for k, v in metadata.items() if isinstance(v, str)} if isinstance(metadata, dict) else {}


def _image_folders(cfg: JobConfig) -> list[tuple[str, str]]:
    """(key, folder) of every folder the job trains on: dataset.dir, each concept's dir, dataset.reg_dir."""
    folders = [("dataset.dir", cfg.dataset.dir), ("dataset.reg_dir", cfg.dataset.reg_dir)]
    for i, concept in enumerate(cfg.dataset.concepts or []):
        folder = concept.get("dir") if isinstance(concept, dict) else getattr(concept, "dir", "")
        folders.append((f"dataset.concepts[{i + 1}].dir", folder))
    return [(key, folder) for key, folder in folders if folder]


def final_files(cfg: JobConfig, output_dir: Path) -> list[Path]:
    """The files a finished run leaves: NAME.safetensors (and NAME-ema.safetensors with ema_save = "both")."""
    finals = [output_dir / f"{cfg.output.name}.safetensors"]
    if cfg.training.ema and cfg.training.ema_save == "both":
        finals.append(output_dir / f"{cfg.output.name}-ema.safetensors")
    return finals


def output_problems(cfg: JobConfig, output_dir: Path, state_dir: Path, resume: bool) -> list[str]:
    """The output folder must be creatable and writable, must not replace a result without output.overwrite,
    and must not be nested with the dataset (the next run would train on its own samples). `--resume` of a run
    whose final file exists is no problem: that run has finished (the loop says so and trains nothing)."""
    problems = _writable_problems(output_dir)
    for final in final_files(cfg, output_dir):
        if final.exists() and not cfg.output.overwrite and not resume:
            problems.append(f"output: {final} already exists; choose another output.name, or set "
                            "output.overwrite = true to replace it")
    if not resume and not cfg.output.overwrite and _has_states(state_dir):
        problems.append(f"output: {state_dir} holds training states of an earlier run; use --resume to continue "
                        "it, or choose another output.name")
    for key, folder in _image_folders(cfg):
        dataset = Path(folder)
        if _inside(output_dir, dataset):
            problems.append(f"output.dir = {str(output_dir)!r} is inside {key} = {str(dataset)!r}: saved files "
                            "and samples would become training images; put the output elsewhere")
        elif _inside(dataset, output_dir):
            problems.append(f"{key} = {str(dataset)!r} is inside output.dir = {str(output_dir)!r}: saved files "
                            "and samples would become training images; put the output elsewhere")
    dataset = Path(cfg.dataset.dir) if cfg.dataset.dir else None
    class_dirs = {"dreambooth": [("dreambooth.class_dir", cfg.dreambooth.class_dir)]
                  if cfg.dreambooth.prior_preservation else [],
                  "lora": [("dataset.reg_dir", cfg.dataset.reg_dir)]}.get(cfg.method, [])
    for key, class_dir in class_dirs:
        if class_dir and dataset is not None and _inside(Path(class_dir), dataset):
            problems.append(f"{key} = {class_dir!r} is inside dataset.dir = {str(dataset)!r}: class images would "
                            "also be trained on as subject images; keep them in their own folder")
    return problems


def _has_states(state_dir: Path) -> bool:
    if not state_dir.is_dir():
        return False
    from .checkpoint import list_states  # torch is imported only when there is a folder to look at

    return bool(list_states(state_dir))


def _inside(inner: Path, outer: Path) -> bool:
    inner, outer = Path(os.path.realpath(inner)), Path(os.path.realpath(outer))
    return inner == outer or outer in inner.parents


def _writable_problems(folder: Path) -> list[str]:
    """Whether `folder` exists as a folder or can be made, and takes new files: probed by creating one in it
    (or in its nearest existing ancestor), which is the only answer that holds for root and odd mounts."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == folder else f"is under {existing}, which is a file"
        return [f"output.dir = {str(folder)!r} {what}, not a folder; choose a folder for the results"]
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".kiln-write-test-"):
            pass
    except OSError as e:
        where = "" if existing == folder else f" (it would be made inside {existing})"
        return [f"output.dir = {str(folder)!r} is not writable{where}: {e.strerror or e}"]
    return []


def check_inputs(cfg: JobConfig, output_dir: Path, state_dir: Path, resume: bool = False) -> None:
    """Raise ConfigError with every input problem (the one gate both `check` and `run` pass through)."""
    from .config import ConfigError

    problems = input_problems(cfg, output_dir, state_dir, resume)
    if problems:
        raise ConfigError([f"{cfg.source}: {p}" for p in problems])
