"""Stable Diffusion 1.x, 2.x and SDXL: UNet denoisers on a DDPM schedule (epsilon or v-prediction), CLIP text
encoders. The facts the engine used to spread over `if arch == "sdxl"` checks, in one place."""
from __future__ import annotations

from .spec import DDPM, FamilySpec, MemoryFacts, TextEncoderSpec

# peft target modules of the UNet's LoRA (Kohya's default: attention and its projections, feed-forward), and
# the 3x3 convs LoCon / lora.conv_rank adds.
_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
_UNET_CONV_TARGETS = ("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv")
_ADAPTER = "trainer.families.sd_adapter:SDAdapter"

CLIP_L = TextEncoderSpec("text_encoder", "tokenizer", "clip-l", "lora_te",
                         single_file_prefix="cond_stage_model.transformer.text_model.", embedding_key="emb_params")


# The UNets' swappable blocks, in run order (tests/test_blockswap.py rebuilds them on the meta device)
_SD15_BLOCKS = (2_255_040, 2_546_240, 2_255_040, 2_546_240, 921_920, 6_558_080, 9_188_480, 8_196_480, 9_188_480,
                3_687_040, 24_584_960, 34_760_960, 31_138_560, 34_760_960, 14_746_880, 31_138_560, 31_138_560,
                31_138_560, 34_760_960, 31_138_560, 49_164_800, 49_164_800, 49_164_800, 14_746_880, 49_164_800,
                34_760_960, 49_164_800, 34_760_960, 40_971_520, 34_760_960, 14_746_880, 16_801_280, 9_188_480,
                12_704_000, 9_188_480, 10_655_360, 9_188_480, 3_687_040, 4_407_040, 2_546_240, 3_382_400,
                2_546_240, 3_382_400, 2_546_240)
_SD2_BLOCKS = (2_255_040, 2_710_080, 2_255_040, 2_710_080, 921_920, 6_558_080, 9_516_160, 8_196_480, 9_516_160,
               3_687_040, 24_584_960, 35_416_320, 31_138_560, 35_416_320, 14_746_880, 31_138_560, 31_138_560,
               31_138_560, 35_416_320, 31_138_560, 49_164_800, 49_164_800, 49_164_800, 14_746_880, 49_164_800,
               35_416_320, 49_164_800, 35_416_320, 40_971_520, 35_416_320, 14_746_880, 16_801_280, 9_516_160,
               12_704_000, 9_516_160, 10_655_360, 9_516_160, 3_687_040, 4_407_040, 2_710_080, 3_382_400,
               2_710_080, 3_382_400, 2_710_080)
_SDXL_BLOCKS = (2_255_040, 2_255_040, 921_920, 6_558_080, 20_832_000, 8_196_480, 20_832_000, 3_687_040,
                24_584_960, 350_840_320, 31_138_560, 350_840_320, 31_138_560, 350_840_320, 31_138_560,
                49_164_800, 350_840_320, 49_164_800, 350_840_320, 40_971_520, 350_840_320, 14_746_880,
                16_801_280, 20_832_000, 12_704_000, 20_832_000, 10_655_360, 20_832_000, 3_687_040, 4_407_040,
                3_382_400, 3_382_400)

SD15 = FamilySpec(
    id="sd15", label="SD 1.x", native_resolution=512, objective=DDPM, denoiser="UNet2DConditionModel",
    class_image_seconds=2.0,  # assumed when no generation was measured (ui/estimates.py)
    denoiser_component="unet", text_encoders=(CLIP_L,), pipeline="StableDiffusionPipeline",
    lora_targets=_UNET_TARGETS, lora_conv_targets=_UNET_CONV_TARGETS,
    ss_base_model_version="sd_v1", modelspec_architecture="stable-diffusion-v1", builtin_tiny=True,
    memory=MemoryFacts(denoiser=859_520_964, fp8_layers=859_320_644, text_encoders=(123_060_480,), vae=83_653_863,
                       native=512, lora_attention=249_216, lora_ff=174_720, lora_conv=578_560,
                       lora_text=(165_888,), embeddings=(37_945_344,), unet_activations=(3.0, 1.0),
                       vae_activations=0.8, text_activations=0.05, text_values=77 * 768,
                       swap_blocks=_SD15_BLOCKS, linear_weights=270_049_280),
    adapter=_ADAPTER,
)

SD2 = FamilySpec(
    id="sd2", label="SD 2.x", native_resolution=768, objective=DDPM, denoiser="UNet2DConditionModel",
    class_image_seconds=4.0,  # assumed when no generation was measured (ui/estimates.py)
    denoiser_component="unet", pipeline="StableDiffusionPipeline",
    text_encoders=(TextEncoderSpec("text_encoder", "tokenizer", "openclip-h", "lora_te",
                                   single_file_prefix="cond_stage_model.model.", embedding_key="emb_params"),),
    lora_targets=_UNET_TARGETS, lora_conv_targets=_UNET_CONV_TARGETS,
    ss_base_model_version="sd_v2", modelspec_architecture="stable-diffusion-v2-512",
    modelspec_architecture_v="stable-diffusion-v2-768-v",
    memory=MemoryFacts(denoiser=865_910_724, fp8_layers=865_710_404, text_encoders=(340_387_840,), vae=83_653_863,
                       native=768, lora_attention=257_408, lora_ff=174_720, lora_conv=578_560,
                       lora_text=(423_936,), embeddings=(50_593_792,), unet_activations=(5.0, 1.6),
                       vae_activations=1.8, text_activations=0.1, text_values=77 * 1024,
                       swap_blocks=_SD2_BLOCKS, linear_weights=301_219_840),
    adapter=_ADAPTER,
)

SDXL = FamilySpec(
    id="sdxl", label="SDXL", native_resolution=1024, objective=DDPM, denoiser="UNet2DConditionModel",
    class_image_seconds=8.0,  # assumed when no generation was measured (ui/estimates.py)
    denoiser_component="unet", pipeline="StableDiffusionXLPipeline",
    text_encoders=(TextEncoderSpec("text_encoder", "tokenizer", "clip-l", "lora_te1",
                                   single_file_prefix="conditioner.embedders.0.transformer.text_model.",
                                   embedding_key="clip_l"),
                   TextEncoderSpec("text_encoder_2", "tokenizer_2", "openclip-g", "lora_te2",
                                   single_file_prefix="conditioner.embedders.1.model.", embedding_key="clip_g")),
    # clip_skip: accepted as before (SDXL reads the penultimate layer whatever it says, as sd-scripts does)
    hidden_layer=-2, pooled_from=1, size_conditioning=True,
    lora_targets=_UNET_TARGETS, lora_conv_targets=_UNET_CONV_TARGETS,
    kohya_original_names=True,  # Kohya's SDXL LoRAs name the original (Stability) UNet modules
    ss_base_model_version="sdxl_base_v1-0", modelspec_architecture="stable-diffusion-xl-v1-base",
    modelspec_implementation="https://github.com/Stability-AI/generative-models", builtin_tiny=True,
    memory=MemoryFacts(denoiser=2_567_463_684, fp8_layers=2_566_875_524, text_encoders=(123_060_480, 694_659_840),
                       vae=83_653_863, native=1024, lora_attention=1_495_040, lora_ff=1_164_800, lora_conv=378_880,
                       lora_text=(165_888, 737_280), embeddings=(37_945_344, 63_242_240),
                       unet_activations=(14.0, 3.0), vae_activations=3.2, text_activations=0.15,
                       text_values=77 * 2048 + 1280,
                       swap_blocks=_SDXL_BLOCKS, linear_weights=2_232_647_680),
    adapter=_ADAPTER,
)
