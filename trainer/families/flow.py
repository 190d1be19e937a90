"""SD 3 / 3.5, Flux.1 and Chroma: transformer denoisers trained with rectified flow (flow matching), T5-XXL
text encoding (frozen, outputs cached). Their torch side (tiny models, single-file loading, conditioning,
the denoiser call, Kohya-layout export) is the flow adapters' (trainer/families/sd3/, flux/, chroma/ on trainer/families/dit/).

Refused for now, with the reason a user reads: DreamBooth (with or without prior preservation: its class-image
generation and full fine-tune are SD-only today), fine-tune (the same whole-model training and checkpoint) and textual inversion (an embedding for T5-XXL and the CLIPs
together is a different file nobody reads yet); sd-scripts trains LoRA for these families, as Kiln does."""
from __future__ import annotations

from .spec import FLOW, FamilySpec, MemoryFacts, TextEncoderSpec

_LORA_ONLY = {
    "dreambooth": "DreamBooth (full or LoRA with prior preservation) is not available for {label} yet; train a "
                  "LoRA (method = \"lora\"), which is what sd-scripts trains for this family too",
    "finetune": "a full fine-tune (method = \"finetune\") is not available for {label} yet; train a LoRA "
                "(method = \"lora\") instead",
    "textual_inversion": "textual inversion is not available for {label}: its T5-XXL encoder is frozen and no "
                         "tool reads an embedding file for it; train a LoRA (method = \"lora\") instead",
}


def _refusals(label: str) -> dict[str, str]:
    return {method: why.format(label=label) for method, why in _LORA_ONLY.items()}


T5_XXL = "t5-xxl"
# T5-XXL's linear layers that training.t5_quantization stores quantized (trainer/t5_quantize.py): q, k, v, o and
# wi_0, wi_1 of its 24 layers at width 4096 and feed-forward 10240 (not wo, the embedding or the norms)
T5_XXL_QUANTIZED = 24 * (4 * 4096 * 4096 + 2 * 4096 * 10240)
_T5_TOKEN_VALUES = 4096  # T5-XXL's width

# peft target modules (diffusers names) of the transformer blocks' linear layers: sd-scripts' LoRA for these
# families adapts every linear layer of the blocks (lora_flux.py / lora_sd3.py).
_MMDIT_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                  "ff_context.net.2", "norm1.linear", "norm1_context.linear")
_FLUX_TARGETS = _MMDIT_TARGETS + ("proj_mlp", "proj_out", "norm.linear")
_CHROMA_TARGETS = tuple(t for t in _FLUX_TARGETS if not t.startswith(("norm1", "norm.")))  # modulation is separate


def _sd3_variant(config) -> str:
    """The SD 3 model type sd-scripts puts after "stable-diffusion-3-" (library/sd3_utils.py reads it off the
    MMDiT): no QK norm is SD 3 Medium; QK norm with dual-attention blocks 3.5 Medium; without, 3.5 Large (Large
    Turbo has Large's shape, so it is named Large too)."""
    if "qk_norm" not in config:
        return ""
    if not config["qk_norm"]:
        return "3-medium"
    return "3-5-medium" if config.get("dual_attention_layers") else "3-5-large"


def _flux_variant(config) -> str:
    """dev (distilled guidance: the transformer has a guidance embedding) or schnell (none), as sd-scripts
    names them: "flux-1-dev", "flux-1-schnell"."""
    if "guidance_embeds" not in config:
        return ""
    return "dev" if config["guidance_embeds"] else "schnell"


SD3 = FamilySpec(
    id="sd3", label="SD 3/3.5", native_resolution=1024, objective=FLOW, denoiser="SD3Transformer2DModel",
    denoiser_component="transformer", latent_channels=16, pipeline="StableDiffusion3Pipeline",
    default_prediction="flow", clip_skip=False, hidden_layer=-2, pooled_from=None,
    text_encoders=(TextEncoderSpec("text_encoder", "tokenizer", "clip-l", "lora_te1",
                                   single_file_prefix="text_encoders.clip_l.transformer."),
                   TextEncoderSpec("text_encoder_2", "tokenizer_2", "openclip-g", "lora_te2",
                                   single_file_prefix="text_encoders.clip_g.transformer."),
                   TextEncoderSpec("text_encoder_3", "tokenizer_3", T5_XXL, "lora_te3", trainable=False,
                                   single_file_prefix="text_encoders.t5xxl.transformer.", optional=True)),
    lora_targets=_MMDIT_TARGETS, ss_base_model_version="sd3", modelspec_architecture="stable-diffusion-3",
    modelspec_variant=_sd3_variant,
    modelspec_implementation="https://github.com/Stability-AI/sd3.5", method_refusals=_refusals("SD 3/3.5"),
    # SD 3.5 Large (the memory model's default for this family; see MEMORY_VARIANTS for Medium)
    memory=MemoryFacts(denoiser=8_056_627_520, fp8_layers=8_053_850_112,
                       text_encoders=(123_650_304, 694_659_840, 4_893_906_944), vae=83_821_011, native=1024,
                       lora_attention=1_473_792, lora_ff=4_581_888 - 1_473_792, lora_conv=0,
                       lora_text=(165_888, 737_280, 0), embeddings=(37_945_344, 63_242_240, 131_596_288),
                       unet_activations=(30.0, 2.0), vae_activations=3.2, text_activations=0.6,
                       text_values=(77 + 256) * _T5_TOKEN_VALUES + 2048,
                       swap_blocks=(212_999_680,) * 37 + (136_085_248,), linear_weights=8_053_694_464),
    builtin_tiny=True, adapter="trainer.families.sd3.adapter:SD3Adapter",
)

FLUX = FamilySpec(
    id="flux", label="Flux.1", native_resolution=1024, objective=FLOW, denoiser="FluxTransformer2DModel",
    denoiser_component="transformer", latent_channels=16, pipeline="FluxPipeline", default_prediction="flow",
    clip_skip=False, pooled_from=0,
    text_encoders=(TextEncoderSpec("text_encoder", "tokenizer", "clip-l", "lora_te1"),
                   TextEncoderSpec("text_encoder_2", "tokenizer_2", T5_XXL, "lora_te3", trainable=False)),
    lora_targets=_FLUX_TARGETS, ss_base_model_version="flux1", modelspec_architecture="flux-1",
    modelspec_variant=_flux_variant,
    modelspec_implementation="https://github.com/black-forest-labs/flux", method_refusals=_refusals("Flux.1"),
    memory=MemoryFacts(denoiser=11_901_408_320, fp8_layers=11_898_322_944,
                       text_encoders=(123_060_480, 4_893_906_944), vae=83_821_011, native=1024,
                       lora_attention=2_918_400, lora_ff=5_369_856 - 2_918_400, lora_conv=0,
                       lora_text=(165_888, 0), embeddings=(37_945_344, 131_596_288),
                       unet_activations=(40.0, 2.5), vae_activations=3.2, text_activations=0.6,
                       text_values=512 * _T5_TOKEN_VALUES + 768,
                       swap_blocks=(339_831_296,) * 19 + (141_591_808,) * 38, linear_weights=11_898_322_944),
    builtin_tiny=True, adapter="trainer.families.flux.adapter:FluxAdapter",
)

CHROMA = FamilySpec(
    id="chroma", label="Chroma", native_resolution=1024, objective=FLOW, denoiser="ChromaTransformer2DModel",
    denoiser_component="transformer", latent_channels=16, pipeline="ChromaPipeline", default_prediction="flow",
    clip_skip=False,
    text_encoders=(TextEncoderSpec("text_encoder", "tokenizer", T5_XXL, "lora_te3", trainable=False),),
    lora_targets=_CHROMA_TARGETS, ss_base_model_version="chroma", modelspec_architecture="chroma",
    modelspec_implementation="https://huggingface.co/lodestones/Chroma", method_refusals=_refusals("Chroma"),
    memory=MemoryFacts(denoiser=8_899_983_424, fp8_layers=8_897_888_256, text_encoders=(4_893_906_944,),
                       vae=83_821_011, native=1024, lora_attention=1_634_304, lora_ff=4_085_760 - 1_634_304,
                       lora_conv=0, lora_text=(0,), embeddings=(131_596_288,), unet_activations=(32.0, 2.2),
                       vae_activations=3.2, text_activations=0.6, text_values=512 * _T5_TOKEN_VALUES),
    builtin_tiny=True, adapter="trainer.families.chroma.adapter:ChromaAdapter",
)

# Other sizes of a family, for the memory model (`trainer check` picks one from the model's config when known)
MEMORY_VARIANTS: dict[str, tuple[str, MemoryFacts]] = {
    "sd3.5-medium": ("sd3", MemoryFacts(
        denoiser=2_243_171_520, fp8_layers=2_241_921_024,
        text_encoders=(123_650_304, 694_659_840, 4_893_906_944), vae=83_821_011, native=1024,
        lora_attention=746_496, lora_ff=2_038_272 - 746_496, lora_conv=0, lora_text=(165_888, 737_280, 0),
        embeddings=(37_945_344, 63_242_240, 131_596_288), unet_activations=(14.0, 1.2), vae_activations=3.2,
        text_activations=0.6, text_values=(77 + 256) * _T5_TOKEN_VALUES + 2048)),
}
