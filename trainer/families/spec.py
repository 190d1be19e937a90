"""What a model family is, as data: torch-free, so the config checks, `trainer check`, the memory model and the
UI read it without loading anything. Each family's torch side (loading, conditioning, the denoiser call,
pipelines, export names) is its adapter (trainer/families/adapter.py), named here by `adapter` and imported
only when a run needs it.

This module sits below trainer/config in the import order: it imports nothing of Kiln's."""
from __future__ import annotations

from dataclasses import dataclass, field

DDPM, FLOW = "ddpm", "flow"  # the objectives: DDPM epsilon/v-prediction, rectified flow (flow matching)
METHOD_NAMES = ("lora", "dreambooth", "finetune", "textual_inversion")  # schema.METHODS (config imports this module)


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family, in pipeline order."""
    component: str           # diffusers component name: "text_encoder", "text_encoder_2", "text_encoder_3"
    tokenizer: str           # its tokenizer's component name
    kind: str                # "clip-l" | "openclip-h" | "openclip-g" | "t5-xxl"
    kohya_prefix: str        # LoRA key prefix in Kohya's layout: "lora_te", "lora_te1", "lora_te2"
    trainable: bool = True   # whether a LoRA may train it (T5-XXL never: frozen, outputs cached)
    single_file_prefix: str = ""  # where an original single file keeps it ("" when single files lack it)
    embedding_key: str = ""  # its key in a textual-inversion embedding file ("emb_params", "clip_l", "clip_g")
    optional: bool = False   # the model runs without it (SD3's T5: zeros in its place)


@dataclass(frozen=True)
class MemoryFacts:
    """Parameter counts of the full-size model (exact: tests/test_memory.py rebuilds the architectures from
    the bundled configs and counts them) and estimated activations, for trainer/memory.py."""
    denoiser: int
    fp8_layers: int          # denoiser parameters base_quantization = "fp8" stores in fp8 (linear/conv, not norms)
    text_encoders: tuple[int, ...]
    vae: int
    native: int              # native resolution (px)
    # LoRA parameters per unit of rank: attention + projections, feed-forward, 3x3 conv; each text encoder
    lora_attention: int
    lora_ff: int
    lora_conv: int
    lora_text: tuple[int, ...]
    embeddings: tuple[int, ...]  # token-embedding table of each text encoder (textual inversion trains it)
    # Estimated denoiser activations kept for backward, GiB per image at the native size in fp16/bf16,
    # without and with gradient checkpointing; VAE encoder and text encoder activations per image.
    unet_activations: tuple[float, float]
    vae_activations: float
    text_activations: float
    text_values: int         # values of one caption's cached encoder outputs (hidden states + pooled)
    # For the memory savers (trainer/memory.py): the parameters of each block trainer/blockswap.py can swap, in
    # run order (a UNet's resnets, attentions and resamplers; a transformer's blocks), and the weights of the
    # denoiser's linear layers (what base_quantization = "int8" stores in int8); empty / 0 where not counted.
    swap_blocks: tuple[int, ...] = ()
    linear_weights: int = 0

    @property
    def unet(self) -> int:  # the name the memory model used before the family layer (SD's denoiser is a UNet)
        return self.denoiser


@dataclass(frozen=True)
class FamilySpec:
    id: str                          # "sd15" | "sd2" | "sdxl" | "sd3" | "flux" | "chroma"
    label: str                       # "SD 1.x", "Flux.1"
    native_resolution: int           # px; dataset sizes left at 0 follow it
    objective: str                   # DDPM | FLOW
    denoiser: str                    # diffusers class of the denoiser: "UNet2DConditionModel", ...
    denoiser_component: str          # its component name in a diffusers folder: "unet" | "transformer"
    vae_component: str = "vae"
    text_encoders: tuple[TextEncoderSpec, ...] = ()
    latent_channels: int = 4
    # Seconds per generated class image when nothing has measured one (a mid-range CUDA GPU, native size, about 30
    # steps; the UI's preflight card says so); 0 for families that make no class images (no DreamBooth)
    class_image_seconds: float = 0.0
    pipeline: str = ""               # the diffusers pipeline class that samples it
    default_prediction: str = "epsilon"  # "epsilon" | "v_prediction" | "flow"
    # how captions condition the denoiser (the adapter reads these):
    hidden_layer: int = -1           # which hidden state of the CLIP encoders (-1 last, -2 penultimate)
    pooled_from: int | None = None   # index of the encoder whose pooled output conditions too (SDXL: 1)
    size_conditioning: bool = False  # SDXL's original size / crop / target size "time ids"
    clip_skip: bool = True           # whether training.clip_skip means anything (one CLIP encoder, last layer)
    # LoRA: peft target module names of the denoiser and of the trainable text encoders
    lora_targets: tuple[str, ...] = ()
    lora_conv_targets: tuple[str, ...] = ()  # the 3x3 convs LoCon / lora.conv_rank adds (UNets only)
    text_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    # export: Kohya's LoRA layout and the ids sd-scripts writes
    kohya_denoiser_prefix: str = "lora_unet"
    kohya_original_names: bool = False  # keys named after the original (non-diffusers) module names (SDXL)
    ss_base_model_version: str = ""
    modelspec_architecture: str = ""    # modelspec.architecture's base ("stable-diffusion-v1")
    modelspec_architecture_v: str = ""  # the base for a v-prediction model, where it differs
    modelspec_implementation: str = "diffusers"
    # methods: None when supported, else the reason it is refused
    method_refusals: dict[str, str] = field(default_factory=dict)
    builtin_tiny: bool = False       # "builtin:tiny-<id>" names a tiny random model of this family
    memory: MemoryFacts | None = None
    adapter: str = ""                # "module:Class" of the torch-side adapter

    # --- questions the engine asks ------------------------------------------------------------------
    def refusal(self, method: str) -> str | None:
        """Why `method` cannot train this family, or None when it can."""
        return self.method_refusals.get(method)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m in METHOD_NAMES if m not in self.method_refusals)

    @property
    def kohya_v2(self) -> bool:
        """Kohya's --v2 / ss_v2: an SD 2.x model."""
        return self.ss_base_model_version == "sd_v2"

    @property
    def kohya_text_prefixes(self) -> tuple[str, ...]:
        return tuple(te.kohya_prefix for te in self.text_encoders)

    @property
    def trainable_text_encoders(self) -> tuple[int, ...]:
        return tuple(i for i, te in enumerate(self.text_encoders) if te.trainable)

    def modelspec_base(self, prediction_type: str) -> str:
        if prediction_type == "v_prediction" and self.modelspec_architecture_v:
            return self.modelspec_architecture_v
        return self.modelspec_architecture

    def text_layers_used(self, encoder_index: int, num_layers: int, clip_skip: int = 1) -> int:
        """How many of a text encoder's transformer layers, counted from the first, reach the denoiser as the
        adapter reads them. The layers after these get no gradient, so a LoRA on them would be exported as
        all-zero up-weights that only cost loading time."""
        if self.pooled_from == encoder_index:  # its pooled output runs through the final layer
            return num_layers
        if self.hidden_layer != -1:
            return num_layers + 1 + self.hidden_layer
        if self.clip_skip:
            return num_layers - (max(clip_skip, 1) - 1)  # hidden_states[-clip_skip]: this many layers
        return num_layers
