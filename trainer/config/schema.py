"""The one table of job parameters. The TOML reader, validation, the UI forms and docs/config.md all read it,
so a new parameter is added here and nowhere else."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

# Kiln's built-in tiny random models, by id and architecture (the loader builds them; no files).
BUILTIN_MODELS = {"builtin:tiny-sd15": "sd15", "builtin:tiny-sdxl": "sdxl"}

CURRENT_VERSION = 1
METHODS: tuple[str, ...] = ("lora", "dreambooth", "textual_inversion")

# Field types. "path" is a local path resolved against the job file's folder; "choice" is one of `choices`.
INT, FLOAT, BOOL, STR, PATH, STR_LIST, CHOICE = "int", "float", "bool", "str", "path", "list[str]", "choice"
FIELD_TYPES: tuple[str, ...] = (INT, FLOAT, BOOL, STR, PATH, STR_LIST, CHOICE)

# Sections in file order; "" holds the top-level keys (method, version).
SECTIONS: tuple[str, ...] = ("", "model", "dataset", "training", "lora", "dreambooth", "textual_inversion",
                             "output", "sample")
SECTION_HELP: dict[str, str] = {
    "": "Top-level keys: which method trains, and the file format version.",
    "model": "The base model to train on.",
    "dataset": "The training images, their captions and how they are bucketed and augmented.",
    "training": "Steps, batch, optimizer, learning-rate schedule, precision and memory savers.",
    "lora": "LoRA network shape (Kohya's network_* arguments). Used by LoRA and by DreamBooth-LoRA.",
    "dreambooth": "DreamBooth: instance/class prompts and prior preservation with generated class images.",
    "textual_inversion": "Textual inversion: the new token and how its embedding is initialised.",
    "output": "Where results go, how they are named and how often checkpoints are saved.",
    "sample": "Preview images generated while training.",
}

_ALL = METHODS
_NETWORK = ("lora", "dreambooth")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]*$")


def _safe_file_name(value: str) -> str | None:
    """Problem with an output name, or None. No folders, no shell-hostile or Windows-reserved characters."""
    if not _SAFE_NAME.match(value) or value.endswith((".", " ")) or len(value) > 100:
        return ("must be a safe file name: letters, digits, space, '.', '_', '+', '-' (at most 100, starting with "
                "a letter or digit, no folders)")
    if value.lower().endswith((".safetensors", ".ckpt", ".pt", ".bin")):
        return "must be a name without an extension (Kiln adds .safetensors)"
    return None


def _file_extension(value: str) -> str | None:
    if not re.fullmatch(r"\.[A-Za-z0-9_.-]+", value):
        return 'must be a file extension starting with a dot, like ".txt"'
    return None


def _zero_or_at_least_64(value: int) -> str | None:
    return None if value == 0 or value >= 64 else "must be 0 (native for the model) or at least 64"


def _single_token(value: str) -> str | None:
    if value and (value != value.strip() or any(ch.isspace() for ch in value)):
        return 'must be one word with no spaces, like "<my-style>"'
    if value != value.lower():
        # CLIP lower-cases every prompt, so diffusers would not find an upper-case token's extra vectors.
        return 'must be lower case (CLIP lower-cases prompts), like "<my-style>"'
    return None


@dataclass(frozen=True)
class Field:
    """One job parameter. `min`/`max` bound numbers (inclusive unless `min_exclusive`); `check` returns a
    problem text for values that pass type and range checks but are still wrong."""
    section: str
    key: str
    type: str
    default: Any
    label: str
    help: str
    methods: tuple[str, ...] = _ALL
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    multiple_of: int | None = None
    advanced: bool = False
    required: bool = False
    hidden: bool = False          # not a form field: Kiln writes it itself (version)
    model_ref: bool = False       # a path, a hub id or a builtin: id; resolved only when it is a path
    check: Callable[[Any], str | None] | None = None

    @property
    def name(self) -> str:
        """`section.key`, or just `key` at the top level: the name used in messages and overrides."""
        return f"{self.section}.{self.key}" if self.section else self.key


def _f(section: str, key: str, type: str, default: Any, label: str, help: str, **extra: Any) -> Field:
    return Field(section, key, type, default, label, help, **extra)


FIELDS: tuple[Field, ...] = (
    # --- top level
    _f("", "method", CHOICE, "", "Method",
       "What to train: a LoRA, a DreamBooth fine-tune (full or LoRA), or a textual-inversion embedding.",
       choices=METHODS, required=True),
    _f("", "version", INT, CURRENT_VERSION, "Format version",
       "Job file format version. A missing version means the current one; older files are migrated on load.",
       min=0, hidden=True, advanced=True),
    # --- [model]
    _f("model", "base", STR, "", "Base model",
       'A .safetensors/.ckpt file, a diffusers folder, a hub id like "org/name", or "builtin:tiny-sd15" / '
       '"builtin:tiny-sdxl". Kohya: pretrained_model_name_or_path.', required=True, model_ref=True),
    _f("model", "arch", CHOICE, "auto", "Architecture",
       "SD 1.x, SD 2.x or SDXL. auto detects it from the weights (Kohya needs --v2 / the sdxl_ scripts).",
       choices=("auto", "sd15", "sd2", "sdxl")),
    _f("model", "prediction_type", CHOICE, "auto", "Prediction type",
       "What the UNet predicts. auto reads the model's scheduler config; set v_prediction for SD 2.x 768 "
       "models without one (Kohya: --v_parameterization).", choices=("auto", "epsilon", "v_prediction"),
       advanced=True),
    _f("model", "vae", STR, "", "VAE",
       "A separate VAE file, folder or hub id to use instead of the model's own; empty keeps the model's VAE.",
       model_ref=True, advanced=True),
    _f("model", "allow_pickle", BOOL, False, "Allow pickle (.ckpt)",
       "Allow loading pickled .ckpt/.pt files, which can run code when opened. Only for files you trust.",
       advanced=True),
    # --- [dataset]
    _f("dataset", "dir", PATH, "", "Image folder",
       'Folder of training images. Kohya-style subfolders like "10_sks dog" set repeats and a caption; '
       "a .txt beside an image is its caption. Kohya: train_data_dir.", required=True),
    _f("dataset", "resolution", INT, 0, "Resolution",
       "Training size in pixels; with buckets, images keep their aspect ratio at about this area "
       '(Kohya writes "512,512"). 0 = the model\'s native size: 512 for SD 1.x, 768 for SD 2.x, 1024 for SDXL.',
       min=0, max=4096, multiple_of=8, check=_zero_or_at_least_64),
    _f("dataset", "caption_extension", STR, ".txt", "Caption extension",
       "Extension of the caption file beside each image.", check=_file_extension, advanced=True),
    _f("dataset", "repeats", INT, 1, "Repeats",
       'How often each image is seen per epoch, for folders without a Kohya "N_" prefix.', min=1, max=1000),
    _f("dataset", "default_caption", STR, "", "Default caption",
       "Caption for images that have no caption file (and no caption in the folder name)."),
    _f("dataset", "enable_bucket", BOOL, True, "Aspect-ratio buckets",
       "Group images by aspect ratio instead of cropping everything square.", advanced=True),
    _f("dataset", "min_bucket_reso", INT, 0, "Smallest bucket side",
       "Smallest side of a bucket, in pixels; 0 = half the resolution.", min=0, max=4096, multiple_of=8,
       check=_zero_or_at_least_64, advanced=True),
    _f("dataset", "max_bucket_reso", INT, 0, "Largest bucket side",
       "Largest side of a bucket, in pixels; 0 = twice the resolution.", min=0, max=8192, multiple_of=8,
       check=_zero_or_at_least_64, advanced=True),
    _f("dataset", "bucket_reso_steps", INT, 64, "Bucket step",
       "Bucket sides are multiples of this many pixels.", min=8, max=512, multiple_of=8, advanced=True),
    _f("dataset", "bucket_no_upscale", BOOL, False, "Never upscale into buckets",
       "Put small images into smaller buckets instead of upscaling them.", advanced=True),
    _f("dataset", "random_crop", BOOL, False, "Random crop",
       "Crop at a random place instead of the centre. Needs training.cache_latents = false.", advanced=True),
    _f("dataset", "flip", BOOL, False, "Horizontal flip",
       "Randomly mirror images left-right. Avoid for asymmetric subjects (text, logos). Kohya: flip_aug.",
       advanced=True),
    _f("dataset", "shuffle_caption", BOOL, False, "Shuffle caption",
       "Shuffle the comma-separated tags of each caption every time it is used.", advanced=True),
    _f("dataset", "keep_tokens", INT, 0, "Keep first tags",
       "With shuffle_caption, keep this many leading tags in place (e.g. the trigger word).",
       min=0, max=255, advanced=True),
    _f("dataset", "caption_dropout_rate", FLOAT, 0.0, "Caption dropout",
       "Probability of training an image with an empty caption.", min=0.0, max=1.0, advanced=True),
    # --- [training]
    _f("training", "max_steps", INT, 0, "Max steps",
       "Optimizer steps to train; 0 trains for `epochs` instead. Kohya: max_train_steps.", min=0, max=10_000_000),
    _f("training", "epochs", INT, 1, "Epochs",
       "Passes over the dataset (with repeats), used when max_steps is 0. Kohya: max_train_epochs.",
       min=1, max=100_000),
    _f("training", "batch_size", INT, 1, "Batch size",
       "Images per step. Kohya: train_batch_size.", min=1, max=256),
    _f("training", "gradient_accumulation_steps", INT, 1, "Gradient accumulation",
       "Batches whose gradients are summed before each optimizer step (a larger effective batch).",
       min=1, max=1024, advanced=True),
    _f("training", "learning_rate", FLOAT, 1e-4, "Learning rate",
       "Step size for the UNet (and everything trained unless text_encoder_lr is set). Kohya: learning_rate "
       "/ unet_lr.", min=0.0, min_exclusive=True),
    _f("training", "text_encoder_lr", FLOAT, 0.0, "Text encoder LR",
       "Learning rate for the text encoder when it is trained; 0 uses learning_rate.",
       min=0.0, methods=_NETWORK, advanced=True),
    _f("training", "lr_scheduler", CHOICE, "constant", "LR scheduler",
       "How the learning rate changes over the run.",
       choices=("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")),
    _f("training", "lr_warmup_steps", INT, 0, "Warmup steps",
       "Steps over which the learning rate ramps up from 0.", min=0, max=10_000_000, advanced=True),
    _f("training", "lr_num_cycles", INT, 1, "Restart cycles",
       "Number of cosine restarts for cosine_with_restarts. Kohya: lr_scheduler_num_cycles.",
       min=1, max=1000, advanced=True),
    _f("training", "lr_power", FLOAT, 1.0, "Polynomial power",
       "Power of the polynomial scheduler. Kohya: lr_scheduler_power.", min=0.0, min_exclusive=True,
       advanced=True),
    _f("training", "optimizer", CHOICE, "adamw8bit", "Optimizer",
       "adamw8bit saves memory (bitsandbytes); prodigy picks its own step size (use learning_rate 1.0). "
       "Kohya: optimizer_type.", choices=("adamw8bit", "adamw", "lion8bit", "prodigy", "adafactor")),
    _f("training", "weight_decay", FLOAT, 0.01, "Weight decay",
       "Decoupled weight decay of the optimizer.", min=0.0, max=10.0, advanced=True),
    _f("training", "max_grad_norm", FLOAT, 1.0, "Max gradient norm",
       "Clip gradients to this norm; 0 turns clipping off.", min=0.0, advanced=True),
    _f("training", "mixed_precision", CHOICE, "fp16", "Mixed precision",
       "Compute precision on the GPU. bf16 needs an Ampere (RTX 30xx) or newer card; no trains in fp32.",
       choices=("fp16", "bf16", "no")),
    _f("training", "seed", INT, 42, "Seed",
       "Seed for every random choice, so a run (and a resumed run) is repeatable.", min=0, max=2**32 - 1),
    _f("training", "gradient_checkpointing", BOOL, False, "Gradient checkpointing",
       "Recompute activations in the backward pass: much less memory, about 20-30% slower."),
    _f("training", "cache_latents", BOOL, True, "Cache latents",
       "Encode every image with the VAE once before training, then free the VAE. Not with random_crop."),
    _f("training", "cache_latents_to_disk", BOOL, False, "Cache latents to disk",
       "Keep the latent cache on disk so later runs on the same images skip encoding.", advanced=True),
    _f("training", "cache_text_encoder_outputs", BOOL, True, "Cache text encoder outputs",
       "Encode captions once, then free the text encoder. Used only when the text encoder is not trained "
       "and captions are not shuffled or dropped.", methods=_NETWORK, advanced=True),
    _f("training", "noise_offset", FLOAT, 0.0, "Noise offset",
       "Adds a per-channel offset to the noise so the model learns darker darks and brighter brights "
       "(0.05-0.1 is typical; 0 is off).", min=0.0, max=1.0, advanced=True),
    _f("training", "min_snr_gamma", FLOAT, 0.0, "Min-SNR gamma",
       "Min-SNR loss weighting, which steadies training (5 is typical); 0 is off.", min=0.0, max=100.0,
       advanced=True),
    _f("training", "clip_skip", INT, 1, "CLIP skip",
       "Use the output of this many layers from the end of the text encoder (2 for many anime models).",
       min=1, max=12, advanced=True),
    _f("training", "num_processes", INT, 1, "GPUs",
       "Processes (one per GPU) that accelerate launches for this job.", min=1, max=64, advanced=True),
    # --- [training] scale: mixed precision without a GPU, and the speed levers of a GPU run
    _f("training", "cpu_mixed_precision", BOOL, False, "Mixed precision on the CPU",
       "Without a CUDA GPU, still train in mixed_precision (frozen weights in fp16/bf16, autocast, the fp16 "
       "grad scaler) instead of falling back to fp32: the GPU code path, for tests and the curious. Slow.",
       advanced=True),
    _f("training", "attention", CHOICE, "sdpa", "Attention kernel",
       "sdpa: PyTorch's scaled-dot-product attention (flash / memory-efficient kernels on a GPU), diffusers' "
       "default; xformers: xformers' memory-efficient attention, when it is installed. Kohya: --sdpa / --xformers.",
       choices=("sdpa", "xformers"), advanced=True),
    _f("training", "channels_last", BOOL, False, "Channels-last UNet",
       "Store the UNet's conv weights and activations channels-last (NHWC), which tensor cores prefer. Off by "
       "default, as in Kohya and the diffusers examples; bench/gpu_suite.py measures it.", advanced=True),
    _f("training", "tf32", BOOL, True, "TF32 matmuls",
       "Let fp32 matrix products and convolutions use TF32 on Ampere or newer GPUs: several times faster, "
       "10-bit mantissa. Matters for fp32 work (mixed_precision = no, the fp32 VAE under fp16).", advanced=True),
    _f("training", "cudnn_benchmark", BOOL, False, "cuDNN autotuning",
       "Time cuDNN's convolution algorithms once per input shape and keep the fastest. Each new bucket shape "
       "pays the tuning once.", advanced=True),
    _f("training", "fused_optimizer", BOOL, True, "Fused AdamW",
       "With optimizer = adamw, use PyTorch's fused AdamW kernel (one kernel for all parameters) instead of "
       "the foreach one. The 8-bit optimizers have their own kernels.", advanced=True),
    _f("training", "torch_compile", BOOL, False, "torch.compile the UNet",
       "Compile the UNet with torch.compile: faster steps after a slow first one (minutes for SDXL), and each "
       "new bucket shape compiles again. Off by default; bench/gpu_suite.py measures it.", advanced=True),
    # --- [lora]
    _f("lora", "rank", INT, 16, "Rank",
       "LoRA rank: the size of the update; higher learns more detail and makes bigger files. Kohya: network_dim.",
       min=1, max=1024, methods=_NETWORK),
    _f("lora", "alpha", FLOAT, 8.0, "Alpha",
       "Scales the update by alpha/rank; half the rank is common. Kohya: network_alpha.",
       min=0.0, min_exclusive=True, methods=_NETWORK),
    _f("lora", "train_text_encoder", BOOL, False, "Train text encoder",
       "Also put LoRA layers into the text encoder (Kohya trains it unless network_train_unet_only). "
       "DreamBooth-LoRA uses dreambooth.train_text_encoder instead.", methods=("lora",)),
    _f("lora", "dropout", FLOAT, 0.0, "Dropout",
       "Dropout on the LoRA layers' output. Kohya: network_dropout.", min=0.0, max=1.0, methods=_NETWORK,
       advanced=True),
    _f("lora", "train_ff", BOOL, False, "Train feed-forward layers",
       "Also adapt the transformer feed-forward layers, not only attention.", methods=_NETWORK, advanced=True),
    _f("lora", "train_conv", BOOL, False, "Train conv layers (LoCon)",
       "Also adapt the 3x3 conv layers, LoCon-style (Kohya: network_args conv_dim/conv_alpha).",
       methods=_NETWORK, advanced=True),
    _f("lora", "conv_rank", INT, 0, "Conv rank",
       "Rank for the conv layers when train_conv is on; 0 uses rank.", min=0, max=1024, methods=_NETWORK,
       advanced=True),
    _f("lora", "conv_alpha", FLOAT, 0.0, "Conv alpha",
       "Alpha for the conv layers when train_conv is on; 0 uses alpha.", min=0.0, methods=_NETWORK,
       advanced=True),
    # --- [dreambooth]
    _f("dreambooth", "instance_prompt", STR, "", "Instance prompt",
       'Prompt naming your subject with a rare token, e.g. "a photo of sks dog". Used for images without '
       "a caption.", methods=("dreambooth",)),
    _f("dreambooth", "class_prompt", STR, "", "Class prompt",
       'Prompt for the generic class, e.g. "a photo of a dog"; class images are generated from it. Needed '
       "with prior preservation.", methods=("dreambooth",)),
    _f("dreambooth", "class_negative_prompt", STR, "", "Class negative prompt",
       "Negative prompt used when generating class images.", methods=("dreambooth",), advanced=True),
    _f("dreambooth", "prior_preservation", BOOL, True, "Prior preservation",
       "Also train on generated class images so the model keeps what the class looks like in general "
       "(Kohya: reg_data_dir).", methods=("dreambooth",)),
    _f("dreambooth", "class_images_per_instance", INT, 200, "Class images per subject image",
       "Class images to generate for each subject image (200 x the number of subject images in all).",
       min=1, max=10_000, methods=("dreambooth",)),
    _f("dreambooth", "prior_loss_weight", FLOAT, 1.0, "Prior loss weight",
       "Weight of the class-image loss against the subject-image loss.", min=0.0, max=100.0,
       methods=("dreambooth",), advanced=True),
    _f("dreambooth", "class_dir", PATH, "", "Class image folder",
       "Where class images are kept and reused; empty uses a shared cache keyed by model and class prompt. "
       "Your own class images may be put here: they count, Kiln only adds the missing ones (named "
       "kiln-class-NNNNN.png) and never changes a file that is there. Kohya: reg_data_dir.",
       methods=("dreambooth",), advanced=True),
    _f("dreambooth", "class_steps", INT, 30, "Class image steps",
       "Denoising steps for each generated class image.", min=1, max=1000, methods=("dreambooth",),
       advanced=True),
    _f("dreambooth", "class_guidance_scale", FLOAT, 7.5, "Class image CFG scale",
       "Classifier-free guidance scale for generating class images.", min=0.0, max=100.0,
       methods=("dreambooth",), advanced=True),
    _f("dreambooth", "class_sampler", CHOICE, "ddim", "Class image sampler",
       "Scheduler used to generate class images.", choices=("ddim", "euler_a", "euler", "dpmpp_2m"),
       methods=("dreambooth",), advanced=True),
    _f("dreambooth", "class_batch_size", INT, 4, "Class image batch",
       "Class images generated at once; lower it if generation runs out of GPU memory.", min=1, max=256,
       methods=("dreambooth",), advanced=True),
    _f("dreambooth", "use_lora", BOOL, False, "DreamBooth-LoRA",
       "Train LoRA layers (the [lora] settings) instead of the full UNet: far less memory, a small file.",
       methods=("dreambooth",)),
    _f("dreambooth", "train_text_encoder", BOOL, False, "Train text encoder",
       "Also train the text encoder (its LoRA layers with use_lora).", methods=("dreambooth",)),
    _f("dreambooth", "stop_text_encoder_step", INT, 0, "Stop text encoder at step",
       "Freeze the text encoder after this many steps; 0 trains it to the end. Kohya: stop_text_encoder_training.",
       min=0, max=10_000_000, methods=("dreambooth",), advanced=True),
    # --- [textual_inversion]
    _f("textual_inversion", "token", STR, "", "Token",
       'The new word to learn, e.g. "<my-style>"; use it in prompts. Kohya: token_string.',
       methods=("textual_inversion",), check=_single_token),
    _f("textual_inversion", "init_word", STR, "", "Initial word",
       'An existing word close to the concept ("dog", "painting"); every vector starts from its embedding. '
       'Words the tokenizer splits into several tokens ("watercolor painting") start from their mean.',
       methods=("textual_inversion",)),
    _f("textual_inversion", "vectors", INT, 1, "Vectors",
       "Embedding vectors per token; more capture more but use more of the 75-token prompt. "
       "Kohya: num_vectors_per_token.", min=1, max=75, methods=("textual_inversion",)),
    _f("textual_inversion", "template", CHOICE, "object", "Prompt template",
       'object: "a photo of a {token}" prompts; style: "a painting in the style of {token}"; captions: the '
       "dataset's captions, where the token stands for itself (a caption without it gets it in front) "
       "(Kohya: use_object_template / use_style_template).",
       choices=("object", "style", "captions"), methods=("textual_inversion",)),
    _f("textual_inversion", "save_a1111_pt", BOOL, False, "Also save A1111 .pt",
       "Also write AUTOMATIC1111's older .pt embedding layout next to each .safetensors (SD 1.x/2.x only; "
       "A1111 reads the .safetensors too). The .pt is a pickle: only for tools that need it.",
       methods=("textual_inversion",), advanced=True),
    # --- [output]
    _f("output", "dir", PATH, "output", "Output folder",
       "Folder for the trained files (relative to the job file). Kohya: output_dir."),
    _f("output", "name", STR, "kiln-lora", "Output name",
       "File name without extension: NAME.safetensors, checkpoints NAME-step00000100.safetensors. "
       "Kohya: output_name.", check=_safe_file_name),
    _f("output", "save_every_n_steps", INT, 0, "Save every N steps",
       "Also save a checkpoint every this many steps; 0 saves only the final file.", min=0, max=10_000_000),
    _f("output", "save_precision", CHOICE, "fp16", "Save precision",
       "Precision of the saved weights.", choices=("fp16", "bf16", "fp32"), advanced=True),
    _f("output", "save_diffusers", BOOL, False, "Also save diffusers format",
       "Also write a diffusers-format copy of the final file next to the .safetensors: NAME-diffusers/ "
       "(SD 1.x/2.x LoRA, and DreamBooth checkpoints). Kohya: save_model_as = diffusers.",
       advanced=True),
    _f("output", "keep_states", INT, 3, "Training states kept",
       "How many recent resumable training states to keep; 0 saves none (no resume).", min=0, max=1000,
       advanced=True),
    _f("output", "overwrite", BOOL, False, "Overwrite",
       "Allow replacing an existing NAME.safetensors. When false, a job refuses to start rather than replace "
       "a file you have.", advanced=True),
    # --- [sample]
    _f("sample", "prompts", STR_LIST, [], "Sample prompts",
       "Prompts for preview images, in Kohya prompt-line syntax: text, then --n negative, --w width, "
       "--h height, --s steps, --l CFG scale, --d seed."),
    _f("sample", "every_n_steps", INT, 0, "Sample every N steps",
       "Generate previews every this many steps; 0 only at the end. Kohya: sample_every_n_steps.",
       min=0, max=10_000_000),
    _f("sample", "steps", INT, 20, "Sampling steps", "Denoising steps per preview (--s overrides).",
       min=1, max=1000, advanced=True),
    _f("sample", "cfg_scale", FLOAT, 7.0, "CFG scale", "Classifier-free guidance scale (--l overrides).",
       min=0.0, max=100.0, advanced=True),
    _f("sample", "seed", INT, 42, "Sample seed", "Seed for previews (--d overrides).", min=0, max=2**32 - 1,
       advanced=True),
    _f("sample", "sampler", CHOICE, "euler_a", "Sampler", "Scheduler used for previews. Kohya: sample_sampler.",
       choices=("euler_a", "euler", "ddim", "dpmpp_2m"), advanced=True),
)

FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def section_fields(section: str) -> list[Field]:
    """Fields of one section ("" for top level), in schema order."""
    return [f for f in FIELDS if f.section == section]


def section_methods(section: str) -> tuple[str, ...]:
    """Methods that use at least one field of the section."""
    used = {m for f in section_fields(section) for m in f.methods}
    return tuple(m for m in METHODS if m in used)


def fields_for(method: str) -> list[Field]:
    """Fields that `method` uses, in schema order (what a form for that method shows)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return [f for f in FIELDS if method in f.methods]


def find_field(name: str) -> Field | None:
    """The field called `section.key` (or a top-level `key`), or None."""
    return FIELDS_BY_NAME.get(name)
