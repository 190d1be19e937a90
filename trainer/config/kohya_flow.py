"""The Flux.1 / SD 3 / Chroma part of the Kohya import: which family a Kohya file trains (the GUI's
flux1_checkbox / sd3_checkbox, sd-scripts' network_module = networks.lora_flux / lora_sd3, model_type = chroma),
how sd-scripts' flow options read as Kiln's [training] keys, its Flux/SD3 network_args, and what Kiln cannot
train of them (refused by name). The keys that map one to one (clip_l, t5xxl, guidance_scale, ...) are plain
entries of kohya.KOHYA_KEYS; what is here reads several keys together.

sd-scripts reads these options differently per script:
- flux_train_network.py (Flux.1, Chroma): timestep_sampling picks the draw (sigma: the scheduler's sigmas, whose
  density weighting_scheme picks; uniform; sigmoid: sigmoid(sigmoid_scale x N(0,1)); shift; flux_shift), and
  model_prediction_type how the output is read (raw, additive, sigma_scaled: Kiln's training.model_prediction_type;
  sigma_scaled also weighs the loss by weighting_scheme sigma_sqrt / cosmap).
- sd3_train_network.py: weighting_scheme picks the draw's density (logit_normal, mode, uniform) or the loss
  weights (sigma_sqrt, cosmap), and training_shift shifts the draw; discrete_flow_shift is a Flux option."""
from __future__ import annotations

from typing import Any

from ..families import CHROMA, FAMILIES, FLUX, SD3
from ..families.options import choice_refusal, option_refusal
from ..families.spec import FLOW
from .schema import find_field
from .values import format_value

Mapped = dict[str, tuple[str, Any]]  # kiln key -> (kohya key, value), as in kohya.py
Extra = dict[str, list[str]]  # kohya key -> more for its note

# Switches that name the family: kohya key -> family id
FAMILY_SWITCHES = {"flux1_checkbox": FLUX.id, "flux1": FLUX.id, "sd3_checkbox": SD3.id, "sd3": SD3.id}
FAMILY_MODULES = {"lora_flux": FLUX.id, "lora_sd3": SD3.id}  # network_module's last part
_MODEL_TYPES = {"flux": FLUX.id, "chroma": CHROMA.id}  # flux_train_network.py --model_type

# sd-scripts' flux_train_network timestep_sampling -> Kiln's (sigmoid is Kiln's logit_normal at mean 0, std 1)
_FLUX_SAMPLINGS = {"sigma": "sigma", "uniform": "uniform", "sigmoid": "logit_normal", "shift": "shift",
                   "flux_shift": "flux_shift"}
# weighting_scheme as a density of the draw (sd-scripts' compute_density_for_timestep_sampling)
_DENSITIES = {"logit_normal": "logit_normal", "mode": "mode"}
_LOSS_WEIGHTS = ("sigma_sqrt", "cosmap")  # weighting_scheme as per-example loss weights

# Keys read together here (for the docs table): kohya key -> what it becomes
FLOW_IMPLIED_KEYS: tuple[tuple[str, str], ...] = (
    ("flux1_checkbox / sd3_checkbox (GUI)", "model.arch = \"flux\" / \"sd3\""),
    ("network_module = networks.lora_flux / lora_sd3", "model.arch = \"flux\" / \"sd3\""),
    ("model_type = chroma (flux_train_network.py)", "model.arch = \"chroma\""),
    ("timestep_sampling (Flux)", "training.timestep_sampling (sigma, uniform, sigmoid -> logit_normal, shift, "
                                 "flux_shift)"),
    ("weighting_scheme", "Flux: the density of timestep_sampling = sigma (logit_normal, mode); SD 3: "
                         "training.timestep_sampling (logit_normal, mode, uniform) or training.weighting_scheme "
                         "(sigma_sqrt, cosmap)"),
    ("training_shift (SD 3)", "training.discrete_flow_shift with timestep_sampling = \"shift\" (from a "
                              "logit_normal draw at mean 0; logit_std -> training.sigmoid_scale)"),
    ("model_prediction_type", "Flux / Chroma: training.model_prediction_type (raw, additive, sigma_scaled; "
                              "unset: sd-scripts' default sigma_scaled); SD 3: ignored"),
    ("network_args train_blocks / train_double_block_indices / train_single_block_indices (lora_flux), "
     "train_block_indices (lora_sd3)", "lora.train_blocks, lora.train_double_block_indices, "
                                       "lora.train_single_block_indices"),
    ("train_t5xxl (network_args or GUI)", "refused: Kiln keeps T5-XXL frozen"),
)

# Flux/SD3 keys Kiln has no setting for, and why (noted when set)
FLOW_IGNORED_HINTS = {
    "apply_t5_attn_mask": "Kiln encodes captions with T5-XXL's attention mask as the family's pipeline does",
    "t5xxl_max_token_length": "Kiln uses the family's T5 token length (sd-scripts' defaults: 512 Flux-dev, 256 "
                              "schnell and SD 3)",
    "t5xxl_dtype": "set training.t5_quantization (none keeps T5-XXL in the training precision; fp8 keeps an fp8 "
                   "file's weights)",
    "t5xxl_device": "Kiln moves T5-XXL off the GPU after caching its outputs",
    "split_mode": "Kiln trains the whole transformer on one GPU; set training.blocks_to_swap to save memory",
    "cpu_offload_checkpointing": "Kiln keeps checkpointed activations on the GPU; set training.blocks_to_swap "
                                 "to save memory",
    "mem_eff_save": "Kiln saves LoRA files, which are small, the ordinary way",
    "split_qkv": "Kiln trains q, k and v apart (diffusers' layers) and exports them fused as sd-scripts does",
    "flux1_cache_text_encoder_outputs_to_disk": "Kiln caches text-encoder outputs in memory",
    "sd3_cache_text_encoder_outputs_to_disk": "Kiln caches text-encoder outputs in memory",
    "single_blocks_to_swap": "use training.blocks_to_swap (one count for all blocks)",
    "double_blocks_to_swap": "use training.blocks_to_swap (one count for all blocks)",
    "disable_mmap_load_safetensors": "a loading detail with no effect on what trains",
    "highvram": "a loading detail with no effect on what trains",
    "clip_l_dropout_rate": "use dataset.caption_dropout_rate (one rate for all encoders)",
    "clip_g_dropout_rate": "use dataset.caption_dropout_rate (one rate for all encoders)",
    "t5_dropout_rate": "use dataset.caption_dropout_rate (one rate for all encoders)",
    "enable_scaled_pos_embed": "an SD 3.5-Medium multi-resolution option Kiln does not have",
    "pos_emb_random_crop_rate": "an SD 3.5-Medium option Kiln does not have",
    **{key: "per-layer ranks (lora_flux's network_args); Kiln trains every chosen layer at lora.rank" for key in
       ("img_attn_dim", "txt_attn_dim", "img_mlp_dim", "txt_mlp_dim", "img_mod_dim", "txt_mod_dim",
        "single_dim", "single_mod_dim", "in_dims", "emb_dims")},
}
# network_args names of lora_flux / lora_sd3 read here or noted (not LyCORIS options)
# (lora_flux's per-layer ranks, img_attn_dim=..., are left to the "ignored" note of network_args)
FLOW_NETWORK_ARGS = frozenset({"train_blocks", "train_double_block_indices", "train_single_block_indices",
                               "train_block_indices", "train_t5xxl", "split_qkv", "verbose"})


def _on(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _chroma_or(family_id: str, model_type: str) -> str:
    """flux_train_network.py trains Chroma with --model_type chroma."""
    return CHROMA.id if family_id == FLUX.id and model_type == "chroma" else family_id


def flow_family(flat: dict[str, Any], network_args: dict[str, str]) -> tuple[str, str] | None:
    """(family id, the kohya key that says so) for a Flux/SD3/Chroma file, else None."""
    model_type = str(flat.get("model_type") or "").lower()
    for key, family_id in FAMILY_SWITCHES.items():
        if _on(flat.get(key)):
            return _chroma_or(family_id, model_type), key
    module = str(flat.get("network_module") or "").rsplit(".", 1)[-1]
    if module in FAMILY_MODULES:
        family_id = FAMILY_MODULES[module]
        return _chroma_or(family_id, model_type), "network_module"
    if model_type in _MODEL_TYPES and (flat.get("t5xxl") or flat.get("ae")):
        return _MODEL_TYPES[model_type], "model_type"
    return None


def flow_refusals(flat: dict[str, Any], network_args: dict[str, str], found: tuple[str, str] | None,
                  method: str) -> list[str]:
    """What Kiln cannot train of a Flux/SD3 file, each naming the key and value."""
    if found is None:
        return []
    family_id, owner = found
    family = FAMILIES[family_id]
    problems = []
    refusal = family.refusal(method) if method else None
    if refusal:
        problems.append(f"Kohya {owner} = {format_value(flat[owner])} with method = {format_value(method)} (Kohya's "
                        f"{'DreamBooth' if method == 'dreambooth' else method} training): {refusal}")
    for source, value in (("train_t5xxl", flat.get("train_t5xxl")),
                          ("network_args train_t5xxl", network_args.get("train_t5xxl"))):
        if value is not None and _on(value):
            problems.append(f"Kohya {source} = {format_value(value)}: Kiln keeps T5-XXL frozen (its outputs are "
                            "cached); train CLIP-L only (network_train_unet_only = false)")
    return problems


def apply_flow_family(flat: dict[str, Any], network_args: dict[str, str], found: tuple[str, str] | None,
                      mapped: Mapped, handled: set[str], extra: Extra, notes: list[str]) -> None:
    """model.arch from the switch, the timestep options read together, the Flux/SD3 network_args."""
    # FLOW_IGNORED_HINTS are noted with kohya.IGNORED_HINTS; split_qkv = true is what Kiln's export does anyway
    if "split_qkv" in flat:
        handled.add("split_qkv")
        if _on(flat["split_qkv"]):
            extra["split_qkv"] = [FLOW_IGNORED_HINTS["split_qkv"]]
    if found is None:
        return
    family_id, owner = found
    mapped["model.arch"] = (owner, family_id)
    handled.update(k for k in FAMILY_SWITCHES if k in flat)
    handled.update({"model_type", "train_t5xxl", "model_prediction_type"} & flat.keys())
    if family_id == SD3.id:
        _sd3_timesteps(flat, mapped, handled, extra)
    else:
        _flux_timesteps(flat, family_id, mapped, handled, extra, notes)
    _prediction_type(flat, family_id, mapped, extra, notes)
    _flow_blocks(flat, network_args, family_id, mapped, handled, extra)
    _t5_fp8(flat, mapped, extra)


def _t5_fp8(flat: dict[str, Any], mapped: Mapped, extra: Extra) -> None:
    """flux_train_network.py / sd3_train_network.py: with fp8_base (and not fp8_base_unet) T5-XXL is loaded as it
    is stored, so an fp8 t5xxl file stays fp8; fp8_base_unet loads it in the training dtype."""
    if _on(flat.get("fp8_base")) and not _on(flat.get("fp8_base_unet")):
        mapped["training.t5_quantization"] = ("fp8_base", "fp8")
        extra.setdefault("fp8_base", []).append(
            "sd-scripts keeps an fp8 t5xxl file in fp8 and a 16-bit one in 16 bits; Kiln stores T5-XXL's linear "
            "layers in fp8 either way (fp8_base_unet leaves T5 alone)")


def _flux_prediction(flat: dict[str, Any]) -> str:
    """flux_train_network.py's model_prediction_type (its default: sigma_scaled)."""
    return str(flat.get("model_prediction_type") or "sigma_scaled").lower()


def _prediction_type(flat: dict[str, Any], family_id: str, mapped: Mapped, extra: Extra, notes: list[str]) -> None:
    given = flat.get("model_prediction_type") not in (None, "")
    if family_id == SD3.id:
        if given:
            extra["model_prediction_type"] = ["ignored: a flux_train_network.py option; sd3_train_network.py "
                                              "does not read it"]
        return
    prediction = _flux_prediction(flat)
    if prediction not in ("raw", "additive", "sigma_scaled"):
        extra["model_prediction_type"] = ["ignored: Kiln's types are raw, additive, sigma_scaled"]
        return
    mapped["training.model_prediction_type"] = ("model_prediction_type", prediction)
    if not given:
        notes.append("model_prediction_type not set: sd-scripts' default -> training.model_prediction_type = "
                     "\"sigma_scaled\"")


def _drop(mapped: Mapped, extra: Extra, target: str, why: str) -> None:
    if target in mapped:
        owner, value = mapped.pop(target)
        extra.setdefault(owner, []).append(f"ignored: {why}")


def _flux_timesteps(flat: dict[str, Any], family_id: str, mapped: Mapped, handled: set[str], extra: Extra,
                    notes: list[str]) -> None:
    given = "timestep_sampling" in flat and flat["timestep_sampling"] not in (None, "")
    sampling = str(flat.get("timestep_sampling") or "sigma").lower()
    handled.update({"timestep_sampling", "weighting_scheme"} & flat.keys())
    if sampling not in _FLUX_SAMPLINGS:
        extra["timestep_sampling"] = [f"ignored: Kiln's samplings are {', '.join(_FLUX_SAMPLINGS)} (sd-scripts' "
                                      "names)"]
        return
    kiln = _FLUX_SAMPLINGS[sampling]
    scheme = str(flat.get("weighting_scheme") or "none").lower()
    if sampling == "sigma" and scheme in _DENSITIES:
        kiln = _DENSITIES[scheme]
        extra["weighting_scheme"] = [f"training.timestep_sampling = \"{kiln}\" (with timestep_sampling = "
                                     "\"sigma\" sd-scripts draws sigma with this density)"]
    elif scheme in _LOSS_WEIGHTS and _flux_prediction(flat) == "sigma_scaled":
        mapped["training.weighting_scheme"] = ("weighting_scheme", scheme)
    elif scheme not in ("none", "uniform"):
        extra["weighting_scheme"] = ["ignored: sd-scripts weighs the loss only with model_prediction_type = "
                                     "\"sigma_scaled\", and shapes the draw only with timestep_sampling = "
                                     "\"sigma\""]
    if kiln != "logit_normal" or sampling == "sigmoid":  # logit_mean/std shape only the sigma draw's density
        for target in ("training.logit_mean", "training.logit_std"):
            _drop(mapped, extra, target, "sd-scripts uses it only with timestep_sampling = \"sigma\" and "
                                         "weighting_scheme = \"logit_normal\"")
    if kiln != "mode":
        _drop(mapped, extra, "training.mode_scale", "sd-scripts uses it only with weighting_scheme = \"mode\"")
    if sampling not in ("sigmoid", "shift", "flux_shift"):
        _drop(mapped, extra, "training.sigmoid_scale", "sd-scripts uses it only with timestep_sampling sigmoid, "
                                                       "shift or flux_shift")
    mapped["training.timestep_sampling"] = ("timestep_sampling", kiln)
    shift = mapped.get("training.discrete_flow_shift", (None, 3.0))[1]
    if sampling == "sigma" and shift != 1.0:
        extra.setdefault("timestep_sampling", []).append(
            "sd-scripts shifts this draw by discrete_flow_shift (its scheduler's sigmas); Kiln shifts only with "
            "timestep_sampling = \"shift\"")
    if not given:
        notes.append(f"timestep_sampling not set: sd-scripts' default \"sigma\" -> training.timestep_sampling = "
                     f"\"{kiln}\"")
    if family_id == FLUX.id and "guidance_scale" not in flat:
        mapped["training.guidance_scale"] = ("guidance_scale", 3.5)
        notes.append("guidance_scale not set: sd-scripts' default 3.5 -> training.guidance_scale = 3.5")


def _sd3_timesteps(flat: dict[str, Any], mapped: Mapped, handled: set[str], extra: Extra) -> None:
    scheme = str(flat.get("weighting_scheme") or "uniform").lower()
    handled.update({"weighting_scheme", "training_shift", "timestep_sampling"} & flat.keys())
    _drop(mapped, extra, "training.discrete_flow_shift", "a Flux option; sd-scripts' SD 3 shifts by training_shift")
    if "timestep_sampling" in flat:
        extra["timestep_sampling"] = ["ignored: sd3_train_network.py draws by weighting_scheme"]
    if scheme in _LOSS_WEIGHTS:
        kiln, weighting = "uniform", scheme
    else:
        kiln, weighting = _DENSITIES.get(scheme, "uniform"), "none"
    if kiln != "logit_normal":
        for target in ("training.logit_mean", "training.logit_std"):
            _drop(mapped, extra, target, "sd-scripts uses it only with weighting_scheme = \"logit_normal\"")
    if kiln != "mode":
        _drop(mapped, extra, "training.mode_scale", "sd-scripts uses it only with weighting_scheme = \"mode\"")
    _drop(mapped, extra, "training.sigmoid_scale", "a Flux timestep option; sd-scripts' SD 3 does not read it")
    shift = _number(flat.get("training_shift"), 1.0)
    mean = mapped.get("training.logit_mean", (None, 0.0))[1]
    if shift != 1.0 and kiln == "logit_normal" and mean == 0.0:
        # sigmoid(N(0, std)) shifted: Kiln's "shift" draw, with the std as its sigmoid_scale
        std_owner, std = mapped.pop("training.logit_std", ("logit_std", 1.0))
        mapped["training.timestep_sampling"] = ("weighting_scheme", "shift")
        mapped["training.discrete_flow_shift"] = ("training_shift", shift)
        if std != 1.0:
            mapped["training.sigmoid_scale"] = (std_owner, std)
        elif std_owner in flat:
            extra.setdefault(std_owner, []).append("the shifted draw's scale: Kiln's sigmoid_scale, 1.0 already")
        return
    if shift != 1.0:
        extra["training_shift"] = ["ignored: Kiln shifts only a logit-normal draw at mean 0 (weighting_scheme = "
                                   "\"logit_normal\", logit_mean = 0)"]
    mapped["training.timestep_sampling"] = ("weighting_scheme", kiln)
    if weighting != "none":
        mapped["training.weighting_scheme"] = ("weighting_scheme", weighting)


def _flow_blocks(flat: dict[str, Any], network_args: dict[str, str], family_id: str, mapped: Mapped,
                 handled: set[str], extra: Extra) -> None:
    """lora_flux's train_blocks / block indices and lora_sd3's train_block_indices, from network_args or the
    GUI's own keys (the GUI's win: it writes them after network_args)."""
    names = {"train_blocks": "lora.train_blocks", "train_double_block_indices": "lora.train_double_block_indices",
             "train_single_block_indices": "lora.train_single_block_indices",
             "train_block_indices": "lora.train_double_block_indices"}
    for source, settings in (("network_args", network_args), (None, flat)):
        for name, target in names.items():
            value = settings.get(name)
            if value in (None, ""):
                continue
            owner = source or name
            text = str(value).strip().lower()
            if source is None:
                handled.add(name)
            if name == "train_blocks" and text not in ("all", "double", "single"):
                extra.setdefault(owner, []).append(f"ignored: train_blocks = {format_value(value)} (all, double or "
                                                   "single)")
            elif name != "train_blocks" and text == "all":
                continue  # sd-scripts' "all" is Kiln's empty default
            else:
                mapped[target] = (owner, text if name == "train_blocks" else str(value).strip())


def drop_inapplicable(family_id: str, mapped: Mapped, extra: Extra) -> None:
    """Kohya files carry every option of every family (the GUI writes guidance_scale for an SD 1.5 LoRA and
    min_snr_gamma for a Flux one); sd-scripts' script for the family reads only its own. An option set away from
    Kiln's default that does not apply to the family is ignored here with the reason, rather than refused later
    by the family check."""
    family = FAMILIES[family_id]
    if family.objective != FLOW:  # Kiln's DDPM logit_normal draw has these too; sd-scripts' SD scripts do not
        for target in ("training.logit_mean", "training.logit_std"):
            _drop(mapped, extra, target, "sd-scripts reads it for SD 3 and Flux.1 only")
    for target in list(mapped):
        owner, value = mapped[target]
        field = find_field(target)
        if field is None or target == "model.arch" or value == field.default:
            continue
        why = option_refusal(target, family)
        if why is None and isinstance(value, str):
            why = choice_refusal(target, value, family)
        if why:
            mapped.pop(target)
            extra.setdefault(owner, []).append(f"ignored: {target} does not apply to {family.label} ({why})")
