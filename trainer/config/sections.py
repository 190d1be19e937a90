"""The sections of a job, one typed dataclass each. Generated from trainer/config/schema.py by
`.venv/bin/python -m trainer.config.docs`; do not edit (a test compares it with the schema)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelSection:
    """[model] The base model to train on."""
    base: str = ""
    arch: str = "auto"  # one of auto, sd15, sd2, sdxl, sd3, flux, chroma
    prediction_type: str = "auto"  # one of auto, epsilon, v_prediction
    vae: str = ""
    clip_l: str = ""
    clip_g: str = ""
    t5xxl: str = ""
    t5_tokenizer: str = ""
    allow_pickle: bool = False


@dataclass
class DatasetSection:
    """[dataset] The training images, their captions and how they are bucketed and augmented."""
    dir: str = ""
    resolution: int = 0
    caption_extension: str = ".txt"
    repeats: int = 1
    default_caption: str = ""
    enable_bucket: bool = True
    min_bucket_reso: int = 0
    max_bucket_reso: int = 0
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    full_batches: bool = False
    random_crop: bool = False
    flip: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    concepts: list[dict] = field(default_factory=list)
    reg_dir: str = ""
    masked_training: bool = False
    unmasked_weight: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    keep_tokens_separator: str = ""
    wildcards: bool = False
    reg_prompt: str = ""
    reg_images_per_image: int = 0


@dataclass
class TrainingSection:
    """[training] Steps, batch, optimizer, learning-rate schedule, precision and memory savers."""
    max_steps: int = 0
    epochs: int = 1
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 0.0001
    text_encoder_lr: float = 0.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_num_cycles: int = 1
    lr_power: float = 1.0
    optimizer: str = "adamw8bit"
    lr_warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    mixed_precision: str = "fp16"  # one of fp16, bf16, no
    seed: int = 42
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    cache_latents_to_disk: bool = False
    cache_text_encoder_outputs: bool = True
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0
    clip_skip: int = 1
    num_processes: int = 1
    loss: str = "l2"  # one of l2, l1, huber, smooth_l1
    huber_c: float = 0.1
    huber_schedule: str = "snr"  # one of constant, exponential, snr
    min_timestep: int = 0
    max_timestep: int = 1000
    timestep_sampling: str = "uniform"  # one of uniform, logit_normal, sigma, shift, flux_shift, mode
    logit_mean: float = 0.0
    logit_std: float = 1.0
    discrete_flow_shift: float = 3.0
    sigmoid_scale: float = 1.0
    mode_scale: float = 1.29
    weighting_scheme: str = "none"  # one of none, sigma_sqrt, cosmap
    model_prediction_type: str = "raw"  # one of raw, additive, sigma_scaled
    guidance_scale: float = 1.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float = 0.0
    debiased_estimation: bool = False
    zero_terminal_snr: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    ema_every_n_steps: int = 1
    ema_on_cpu: bool = True
    ema_save: str = "ema"  # one of ema, both
    cpu_mixed_precision: bool = False
    attention: str = "sdpa"  # one of sdpa, xformers
    channels_last: bool = False
    tf32: bool = True
    cudnn_benchmark: bool = False
    fused_optimizer: bool = True
    torch_compile: bool = False
    base_quantization: str = "none"  # one of none, fp8, int8, nf4
    t5_quantization: str = "none"  # one of none, fp8, int8, nf4
    blocks_to_swap: int = 0
    fit: str = "off"  # one of off, auto
    gpu_memory_gib: float = 0.0


@dataclass
class LoraSection:
    """[lora] LoRA network shape (Kohya's network_* arguments). Used by LoRA and by DreamBooth-LoRA."""
    rank: int = 16
    alpha: float = 8.0
    train_text_encoder: bool = False
    dropout: float = 0.0
    train_ff: bool = False
    train_conv: bool = False
    conv_rank: int = 0
    conv_alpha: float = 0.0
    train_blocks: str = "all"  # one of all, double, single
    train_double_block_indices: str = ""
    train_single_block_indices: str = ""
    transformer_layers: list[str] = field(default_factory=lambda: ['attn', 'mlp', 'mod'])
    type: str = "lora"  # one of lora, locon, loha, lokr
    dora: bool = False
    lokr_factor: int = -1
    lokr_decompose_both: bool = False
    init_weights: str = ""


@dataclass
class DreamboothSection:
    """[dreambooth] DreamBooth: instance/class prompts and prior preservation with generated class images."""
    instance_prompt: str = ""
    class_prompt: str = ""
    class_negative_prompt: str = ""
    prior_preservation: bool = True
    class_images_per_instance: int = 200
    prior_loss_weight: float = 1.0
    class_dir: str = ""
    class_steps: int = 30
    class_guidance_scale: float = 7.5
    class_sampler: str = "ddim"  # one of ddim, euler_a, euler, dpmpp_2m
    class_batch_size: int = 4
    use_lora: bool = False
    train_text_encoder: bool = False
    stop_text_encoder_step: int = 0


@dataclass
class FinetuneSection:
    """[finetune] Fine-tune: the whole UNet (optionally the text encoder) learns from each image's caption; no instance prompt, no class images (Kohya's fine_tune.py and Fine-tune tab)."""
    train_text_encoder: bool = False
    stop_text_encoder_step: int = 0


@dataclass
class TextualInversionSection:
    """[textual_inversion] Textual inversion: the new token and how its embedding is initialised."""
    token: str = ""
    init_word: str = ""
    vectors: int = 1
    template: str = "object"  # one of object, style, captions
    save_a1111_pt: bool = False


@dataclass
class OutputSection:
    """[output] Where results go, how they are named and how often checkpoints are saved."""
    dir: str = "output"
    name: str = "kiln-lora"
    save_every_n_steps: int = 0
    save_precision: str = "fp16"  # one of fp16, bf16, fp32
    save_diffusers: bool = False
    keep_states: int = 3
    overwrite: bool = False
    save_every_n_epochs: int = 0
    keep_last_n_saves: int = 0


@dataclass
class SampleSection:
    """[sample] Preview images generated while training."""
    grid_at_end: bool = False
    prompts: list[str] = field(default_factory=list)
    every_n_steps: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = 42
    sampler: str = "euler_a"  # one of euler_a, euler, ddim, dpmpp_2m
    every_n_epochs: int = 0
    at_first_step: bool = False
    with_ema: bool = True


@dataclass
class ValidationSection:
    """[validation] A held-out set whose loss, at fixed noises and timesteps, shows over-fitting; optional early stopping."""
    split: float = 0.0
    dir: str = ""
    every_n_steps: int = 0
    seed: int = 1234
    early_stopping_patience: int = 0
    loss: str = "training"  # one of training, mse


@dataclass
class LoggingSection:
    """[logging] Where training scalars go besides TensorBoard (Weights & Biases, when installed and enabled)."""
    wandb: bool = False
    wandb_project: str = "kiln"
    wandb_run_name: str = ""


SECTION_CLASSES = {
    "model": ModelSection,
    "dataset": DatasetSection,
    "training": TrainingSection,
    "lora": LoraSection,
    "dreambooth": DreamboothSection,
    "finetune": FinetuneSection,
    "textual_inversion": TextualInversionSection,
    "output": OutputSection,
    "sample": SampleSection,
    "validation": ValidationSection,
    "logging": LoggingSection,
}
__all__ = [
    "ModelSection",
    "DatasetSection",
    "TrainingSection",
    "LoraSection",
    "DreamboothSection",
    "FinetuneSection",
    "TextualInversionSection",
    "OutputSection",
    "SampleSection",
    "ValidationSection",
    "LoggingSection",
    "SECTION_CLASSES",
]
