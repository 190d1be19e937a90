"""Kohya_ss configs -> Kiln's version-1 keys: sd-scripts TOML/argument files (train_network.py, train_db.py,
fine_tune.py argument names) and the Kohya GUI's saved .json configs (LoRA, DreamBooth, fine-tune and textual
inversion tabs), which use their own key names (`epoch`, `optimizer`, `max_resolution`, `LoRA_type`, ...) and
write numbers as strings ("0.0001") or whole numbers as floats (64.0).

Every source key leaves one MigrationNote: what it became, or why it was ignored. What Kiln cannot train
(SD3, Flux, iA3, GLoRA, ...) is refused with the key and value named. Like every migration this maps onto the
version-1 key names; the live schema is read only for its section names, which methods use a key, and whether
a key exists at all."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError
from .schema import SECTIONS, find_field
from .values import format_value


class MigrationNote(str):
    """One line about one source key (a str, so it prints and joins like the other notes), with the parts a
    program reads: `key`, `value` and `result` (the Kiln key = value it became, or why it was ignored)."""

    key: str
    value: Any
    result: str

    def __new__(cls, key: str, value: Any, result: str, text: str | None = None):
        # "became" results read `-> lora.rank = 8`; the others (ignored, not yet supported, ...) read `: why`.
        became = re.match(r"[a-z_]+\.[a-z_]+ = ", result)
        text = text or f"Kohya {key} = {format_value(value)}{' -> ' if became else ': '}{result}"
        note = super().__new__(cls, text)
        note.key, note.value, note.result = key, value, result
        return note

    def __reduce__(self):  # pickles (jobs cross process boundaries) and deep-copies with its parts
        return MigrationNote, (self.key, self.value, self.result, str(self))

    def as_dict(self) -> dict[str, Any]:
        return {"source_key": self.key, "value": self.value, "result": self.result}


Converter = Callable[[Any], dict[str, Any]]  # coerced value -> {kiln `section.key`: value}; {} = no equivalent


@dataclass(frozen=True)
class KohyaKey:
    kohya: str
    target: str  # the Kiln key(s) it becomes, for the docs table
    convert: Converter
    type: str = "any"  # how the GUI's strings are coerced first: int, float, bool, str, any


def _to(target: str) -> Converter:
    return lambda value: {target: value}


def _to_choice(target: str, mapping: dict[str, str]) -> Converter:
    """Case-insensitive name mapping; unknown names have no equivalent."""
    return lambda value: ({target: mapping[str(value).lower()]} if str(value).lower() in mapping else {})


def _when_true(target: str, kiln_value: Any) -> Converter:
    return lambda value: {target: kiln_value} if value is True else {}


def _resolution(value: Any) -> dict[str, Any]:
    """Kohya "512,512" / "768,512" / 512 -> one side with the same area, a multiple of 8."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else [value]
    try:
        sides = [int(float(p)) for p in parts]
    except (TypeError, ValueError):
        return {}
    side = sides[0] if len(sides) == 1 else round(math.sqrt(sides[0] * sides[1]) / 8) * 8
    return {"dataset.resolution": side}


def _max_train_epochs(value: Any) -> dict[str, Any]:
    # In Kohya max_train_epochs wins over max_train_steps; Kiln's max_steps = 0 means "use epochs". 0 = unset.
    return {"training.epochs": value, "training.max_steps": 0} if value else {}


def _lr_warmup_percent(value: Any) -> dict[str, Any]:
    return {"training.lr_warmup_ratio": value / 100} if 0 <= value <= 100 else {}


def _kohya_args(value: Any) -> dict[str, str]:
    """["conv_dim=4", "algo=locon"] or the GUI's one string 'conv_dim=4 "algo=locon"' -> {name: text}."""
    items = value if isinstance(value, list) else re.findall(r'"[^"]*"|\S+', value) if isinstance(value, str) else []
    pairs = (str(item).strip('"').split("=", 1) for item in items if "=" in str(item))
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def _network_args(value: Any) -> dict[str, Any]:
    """Kohya network_args ["conv_dim=4", "conv_alpha=1"] -> LoCon settings."""
    pairs = _kohya_args(value)
    out: dict[str, Any] = {}
    try:
        if "conv_dim" in pairs:
            out |= {"lora.train_conv": True, "lora.conv_rank": int(float(pairs["conv_dim"]))}
        if "conv_alpha" in pairs:
            out["lora.conv_alpha"] = float(pairs["conv_alpha"])
    except ValueError:
        return {}
    return out


def _optimizer_args(value: Any) -> dict[str, Any]:
    """Only weight_decay has a Kiln key; the note shows the rest was dropped."""
    try:
        return {"training.weight_decay": float(_kohya_args(value)["weight_decay"])}
    except (KeyError, ValueError):
        return {}


def _save_model_as(value: Any) -> dict[str, Any]:
    text = str(value)
    if text.startswith("diffusers"):
        return {"output.save_diffusers": True}
    return {"output.save_diffusers": False} if text == "safetensors" else {}


def _sample_prompts(value: Any) -> dict[str, Any]:
    """The GUI's prompt box holds the prompt lines; sd-scripts names a prompts file (not read: copy it)."""
    lines = value if isinstance(value, list) else str(value).splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if len(prompts) == 1 and prompts[0].lower().endswith((".txt", ".toml", ".json")) and " " not in prompts[0]:
        return {}
    return {"sample.prompts": prompts} if prompts else {}


def _unet_only(value: Any) -> dict[str, Any]:
    return {"lora.train_text_encoder": not value} if isinstance(value, bool) else {}


# Kohya's optimizer names, lower-cased, -> Kiln's (Kohya writes them with module paths too).
OPTIMIZERS = {"adamw8bit": "adamw8bit", "adamw": "adamw", "lion8bit": "lion8bit", "prodigy": "prodigy",
              "adafactor": "adafactor", "dadaptadam": "dadaptadam", "dadaptation": "dadaptadam",
              "dadaptlion": "dadaptlion", "came": "came", "came_pytorch.came": "came",
              "adamwschedulefree": "adamwschedulefree", "schedulefree.adamwschedulefree": "adamwschedulefree",
              "pagedadamw8bit": "pagedadamw8bit", "prodigyopt.prodigy": "prodigy",
              "bitsandbytes.optim.adamw8bit": "adamw8bit", "torch.optim.adamw": "adamw"}
_SCHEDULERS = {s: s for s in ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear",
                              "polynomial")}
_SAMPLERS = {"euler_a": "euler_a", "k_euler_a": "euler_a", "euler": "euler", "k_euler": "euler",
             "ddim": "ddim", "dpmsolver++": "dpmpp_2m", "k_dpm_2": "dpmpp_2m"}
_PRECISIONS = {"no": "no", "fp16": "fp16", "bf16": "bf16"}

# In application order: a later entry overrides an earlier one that sets the same Kiln key (as in Kohya,
# unet_lr beats learning_rate, optimizer_type beats use_8bit_adam, max_train_epochs beats max_train_steps).
# The GUI's own names sit beside the sd-scripts names they stand for.
KOHYA_KEYS: tuple[KohyaKey, ...] = (
    KohyaKey("pretrained_model_name_or_path", "model.base", _to("model.base"), "str"),
    KohyaKey("v2", "model.arch", _when_true("model.arch", "sd2"), "bool"),
    KohyaKey("sdxl", "model.arch", _when_true("model.arch", "sdxl"), "bool"),
    KohyaKey("v_parameterization", "model.prediction_type", _when_true("model.prediction_type", "v_prediction"),
             "bool"),
    KohyaKey("vae", "model.vae", _to("model.vae"), "str"),
    KohyaKey("train_data_dir", "dataset.dir", _to("dataset.dir"), "str"),
    KohyaKey("image_folder", "dataset.dir", _to("dataset.dir"), "str"),  # GUI fine-tune tab
    KohyaKey("max_resolution", "dataset.resolution", _resolution),
    KohyaKey("resolution", "dataset.resolution", _resolution),
    KohyaKey("caption_extension", "dataset.caption_extension", _to("dataset.caption_extension"), "str"),
    KohyaKey("dataset_repeats", "dataset.repeats", _to("dataset.repeats"), "int"),
    KohyaKey("enable_bucket", "dataset.enable_bucket", _to("dataset.enable_bucket"), "bool"),
    KohyaKey("min_bucket_reso", "dataset.min_bucket_reso", _to("dataset.min_bucket_reso"), "int"),
    KohyaKey("max_bucket_reso", "dataset.max_bucket_reso", _to("dataset.max_bucket_reso"), "int"),
    KohyaKey("bucket_reso_steps", "dataset.bucket_reso_steps", _to("dataset.bucket_reso_steps"), "int"),
    KohyaKey("bucket_no_upscale", "dataset.bucket_no_upscale", _to("dataset.bucket_no_upscale"), "bool"),
    KohyaKey("random_crop", "dataset.random_crop", _to("dataset.random_crop"), "bool"),
    KohyaKey("flip_aug", "dataset.flip", _to("dataset.flip"), "bool"),
    KohyaKey("shuffle_caption", "dataset.shuffle_caption", _to("dataset.shuffle_caption"), "bool"),
    KohyaKey("keep_tokens", "dataset.keep_tokens", _to("dataset.keep_tokens"), "int"),
    KohyaKey("caption_dropout_rate", "dataset.caption_dropout_rate", _to("dataset.caption_dropout_rate"), "float"),
    KohyaKey("epoch", "training.epochs", lambda v: {"training.epochs": v} if v else {}, "int"),
    KohyaKey("max_train_steps", "training.max_steps", _to("training.max_steps"), "int"),
    KohyaKey("max_train_epochs", "training.epochs", _max_train_epochs, "int"),
    KohyaKey("train_batch_size", "training.batch_size", _to("training.batch_size"), "int"),
    KohyaKey("gradient_accumulation_steps", "training.gradient_accumulation_steps",
             _to("training.gradient_accumulation_steps"), "int"),
    KohyaKey("learning_rate", "training.learning_rate", _to("training.learning_rate"), "float"),
    KohyaKey("unet_lr", "training.learning_rate", lambda v: {"training.learning_rate": v} if v else {}, "float"),
    KohyaKey("text_encoder_lr", "training.text_encoder_lr", _to("training.text_encoder_lr"), "float"),
    KohyaKey("learning_rate_te", "training.text_encoder_lr", _to("training.text_encoder_lr"), "float"),
    KohyaKey("lr_scheduler", "training.lr_scheduler", _to_choice("training.lr_scheduler", _SCHEDULERS), "str"),
    KohyaKey("lr_warmup", "training.lr_warmup_ratio", _lr_warmup_percent, "float"),
    KohyaKey("lr_warmup_steps", "training.lr_warmup_steps", _to("training.lr_warmup_steps"), "int"),
    KohyaKey("lr_scheduler_num_cycles", "training.lr_num_cycles",
             lambda v: {"training.lr_num_cycles": v} if v else {}, "int"),
    KohyaKey("lr_scheduler_power", "training.lr_power", lambda v: {"training.lr_power": v} if v else {}, "float"),
    KohyaKey("use_8bit_adam", "training.optimizer", _when_true("training.optimizer", "adamw8bit"), "bool"),
    KohyaKey("optimizer", "training.optimizer", _to_choice("training.optimizer", OPTIMIZERS), "str"),
    KohyaKey("optimizer_type", "training.optimizer", _to_choice("training.optimizer", OPTIMIZERS), "str"),
    KohyaKey("optimizer_args", "training.weight_decay", _optimizer_args),
    KohyaKey("max_grad_norm", "training.max_grad_norm", _to("training.max_grad_norm"), "float"),
    KohyaKey("mixed_precision", "training.mixed_precision", _to_choice("training.mixed_precision", _PRECISIONS),
             "str"),
    KohyaKey("seed", "training.seed", _to("training.seed"), "int"),
    KohyaKey("gradient_checkpointing", "training.gradient_checkpointing", _to("training.gradient_checkpointing"),
             "bool"),
    KohyaKey("cache_latents", "training.cache_latents", _to("training.cache_latents"), "bool"),
    KohyaKey("cache_latents_to_disk", "training.cache_latents_to_disk", _to("training.cache_latents_to_disk"),
             "bool"),
    KohyaKey("cache_text_encoder_outputs", "training.cache_text_encoder_outputs",
             _to("training.cache_text_encoder_outputs"), "bool"),
    KohyaKey("sdxl_cache_text_encoder_outputs", "training.cache_text_encoder_outputs",
             _to("training.cache_text_encoder_outputs"), "bool"),
    KohyaKey("noise_offset", "training.noise_offset", _to("training.noise_offset"), "float"),
    KohyaKey("min_snr_gamma", "training.min_snr_gamma", _to("training.min_snr_gamma"), "float"),
    KohyaKey("clip_skip", "training.clip_skip", lambda v: {"training.clip_skip": v} if v else {}, "int"),
    KohyaKey("num_processes", "training.num_processes", lambda v: {"training.num_processes": v} if v else {},
             "int"),
    KohyaKey("network_dim", "lora.rank", _to("lora.rank"), "int"),
    KohyaKey("network_alpha", "lora.alpha", _to("lora.alpha"), "float"),
    KohyaKey("network_dropout", "lora.dropout", _to("lora.dropout"), "float"),
    KohyaKey("network_train_unet_only", "lora.train_text_encoder", _unet_only, "bool"),
    KohyaKey("network_args", "lora.train_conv, lora.conv_rank, lora.conv_alpha", _network_args),
    KohyaKey("prior_loss_weight", "dreambooth.prior_loss_weight", _to("dreambooth.prior_loss_weight"), "float"),
    KohyaKey("token_string", "textual_inversion.token", _to("textual_inversion.token"), "str"),
    KohyaKey("init_word", "textual_inversion.init_word", _to("textual_inversion.init_word"), "str"),
    KohyaKey("num_vectors_per_token", "textual_inversion.vectors", _to("textual_inversion.vectors"), "int"),
    KohyaKey("use_object_template", "textual_inversion.template",
             _when_true("textual_inversion.template", "object"), "bool"),
    KohyaKey("use_style_template", "textual_inversion.template", _when_true("textual_inversion.template", "style"),
             "bool"),
    KohyaKey("template", "textual_inversion.template",  # GUI TI tab: "object template" / "style template" / caption
             lambda v: {"textual_inversion.template": {"object template": "object", "style template": "style",
                                                       "caption": "captions"}[v.lower()]}
             if str(v).lower() in ("object template", "style template", "caption") else {}, "str"),
    KohyaKey("output_dir", "output.dir", _to("output.dir"), "str"),
    KohyaKey("output_name", "output.name", _to("output.name"), "str"),
    KohyaKey("save_every_n_steps", "output.save_every_n_steps", _to("output.save_every_n_steps"), "int"),
    KohyaKey("save_precision", "output.save_precision",
             _to_choice("output.save_precision", {"float": "fp32", "fp16": "fp16", "bf16": "bf16"}), "str"),
    KohyaKey("save_model_as", "output.save_diffusers", _save_model_as, "str"),
    KohyaKey("sample_prompts", "sample.prompts", _sample_prompts),
    KohyaKey("sample_every_n_steps", "sample.every_n_steps", _to("sample.every_n_steps"), "int"),
    KohyaKey("sample_sampler", "sample.sampler", _to_choice("sample.sampler", _SAMPLERS), "str"),
)
KOHYA_BY_NAME = {k.kohya: k for k in KOHYA_KEYS}

# Kohya keys whose Kiln feature is being built: mapped once Kiln has the key, until then said so.
NOT_YET_SUPPORTED = {
    "reg_data_dir": "regularisation folders (for DreamBooth class images use dreambooth.class_dir)",
    "masked_loss": "masked training", "alpha_mask": "masked training",
    "save_every_n_epochs": "saving per epoch", "sample_every_n_epochs": "sampling per epoch",
    "save_last_n_steps": "keeping the last N saves", "save_last_n_epochs": "keeping the last N saves",
    "sample_at_first": "sampling at the first step",
    "loss_type": "loss types", "huber_c": "Huber loss", "huber_schedule": "Huber loss",
    "min_timestep": "timestep ranges", "max_timestep": "timestep ranges",
    "ip_noise_gamma": "input perturbation noise", "multires_noise_iterations": "multires noise",
    "multires_noise_discount": "multires noise", "debiased_estimation_loss": "debiased estimation",
    "zero_terminal_snr": "zero-terminal-SNR", "use_wandb": "Weights & Biases logging",
    "dora_wd": "DoRA", "factor": "LoKr", "use_tucker": "LyCORIS Tucker decomposition",
    "noise_offset_type": "multires noise",
}
# Values that mean "Kohya's default behaviour", which is Kiln's too: no note for them.
_KOHYA_DEFAULTS = {"loss_type": "l2", "huber_schedule": "snr", "huber_c": 0.1, "min_timestep": 0,
                   "max_timestep": 1000, "noise_offset_type": "Original", "LyCORIS_preset": "full", "factor": -1}
# LoRA_type (GUI) values Kiln can train, and as what; any other type is refused.
_LORA_TYPES = {"standard": "standard", "locon": "locon", "kohya locon": "locon", "lycoris/locon": "locon",
               "lycoris/loha": "LoHa", "lycoris/lokr": "LoKr"}
_REFUSED_SWITCHES = {"sd3": "SD3", "sd3_checkbox": "SD3", "flux1_checkbox": "Flux", "flux1": "Flux"}
_REFUSED_ALGOS = {"ia3": "iA3", "glora": "GLoRA", "dylora": "DyLoRA", "diag-oft": "OFT", "boft": "BOFT",
                  "full": "native fine-tuning"}
_REFUSED_MODULES = {"lora_flux": "Flux", "lora_sd3": "SD3", "dylora": "DyLoRA", "lora_fa": "LoRA-FA",
                    "oft": "OFT"}
IGNORED_HINTS = {
    "dataset_config": "point dataset.dir at the image folder",
    "xformers": "Kiln uses PyTorch's scaled-dot-product attention",
    "mem_eff_attn": "Kiln uses PyTorch's scaled-dot-product attention",
    "sdxl_no_half_vae": "Kiln keeps the VAE in fp32 under fp16",
    "logging_dir": "TensorBoard logs go to the job folder",
    "network_module": "Kiln picks its own LoRA modules",
}
# Why a known key's value could not be used, where there is more to say than "not supported".
_UNMAPPED_VALUE_HINTS = {"sample_prompts": "it names a prompts file; copy its lines into sample.prompts",
                         "optimizer_args": "only weight_decay has a Kiln key"}
# Keys only the GUI writes: their presence means a GUI config, whose numbers may be strings.
GUI_ONLY_KEYS = frozenset({"LoRA_type", "epoch", "max_resolution", "lr_warmup", "optimizer", "sdxl", "conv_dim",
                           "conv_alpha", "learning_rate_te", "image_folder", "dataset_repeats", "template",
                           "flux1_checkbox", "sd3_checkbox", "model_list", "additional_parameters"})


def looks_like_kohya(data: dict[str, Any]) -> bool:
    """Whether a file without a version is a Kohya-style (version 0) file: Kohya keys and no Kiln table."""
    if any(isinstance(data.get(section), dict) for section in SECTIONS[1:]):
        return False
    return any(((k in KOHYA_BY_NAME or k in GUI_ONLY_KEYS) and not isinstance(v, dict))
               or (k.endswith("_arguments") and isinstance(v, dict)) for k, v in data.items())


def coerce(value: Any, kind: str) -> tuple[Any, bool]:
    """(value as `kind`, ok). The GUI writes "0.0001", "64", 64.0, "True"; "" and None mean unset (ok=False,
    value None); a value that cannot be read as `kind` is returned unchanged with ok=False."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, False
    if kind == "bool":
        if isinstance(value, bool):
            return value, True
        text = str(value).strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            return value, False
        return text in ("true", "1", "yes"), True
    if kind in ("int", "float"):
        if isinstance(value, bool):
            return value, False
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            return value, False
        if not isinstance(number, (int, float)) or not math.isfinite(number):
            return value, False
        if kind == "int":
            return (int(number), True) if float(number).is_integer() else (value, False)
        return float(number), True
    if kind == "str":
        return (value, True) if isinstance(value, str) else (value, False)
    return value, True


def _flatten(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Kohya keys, keys already in Kiln's shape). Kohya's `[*_arguments]` tables are flattened."""
    flat: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key.endswith("_arguments"):
            flat.update(value)
        elif key in SECTIONS or key == "method":
            out[key] = value
        elif key != "version":
            flat[key] = value
    return flat, out


def _refusals(flat: dict[str, Any]) -> list[str]:
    """What Kiln cannot train at all, each naming the key and value."""
    problems = []
    for key, what in _REFUSED_SWITCHES.items():
        if coerce(flat.get(key), "bool") == (True, True):
            problems.append(f"Kohya {key} = {format_value(flat[key])}: Kiln trains SD 1.x, SD 2.x and SDXL, "
                            f"not {what}")
    lora_type = flat.get("LoRA_type")
    if isinstance(lora_type, str) and lora_type.lower() not in _LORA_TYPES:
        problems.append(f"Kohya LoRA_type = {format_value(lora_type)}: Kiln cannot train this network type (it "
                        "trains Standard and LoCon LoRAs)")
    module = str(flat.get("network_module") or "")
    algo = _kohya_args(flat.get("network_args")).get("algo", "").lower()
    for name, what in _REFUSED_MODULES.items():
        if module.rsplit(".", 1)[-1] == name:
            problems.append(f"Kohya network_module = {format_value(module)}: Kiln cannot train {what} networks")
    if algo in _REFUSED_ALGOS:
        problems.append(f"Kohya network_args algo = {format_value(algo)}: Kiln cannot train "
                        f"{_REFUSED_ALGOS[algo]} networks")
    for key in ("t5xxl", "clip_l", "flux1_t5xxl", "flux1_clip_l", "ae"):
        if isinstance(flat.get(key), str) and flat[key]:
            problems.append(f"Kohya {key} = {format_value(flat[key])}: a Flux/SD3 text encoder or autoencoder; "
                            "Kiln trains SD 1.x, SD 2.x and SDXL only")
    return problems


def infer_method(flat: dict[str, Any]) -> str:
    if "token_string" in flat:
        return "textual_inversion"
    if "LoRA_type" in flat or any(k.startswith("network_") for k in flat):
        return "lora"
    dreambooth_keys = ("learning_rate_te", "no_token_padding", "reg_data_dir", "prior_loss_weight",
                       "image_folder", "dataset_repeats", "train_text_encoder", "stop_text_encoder_training")
    return "dreambooth" if any(k in flat for k in dreambooth_keys) else ""


def kohya_to_v1(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """A Kohya config as a version-1 Kiln dict, with one note per source key. Raises ConfigError naming each
    key whose value Kiln cannot train."""
    flat, out = _flatten(data)
    problems = [f"{where}: {p}" for p in _refusals(flat)]
    if problems:
        raise ConfigError(problems)
    method = out.get("method") or infer_method(flat)
    notes: list[str] = []
    mapped: dict[str, tuple[str, Any]] = {}  # kiln key -> (kohya key, value); later entries override
    handled: set[str] = set()
    for entry in KOHYA_KEYS:
        if entry.kohya not in flat:
            continue
        value, ok = coerce(flat[entry.kohya], entry.type)
        if value is None:
            handled.add(entry.kohya)  # unset in the file ("" or null): Kiln's default stands
            continue
        converted = entry.convert(value) if ok else {}
        if not converted:
            continue
        handled.add(entry.kohya)
        for target, kiln_value in converted.items():
            if target in mapped and mapped[target][0] != entry.kohya:
                notes.append(MigrationNote(mapped[target][0], flat[mapped[target][0]],
                                           f"replaced by Kohya {entry.kohya} (it takes precedence)",
                                           f"Kohya {entry.kohya} takes precedence over {mapped[target][0]}"))
            mapped[target] = (entry.kohya, kiln_value)
    _implied(flat, method, mapped, notes, handled)
    for target, (kohya, value) in mapped.items():
        section, key = target.split(".")
        table = out.setdefault(section, {})
        shown = f"{target} = {format_value(value)}"
        if find_field(target) is None:  # a Kiln key this branch does not have (yet): noted, not an error
            notes.append(MigrationNote(kohya, flat.get(kohya), f"ignored: {target} is not a key of this Kiln"))
        elif not _used_by(target, method):
            notes.append(MigrationNote(kohya, flat.get(kohya), f"ignored: {target} is not used by method "
                                                               f"{format_value(method)}"))
        elif not isinstance(table, dict) or key in table:
            notes.append(MigrationNote(kohya, flat.get(kohya), f"ignored: the file sets {target} itself",
                                       f"kept {target} from the file; ignored Kohya {kohya} = "
                                       f"{format_value(flat.get(kohya))}"))
        else:
            table[key] = value
            notes.append(MigrationNote(kohya, flat.get(kohya), shown))
    notes += _ignored_notes(flat, handled | {k for k, _ in mapped.values()})
    if "method" not in out and method:
        out["method"] = method
        notes.append(f'method = "{method}" (inferred from the Kohya keys)')
    out["version"] = 1
    return out, notes


def _used_by(target: str, method: str) -> bool:
    field = find_field(target)
    return field is None or not method or method in field.methods


def _implied(flat: dict[str, Any], method: str, mapped: dict[str, tuple[str, Any]], notes: list[str],
             handled: set[str]) -> None:
    """Settings Kohya implies rather than states: the LoRA network type, text-encoder training from the
    learning rates, DreamBooth's text encoder and prior preservation."""
    lora_type = str(flat.get("LoRA_type", "")).lower()
    if "LoRA_type" in flat:
        handled.add("LoRA_type")
        kind = _LORA_TYPES.get(lora_type)
        if kind == "locon":
            conv_dim, _ = coerce(flat.get("conv_dim"), "int")
            conv_alpha, _ = coerce(flat.get("conv_alpha"), "float")
            mapped["lora.train_conv"] = ("LoRA_type", True)
            if conv_dim:
                mapped["lora.conv_rank"] = ("conv_dim", conv_dim)
            if conv_alpha:
                mapped["lora.conv_alpha"] = ("conv_alpha", conv_alpha)
            handled |= {"conv_dim", "conv_alpha"}
        elif kind in ("LoHa", "LoKr"):
            notes.append(MigrationNote("LoRA_type", flat["LoRA_type"], f"not yet supported in Kiln ({kind}); this "
                                       "job trains a standard LoRA of the same rank instead"))
        else:
            mapped["lora.train_conv"] = ("LoRA_type", False)
            handled |= {"conv_dim", "conv_alpha"}  # the GUI writes them for every type; Standard ignores them
    algo = _kohya_args(flat.get("network_args")).get("algo", "").lower()
    if algo in ("loha", "lokr"):  # sd-scripts with LyCORIS: the same network types as the GUI's LoRA_type
        notes.append(MigrationNote("network_args", flat["network_args"], f"not yet supported in Kiln (algo = "
                                   f"{algo}); this job trains a standard LoRA of the same rank instead"))
    if method == "lora" and "network_train_unet_only" not in flat:
        unet_lr, _ = coerce(flat.get("unet_lr"), "float")
        te_lr, _ = coerce(flat.get("text_encoder_lr"), "float")
        if "LoRA_type" in flat:  # the GUI: a 0 text-encoder LR with a UNet LR means UNet only
            trains_te = not (not te_lr and unet_lr)
            reason = "text_encoder_lr" if "text_encoder_lr" in flat else "LoRA_type"
        else:  # sd-scripts trains the text encoder unless network_train_unet_only
            trains_te, reason = True, "network_train_unet_only"
        mapped.setdefault("lora.train_text_encoder", (reason, trains_te))
        if te_lr and not unet_lr and "unet_lr" in flat:
            notes.append(MigrationNote("unet_lr", flat["unet_lr"], "a text-encoder-only LoRA is not supported; "
                                       "Kiln trains the UNet at training.learning_rate as well"))
    if method == "dreambooth":
        stop, ok = coerce(flat.get("stop_text_encoder_training"), "int")
        if ok:
            handled.add("stop_text_encoder_training")
            if stop < 0:
                mapped["dreambooth.train_text_encoder"] = ("stop_text_encoder_training", False)
            elif stop > 0 and flat.keys() & GUI_ONLY_KEYS:
                notes.append(MigrationNote("stop_text_encoder_training", flat["stop_text_encoder_training"],
                                           "ignored: the GUI gives a percentage; set dreambooth.stop_text_encoder_step "
                                           "to the step count"))
            else:
                mapped["dreambooth.stop_text_encoder_step"] = ("stop_text_encoder_training", stop)
        train_te, ok = coerce(flat.get("train_text_encoder"), "bool")  # fine_tune.py's switch
        if ok:
            handled.add("train_text_encoder")
            mapped["dreambooth.train_text_encoder"] = ("train_text_encoder", train_te)
        elif "dreambooth.train_text_encoder" not in mapped:  # train_db.py trains it unless told to stop
            mapped["dreambooth.train_text_encoder"] = ("stop_text_encoder_training", True)
        if not flat.get("reg_data_dir"):
            mapped["dreambooth.prior_preservation"] = ("reg_data_dir", False)


def _ignored_notes(flat: dict[str, Any], used: set[str]) -> list[str]:
    notes = []
    for key, value in flat.items():
        if key in used:
            continue
        off = value in (None, "", False, 0, [], "none", "None") or coerce(value, "float") == (0.0, True)
        if key in _KOHYA_DEFAULTS:
            kind = "float" if isinstance(_KOHYA_DEFAULTS[key], (int, float)) else "str"
            off = off or coerce(value, kind)[0] == _KOHYA_DEFAULTS[key]
        if key in NOT_YET_SUPPORTED:
            if not off:
                notes.append(MigrationNote(key, value, f"not yet supported in Kiln ({NOT_YET_SUPPORTED[key]}); "
                                                       "ignored"))
        elif key in KOHYA_BY_NAME:
            if not off:
                why = _UNMAPPED_VALUE_HINTS.get(key, "a value Kiln does not support")
                notes.append(MigrationNote(key, value, f"ignored: {why}"))
        elif key in IGNORED_HINTS:
            if not off:
                notes.append(MigrationNote(key, value, f"ignored ({IGNORED_HINTS[key]})"))
        elif not off:  # keys the GUI writes as off/empty change nothing: no note
            notes.append(MigrationNote(key, value, "ignored: no Kiln equivalent"))
    return notes
