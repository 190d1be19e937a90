"""Which job options mean something for which family. An option that does not apply to a job's family is
refused by name with the reason (config/checks.family_problems), in `trainer check` exactly as in `trainer
run`, and the UI hides its field for that family. Torch-free; keyed by the schema's `section.key` names."""
from __future__ import annotations

from .spec import DDPM, FLOW, FamilySpec

# Options of one objective only, and why they mean nothing for the other one.
OBJECTIVE_OPTIONS: dict[str, tuple[str, str]] = {
    "model.prediction_type": (DDPM, "a flow model predicts the velocity noise - image; there is no "
                                    "epsilon / v-prediction choice"),
    "training.min_snr_gamma": (DDPM, "min-SNR weighs each timestep by the signal-to-noise ratio of a DDPM noise "
                                     "schedule; use training.weighting_scheme for flow models"),
    "training.debiased_estimation": (DDPM, "it weighs by the SNR of a DDPM noise schedule"),
    "training.zero_terminal_snr": (DDPM, "it rescales a DDPM noise schedule; rectified flow already ends in "
                                         "pure noise"),
    "training.noise_offset": (DDPM, "the offset-noise trick corrects a DDPM schedule's brightness bias; "
                                    "sd-scripts does not apply it to flow models either"),
    "training.multires_noise_iterations": (DDPM, "pyramid noise is a DDPM-schedule correction"),
    "training.multires_noise_discount": (DDPM, "pyramid noise is a DDPM-schedule correction"),
    "training.ip_noise_gamma": (DDPM, "input perturbation is defined on a DDPM schedule"),
    "training.min_timestep": (DDPM, "flow models draw a continuous sigma, not one of 1000 DDPM timesteps"),
    "training.max_timestep": (DDPM, "flow models draw a continuous sigma, not one of 1000 DDPM timesteps"),
    "training.discrete_flow_shift": (FLOW, "it shifts a flow-matching sigma; DDPM models draw timesteps"),
    "training.sigmoid_scale": (FLOW, "it scales the flow-matching sigma draw"),
    "training.mode_scale": (FLOW, "it shapes the flow-matching 'mode' sigma draw"),
    "training.weighting_scheme": (FLOW, "it weighs flow-matching sigmas; use min_snr_gamma or "
                                        "debiased_estimation for DDPM models"),
    "training.model_prediction_type": (FLOW, "it reads a flow model's velocity output; DDPM models choose "
                                             "model.prediction_type"),
    "training.guidance_scale": (FLOW, "it feeds Flux-dev's guidance embedding"),
}
# Choice values of one objective only.
OBJECTIVE_CHOICES: dict[tuple[str, str], str] = {
    ("training.timestep_sampling", "sigma"): FLOW,
    ("training.timestep_sampling", "shift"): FLOW,
    ("training.timestep_sampling", "flux_shift"): FLOW,
    ("training.timestep_sampling", "mode"): FLOW,
}
_OBJECTIVE_LABEL = {DDPM: "the DDPM objective (SD 1.x, 2.x, SDXL)", FLOW: "rectified flow (SD 3, Flux.1, Chroma)"}


def objective_label(objective: str) -> str:
    return _OBJECTIVE_LABEL[objective]


# Options of the transformer families' own parts: {name: (family ids it applies to, why not elsewhere)}
FAMILY_OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "model.clip_l": (("sd3", "flux"), "its text encoders include no CLIP-L kept as a separate file"),
    "model.clip_g": (("sd3",), "only SD 3/3.5 has a CLIP-G (OpenCLIP bigG) text encoder beside its transformer"),
    "model.t5xxl": (("sd3", "flux", "chroma"), "it has no T5-XXL text encoder"),
    "model.t5_tokenizer": (("sd3", "flux", "chroma"), "it has no T5-XXL text encoder"),
    "training.t5_quantization": (("sd3", "flux", "chroma"), "it has no T5-XXL text encoder to quantize"),
    "lora.train_blocks": (("flux", "chroma"), "only Flux.1 and Chroma have double and single blocks"),
    "lora.train_double_block_indices": (("sd3", "flux", "chroma"), "its denoiser is a UNet, not numbered "
                                                                   "transformer blocks"),
    "lora.train_single_block_indices": (("flux", "chroma"), "only Flux.1 and Chroma have single blocks"),
    "lora.transformer_layers": (("sd3", "flux", "chroma"), "its denoiser is a UNet (lora.train_ff chooses its "
                                                           "layers)"),
}


def option_refusal(name: str, family: FamilySpec) -> str | None:
    """Why option `name` (set away from its default) does not apply to `family`, or None when it does."""
    if name in OBJECTIVE_OPTIONS:
        objective, why = OBJECTIVE_OPTIONS[name]
        if objective != family.objective:
            return f"it belongs to {objective_label(objective)} and {family.label} trains with " \
                   f"{objective_label(family.objective)}: {why}"
    if name in FAMILY_OPTIONS and family.id not in FAMILY_OPTIONS[name][0]:
        return f"{family.label}: {FAMILY_OPTIONS[name][1]}"
    if name == "training.clip_skip" and not family.clip_skip:
        return f"{family.label} does not read an earlier CLIP layer by this setting"
    if name == "training.guidance_scale" and family.id != "flux":
        return "only Flux.1-dev has a guidance embedding"
    if name in ("lora.train_conv", "lora.conv_rank", "lora.conv_alpha") and not family.lora_conv_targets:
        return f"{family.label}'s denoiser is a transformer without 3x3 convolutions"
    if name in ("lora.train_text_encoder", "lora.text_encoder_lr") and not family.trainable_text_encoders:
        return f"{family.label}'s only text encoder is T5-XXL, which stays frozen (its outputs are cached)"
    return None


def choice_refusal(name: str, value: str, family: FamilySpec) -> str | None:
    objective = OBJECTIVE_CHOICES.get((name, value))
    if objective and objective != family.objective:
        return f"it belongs to {objective_label(objective)} and {family.label} trains with " \
               f"{objective_label(family.objective)}"
    return None


def applies(name: str, family: FamilySpec) -> bool:
    """Whether the field `name` means something for `family` (the UI shows it only then)."""
    return option_refusal(name, family) is None
