"""The one table of job parameters. The TOML reader, validation, the UI forms and docs/config.md all read it,
so a new parameter is added here and nowhere else."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from ..families import BUILTIN_TINY, FAMILIES, FAMILY_IDS
from .prompt_line import prompt_lines_problem

# Kiln's built-in tiny random models, by id and architecture (the loader builds them; no files).
BUILTIN_MODELS = BUILTIN_TINY
# How a model reference is told apart: a hub id looks like "org/name"; these file types are pickles.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # use fullmatch
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# base_quantization values that put linear layers in bitsandbytes' int8 / 4-bit layers (fp8 is layerwise casting)
BITSANDBYTES_KINDS = ("int8", "nf4")
CURRENT_VERSION = 2  # version 2: training.fp8_base became base_quantization = "fp8" (migrate.py)
METHODS: tuple[str, ...] = ("lora", "dreambooth", "finetune", "textual_inversion")

# Field types. "path" is a local path resolved against the job file's folder; "choice" is one of `choices`;
# "list[table]" is a TOML array of tables ([[section.key]]) whose keys are the field's `item_fields`.
INT, FLOAT, BOOL, STR, PATH, STR_LIST, CHOICE = "int", "float", "bool", "str", "path", "list[str]", "choice"
TABLE_LIST = "list[table]"
FIELD_TYPES: tuple[str, ...] = (INT, FLOAT, BOOL, STR, PATH, STR_LIST, CHOICE, TABLE_LIST)

# Sections in file order; "" holds the top-level keys (method, version).
SECTIONS: tuple[str, ...] = ("", "model", "dataset", "training", "lora", "dreambooth", "finetune", "textual_inversion",
                             "output", "sample", "validation", "logging")
SECTION_HELP: dict[str, str] = {
    "": "Top-level keys: which method trains, and the file format version.",
    "model": "The base model to train on.",
    "dataset": "The training images, their captions and how they are bucketed and augmented.",
    "training": "Steps, batch, optimizer, learning-rate schedule, precision and memory savers.",
    "lora": "LoRA network shape (Kohya's network_* arguments). Used by LoRA and by DreamBooth-LoRA.",
    "dreambooth": "DreamBooth: instance/class prompts and prior preservation with generated class images.",
    "finetune": "Fine-tune: the whole UNet (optionally the text encoder) learns from each image's caption; no "
                "instance prompt, no class images (Kohya's fine_tune.py and Fine-tune tab).",
    "textual_inversion": "Textual inversion: the new token and how its embedding is initialised.",
    "output": "Where results go, how they are named and how often checkpoints are saved.",
    "sample": "Preview images generated while training.",
    "validation": "A held-out set whose loss, at fixed noises and timesteps, shows over-fitting; optional early "
                  "stopping.",
    "logging": "Where training scalars go besides TensorBoard (Weights & Biases, when installed and enabled).",
}

_ALL = METHODS
# Optimizers by Kiln name; the LR-free ones pick their own step size (learning_rate ~1.0 only scales it).
OPTIMIZER_NAMES: tuple[str, ...] = ("adamw8bit", "adamw", "lion8bit", "prodigy", "adafactor", "dadaptadam",
                                    "dadaptlion", "came", "adamwschedulefree", "pagedadamw8bit")
LR_FREE_OPTIMIZERS: tuple[str, ...] = ("prodigy", "dadaptadam", "dadaptlion")
_NETWORK = ("lora", "dreambooth")
_TEXT_ENCODER_CAN_LEARN = ("lora", "dreambooth", "finetune")  # methods with a text-encoder switch
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


def _words_not_blank(value: str) -> str | None:
    return "must hold a word, not only spaces" if value and not value.strip() else None


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
    problem text for values that pass type and range checks but are still wrong. A TABLE_LIST field's tables
    take the keys of `item_fields`; an item field whose default is None takes the section's key of the same
    name ("as [section]")."""
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
    item_fields: tuple["Field", ...] = ()
    required_unless: str = ""     # a required field may stay empty when this other field is set

    @property
    def name(self) -> str:
        """`section.key`, or just `key` at the top level: the name used in messages and overrides."""
        return f"{self.section}.{self.key}" if self.section else self.key


def _f(section: str, key: str, type: str, default: Any, label: str, help: str, **extra: Any) -> Field:
    return Field(section, key, type, default, label, help, **extra)


# --- [[dataset.concepts]] keys (engineer "data": concepts, regularisation, masks, caption options)
_CONCEPT = "dataset.concepts"
CONCEPT_FIELDS: tuple[Field, ...] = (
    _f(_CONCEPT, "dir", PATH, "", "Folder", "The concept's image folder (subfolders included).", required=True),
    _f(_CONCEPT, "repeats", FLOAT, 1.0, "Repeats",
       "How often each image is seen per epoch; fractions allowed (0.5 = a fixed half of the images, rounded "
       "up, chosen by the seed). Kohya: num_repeats.", min=0.0, min_exclusive=True, max=1000.0),
    _f(_CONCEPT, "caption", STR, "", "Caption",
       "Caption of images without a caption file (Kohya: class_tokens). Empty: an image in a Kohya N_name "
       "subfolder takes its name; the concept's repeats are still this table's."),
    _f(_CONCEPT, "caption_extension", STR, None, "Caption extension",
       "Extension of the caption files beside the images.", check=_file_extension),
    _f(_CONCEPT, "caption_prefix", STR, "", "Caption prefix",
       'A tag put before every caption of this concept (joined with ", "), e.g. the trigger word.'),
    _f(_CONCEPT, "caption_suffix", STR, "", "Caption suffix",
       'A tag put after every caption of this concept (joined with ", ").'),
    _f(_CONCEPT, "is_regularization", BOOL, False, "Regularisation (class) images",
       "true: class images (the class role, Kohya is_reg), paired with the other images one to one and "
       "weighted by dreambooth.prior_loss_weight; false: instance (subject) images. Not with DreamBooth, "
       "whose class images come from dreambooth.class_dir."),
    _f(_CONCEPT, "loss_weight", FLOAT, 1.0, "Loss weight", "Multiplies the loss of this concept's images.",
       min=0.0, max=100.0),
    _f(_CONCEPT, "flip", BOOL, None, "Horizontal flip", "Randomly mirror this concept's images."),
    _f(_CONCEPT, "random_crop", BOOL, None, "Random crop", "Crop this concept's images at a random place."),
    _f(_CONCEPT, "shuffle_caption", BOOL, None, "Shuffle caption", "Shuffle this concept's caption tags."),
)

FIELDS: tuple[Field, ...] = (
    # --- top level
    _f("", "method", CHOICE, "", "Method",
       "What to train: a LoRA, a DreamBooth fine-tune (full or LoRA), a fine-tune of the whole model on "
       "captioned images, or a textual-inversion embedding.",
       choices=METHODS, required=True),
    _f("", "version", INT, CURRENT_VERSION, "Format version",
       "Job file format version. A missing version means the current one; older files are migrated on load.",
       min=0, hidden=True, advanced=True),
    # --- [model]
    _f("model", "base", STR, "", "Base model",
       'A .safetensors/.ckpt file, a diffusers folder, a hub id like "org/name", or a tiny random model built in '
       'code (no weights to download; it makes noise, for trying a job end to end): '
       + " / ".join(f'"{ref}"' for ref in BUILTIN_MODELS) + '. Kohya: pretrained_model_name_or_path.',
       required=True, model_ref=True),
    _f("model", "arch", CHOICE, "auto", "Architecture",
       "The model family: " + ", ".join(f"{f.id} ({f.label})" for f in FAMILIES.values()) + ". auto detects it "
       "from the weights (Kohya needs --v2 / the sdxl_, sd3_ and flux_ scripts).",
       choices=("auto", *FAMILY_IDS)),
    _f("model", "prediction_type", CHOICE, "auto", "Prediction type",
       "What the UNet predicts. auto reads the model's scheduler config; set v_prediction for SD 2.x 768 "
       "models without one (Kohya: --v_parameterization).", choices=("auto", "epsilon", "v_prediction"),
       advanced=True),
    _f("model", "vae", STR, "", "VAE",
       "A separate VAE file, folder or hub id to use instead of the model's own; empty keeps the model's VAE.",
       model_ref=True, advanced=True),
    # --- [model] text encoders kept as separate files (SD 3/3.5, Flux.1, Chroma; sd-scripts: --clip_l ...)
    _f("model", "clip_l", PATH, "", "CLIP-L file",
       "SD 3/3.5 and Flux.1: the CLIP-L text encoder as a separate .safetensors (e.g. clip_l.safetensors), for a "
       "model file that does not contain it; empty uses the one inside the model file. Kohya: clip_l.",
       advanced=True),
    _f("model", "clip_g", PATH, "", "CLIP-G file",
       "SD 3/3.5: the OpenCLIP bigG text encoder as a separate .safetensors (e.g. clip_g.safetensors), for a model "
       "file that does not contain it. Kohya: clip_g.", advanced=True),
    _f("model", "t5xxl", PATH, "", "T5-XXL file",
       "SD 3/3.5, Flux.1 and Chroma: the T5-XXL text encoder as a separate .safetensors (t5xxl_fp16.safetensors or "
       "t5xxl_fp8_e4m3fn.safetensors; fp8 weights are upcast). SD 3 runs without T5 when neither this nor the "
       "model (file or diffusers folder) has it. The Flux/Chroma autoencoder (ae.safetensors) goes in model.vae. "
       "Kohya: t5xxl.",
       advanced=True),
    _f("model", "t5_tokenizer", PATH, "", "T5 tokenizer folder",
       "A folder with the T5 tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json, "
       "spiece.model from google/t5-v1_1-xxl, or a diffusers Flux model's tokenizer_2), needed when T5-XXL comes "
       "as a single file (model.t5xxl, or inside an all-in-one model file), which carries no tokenizer: Kiln "
       "bundles no T5 vocabulary and looks in the local Hugging Face cache when this is empty; `check` refuses "
       "the job when neither has it.", advanced=True),
    _f("model", "allow_pickle", BOOL, False, "Allow pickle (.ckpt)",
       "Allow loading pickled .ckpt/.pt files, which can run code when opened. Only for files you trust.",
       advanced=True),
    # --- [dataset]
    _f("dataset", "dir", PATH, "", "Image folder",
       'Folder of training images. Kohya-style subfolders like "10_sks dog" set repeats and a caption; '
       "a .txt beside an image is its caption. Kohya: train_data_dir.", required=True,
       required_unless="dataset.concepts"),
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
    _f("dataset", "full_batches", BOOL, False, "Full batches only",
       "Make every batch hold training.batch_size samples: an image whose bucket has fewer samples per epoch "
       "than a batch moves to the nearest bucket by aspect ratio that has enough (with bucket_no_upscale only "
       "to one no larger than the image), and each bucket's short last batch is topped up with other samples "
       "of that bucket, so an epoch shows a few samples twice. The number of batches stays known in advance. "
       "Off by default: existing jobs and presets keep their exact batches, steps and results. Kohya has no "
       "such option.", advanced=True),
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
    # --- [dataset] concepts, regularisation, masks, caption options (engineer "data")
    _f("dataset", "concepts", TABLE_LIST, [], "Concepts",
       "More image folders, each a [[dataset.concepts]] table with its own repeats, captions, role, loss "
       "weight and augmentation (keys below). Used besides dataset.dir, or instead of it.",
       item_fields=CONCEPT_FIELDS, advanced=True),
    _f("dataset", "reg_dir", PATH, "", "Regularisation images",
       "A folder of class (regularisation) images for LoRA, paired one to one with the training images and "
       "weighted by dreambooth.prior_loss_weight; Kohya N_name subfolders set their captions. With reg_prompt, "
       "the folder generated images are added to. Kohya: reg_data_dir.",
       methods=("lora",), advanced=True),
    _f("dataset", "masked_training", BOOL, False, "Masked training",
       "Weight the loss per pixel by a mask: masks/<image name>.png in the image's folder (white = train), "
       "else the image's alpha channel. Masks follow every crop, flip and resize. A masks folder is never "
       "trained on as images. Kohya: masked_loss / alpha_mask.", advanced=True),
    _f("dataset", "unmasked_weight", FLOAT, 0.0, "Unmasked-area weight",
       "Loss weight of the areas outside the mask; 0 trains on the masked areas only, 1 ignores the mask. "
       "OneTrainer: unmasked_weight.", min=0.0, max=1.0, advanced=True),
    _f("dataset", "caption_tag_dropout_rate", FLOAT, 0.0, "Tag dropout",
       "Probability of leaving out each tag (comma-separated part) that is not kept by keep_tokens or "
       "keep_tokens_separator. Kohya: caption_tag_dropout_rate.", min=0.0, max=1.0, advanced=True),
    _f("dataset", "keep_tokens_separator", STR, "", "Keep-tokens separator",
       'Tags before this separator (e.g. "|||") always stay first and are never shuffled or dropped; it '
       "replaces keep_tokens for captions that contain it. Kohya: keep_tokens_separator.", advanced=True),
    _f("dataset", "wildcards", BOOL, False, "Wildcards",
       "Replace each {a|b|c} in a caption by one of its options, chosen anew for every sample (from the seed "
       "and the batch index, so a resumed run chooses the same). Kohya: enable_wildcard.", advanced=True),
    # --- [dataset] generated regularisation images for LoRA (issue 15): DreamBooth's class-image generation,
    # its dreambooth.class_* settings and its shared cache, with the prompt and count of a LoRA job's reg images.
    _f("dataset", "reg_prompt", STR, "", "Regularisation prompt",
       'Class prompt of generated regularisation images, e.g. "a photo of a dog". When set, the base model '
       "makes the missing ones before training, as DreamBooth makes its class images (with the "
       "dreambooth.class_* generation settings and the same shared cache): into dataset.reg_dir when set (your "
       "own images there count), else into the shared cache. It captions reg images without a caption file. "
       "Empty: dataset.reg_dir is used as it is.", methods=("lora",), advanced=True,
       check=lambda v: "must not be only spaces" if v and not v.strip() else None),
    _f("dataset", "reg_images_per_image", INT, 0, "Regularisation images per image",
       "With reg_prompt: regularisation images per training image. 0 = as many as an epoch pairs: one per "
       "training sample (the images x their repeats), since more would go unused.",
       min=0, max=10_000, methods=("lora",), advanced=True),
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
       min=0.0, methods=_TEXT_ENCODER_CAN_LEARN, advanced=True),
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
       "adamw8bit saves memory (bitsandbytes); prodigy, dadaptadam and dadaptlion pick their own step size (use "
       "learning_rate 1.0); adamwschedulefree needs no LR schedule; came saves memory like adafactor; "
       "pagedadamw8bit pages its state to CPU RAM on memory spikes (CUDA). Kohya: optimizer_type.",
       choices=OPTIMIZER_NAMES),
    # --- [training] keys imported from Kohya configs (engineer "check")
    _f("training", "lr_warmup_ratio", FLOAT, 0.0, "Warmup fraction",
       "Warmup as a fraction of the total steps, used when lr_warmup_steps is 0 (Kohya GUI: lr_warmup, in %).",
       min=0.0, max=1.0, advanced=True),
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
       "Encode every image with the VAE once before training instead of every step; the VAE then waits in "
       "CPU memory and visits the GPU only for previews and validation. Not with random_crop."),
    _f("training", "cache_latents_to_disk", BOOL, False, "Cache latents to disk",
       "Keep the latent cache on disk so later runs on the same images skip encoding.", advanced=True),
    _f("training", "cache_text_encoder_outputs", BOOL, True, "Cache text encoder outputs",
       "Encode each caption once, before training, instead of every step; the text encoders then wait in CPU "
       "memory and visit the GPU only for previews. Used only when the text encoder is not trained and "
       "captions are not shuffled, dropped or wildcarded.",
       methods=_TEXT_ENCODER_CAN_LEARN, advanced=True),
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
    # --- [training] objective options (issue 15: loss, timesteps, noise, EMA), as sd-scripts defines them
    _f("training", "loss", CHOICE, "l2", "Loss",
       "l2 (mean squared error), l1, huber (pseudo-Huber: robust to outliers) or smooth_l1. Kohya: loss_type.",
       choices=("l2", "l1", "huber", "smooth_l1"), advanced=True),
    _f("training", "huber_c", FLOAT, 0.1, "Huber c",
       "The Huber/smooth-L1 threshold c (smaller is more L1-like). Kohya: huber_c.", min=0.0, max=1.0,
       min_exclusive=True, advanced=True),
    _f("training", "huber_schedule", CHOICE, "snr", "Huber schedule",
       "How c varies with the timestep: constant c; exponential from 1 at t=0 down to c at t=T; snr from 1 at "
       "low noise to c at high noise. Kohya: huber_schedule.", choices=("constant", "exponential", "snr"),
       advanced=True),
    _f("training", "min_timestep", INT, 0, "Min timestep",
       "Smallest noise timestep trained (0-999). Kohya: min_timestep.", min=0, max=999, advanced=True),
    _f("training", "max_timestep", INT, 1000, "Max timestep",
       "Timesteps are drawn below this (1-1000; capped at the model's count). Kohya: max_timestep.",
       min=1, max=1000, advanced=True),
    _f("training", "timestep_sampling", CHOICE, "uniform", "Timestep sampling",
       "uniform: every timestep equally often; logit_normal: sigmoid of a normal draw, favouring the middle. "
       "Flow models (SD 3, Flux.1, Chroma) also take sigma (the scheduler's own sigmas, uniformly), shift "
       "(sigmoid of a scaled normal draw, shifted by discrete_flow_shift), flux_shift (the shift Flux.1 computes "
       "from the image size) and mode (the SD 3 paper's mode sampling, mode_scale). Kohya: timestep_sampling / "
       "weighting_scheme's density.",
       choices=("uniform", "logit_normal", "sigma", "shift", "flux_shift", "mode"), advanced=True),
    _f("training", "logit_mean", FLOAT, 0.0, "Logit-normal mean",
       "Mean of the normal draw for logit_normal timestep sampling (negative favours low noise).",
       min=-10.0, max=10.0, advanced=True),
    _f("training", "logit_std", FLOAT, 1.0, "Logit-normal std",
       "Spread of the normal draw for logit_normal timestep sampling.", min=0.0, max=10.0, min_exclusive=True,
       advanced=True),
    _f("training", "discrete_flow_shift", FLOAT, 3.0, "Flow shift",
       "Flow models: the shift s of timestep_sampling = \"shift\": sigma' = s*sigma / (1 + (s-1)*sigma); above 1 "
       "trains more at high noise. sd-scripts' default (3.0). Kohya: discrete_flow_shift.", min=0.0,
       min_exclusive=True, max=100.0, advanced=True),
    _f("training", "sigmoid_scale", FLOAT, 1.0, "Sigmoid scale",
       "Flow models: scale of the normal draw before the sigmoid (timestep_sampling shift / flux_shift / "
       "logit_normal). Kohya: sigmoid_scale.", min=0.0, min_exclusive=True, max=100.0, advanced=True),
    _f("training", "mode_scale", FLOAT, 1.29, "Mode scale",
       "Flow models: the scale of timestep_sampling = \"mode\" (SD 3 paper, diffusers' default 1.29). "
       "Kohya: mode_scale.", min=-10.0, max=10.0, advanced=True),
    _f("training", "weighting_scheme", CHOICE, "none", "Flow loss weighting",
       "Flow models: weigh each example's loss by its sigma: none; sigma_sqrt (1/sigma^2); cosmap "
       "(2 / (pi (1 - 2 sigma + 2 sigma^2))), as diffusers' compute_loss_weighting_for_sd3. Kohya: "
       "weighting_scheme.", choices=("none", "sigma_sqrt", "cosmap"), advanced=True),
    _f("training", "model_prediction_type", CHOICE, "raw", "Flow prediction type",
       "Flow models: how the model's output is read before the loss against noise - image: raw (the velocity "
       "itself); additive (output + noisy input); sigma_scaled (noisy input - sigma x output, with "
       "weighting_scheme's loss weights). sd-scripts' --model_prediction_type (its default is sigma_scaled; its "
       "Flux docs recommend raw). Kohya: model_prediction_type.", choices=("raw", "additive", "sigma_scaled"),
       advanced=True),
    _f("training", "guidance_scale", FLOAT, 1.0, "Flux guidance",
       "Flux.1-dev: the value fed to its guidance embedding while training (sd-scripts' examples train with "
       "1.0; dev was distilled with guidance around 3.5). schnell and Chroma have no guidance input. Kohya: "
       "guidance_scale.", min=0.0, max=100.0, advanced=True),
    _f("training", "multires_noise_iterations", INT, 0, "Multires noise iterations",
       "Pyramid noise: add this many coarser noise levels (6-10 is typical); 0 is off. "
       "Kohya: multires_noise_iterations.", min=0, max=20, advanced=True),
    _f("training", "multires_noise_discount", FLOAT, 0.3, "Multires noise discount",
       "Weight factor per pyramid level (level i weighs discount^i). Kohya: multires_noise_discount.",
       min=0.0, max=1.0, advanced=True),
    _f("training", "ip_noise_gamma", FLOAT, 0.0, "Input perturbation",
       "Input perturbation: extra noise on the model's input only (0.1 is typical); 0 is off. "
       "Kohya: ip_noise_gamma.", min=0.0, max=1.0, advanced=True),
    _f("training", "debiased_estimation", BOOL, False, "Debiased estimation",
       "Weigh the loss by 1/sqrt(SNR) (1/(SNR+1) for v-prediction). Kohya: debiased_estimation_loss.",
       advanced=True),
    _f("training", "zero_terminal_snr", BOOL, False, "Zero terminal SNR",
       "Rescale the noise schedule so the last timestep is pure noise (Lin et al. 2023). Needs a "
       "v-prediction model. Kohya: zero_terminal_snr.", advanced=True),
    _f("training", "ema", BOOL, False, "EMA",
       "Keep an exponential moving average of the trained weights; it is what gets saved (see ema_save).",
       advanced=True),
    _f("training", "ema_decay", FLOAT, 0.999, "EMA decay",
       "Each update keeps this share of the average (0.999 ~ the last 1,000 updates).", min=0.0, max=1.0,
       min_exclusive=True, advanced=True),
    _f("training", "ema_every_n_steps", INT, 1, "EMA every N steps",
       "Update the average every this many optimizer steps.", min=1, max=1_000_000, advanced=True),
    _f("training", "ema_on_cpu", BOOL, True, "EMA on the CPU",
       "Keep the average in CPU memory (saves GPU memory); false keeps it on the training device.",
       advanced=True),
    _f("training", "ema_save", CHOICE, "ema", "EMA in saved files",
       "ema: saved files hold the EMA weights; both: NAME.safetensors holds the trained weights and "
       "NAME-ema.safetensors the EMA weights.", choices=("ema", "both"), advanced=True),
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
    _f("training", "base_quantization", CHOICE, "none", "Quantized base UNet",
       "Store the frozen denoiser (UNet, or the SD 3 / Flux / Chroma transformer) quantized, to fit a smaller "
       "GPU. fp8: linear and conv weights in float8 (e4m3fn), each upcast to the training dtype for its own "
       "forward, about 1 byte a parameter instead of 2 (SDXL ~2.4 GiB less, Flux.1 ~11 GiB less); needs "
       "mixed precision. Kohya: fp8_base / fp8_base_unet, and format-1 Kiln files' training.fp8_base = true. "
       "int8: the linear layers as bitsandbytes' LLM.int8 layers, the QLoRA way (SDXL ~2.1 GiB less; conv "
       "layers stay as they were). nf4: the linear layers in bitsandbytes' 4-bit NormalFloat, computing in the "
       "training dtype (QLoRA's usual setting; SDXL ~3.0 GiB less, the coarsest rounding of the four). What it "
       "does to the result: the LoRA is trained against a rounded base, and you apply it to the full-precision "
       "model, which differs slightly from what it learned against (usually a small loss of fidelity, more "
       "with nf4). For methods whose UNet is frozen (LoRA and its variants, DreamBooth with use_lora, textual "
       "inversion); int8 and nf4 not with DoRA or blocks_to_swap.",
       choices=("none", "fp8", "int8", "nf4"), advanced=True),
    _f("training", "t5_quantization", CHOICE, "none", "Quantized T5-XXL encoder",
       "Store the frozen T5-XXL text encoder (SD 3, Flux.1, Chroma) quantized. T5-XXL is 4.7 G parameters, about "
       "9.1 GiB in bf16, and sits alone on the GPU while caption embeddings are cached: on 8-12 GB cards that "
       "phase is the peak. fp8: its linear layers in float8 (e4m3fn), each upcast to the training dtype for its "
       "own forward (about 5.7 GiB); a model.t5xxl file already in fp8 (t5xxl_fp8_e4m3fn) keeps its own fp8 "
       "values (loading upcasts them once on the host; the T5 then holds the file's bytes). int8 / nf4: the linear layers as bitsandbytes' LLM.int8 / 4-bit NormalFloat "
       "layers (about 5.7 / 3.9 GiB). The feed-forward output layers (`wo`, which transformers keeps in fp32), "
       "the embedding and the norms stay as they are. What it does: the cached caption embeddings differ slightly "
       "from the full-precision encoder's (more with nf4), and the LoRA learns against those; it costs no step "
       "time when the outputs are cached. Kohya: fp8_base also stores the text encoders in fp8 (fp8_base_unet "
       "does not). Not for SD 1.x / 2.x / SDXL (no T5).",
       choices=("none", "fp8", "int8", "nf4"), advanced=True),
    _f("training", "blocks_to_swap", INT, 0, "Blocks swapped to CPU RAM",
       "Keep the frozen weights of this many of the denoiser's largest blocks in CPU RAM and copy each to the "
       "GPU just before it runs (forward and backward), overlapped with compute: less GPU memory, slower steps "
       "(each swapped block crosses the PCIe bus twice a step). SDXL's UNet has 32 blocks, its 6 largest the "
       "10-layer transformers (~0.65 GiB each in fp16/bf16); Flux.1 has 19 double and 38 single transformer "
       "blocks, SD 3.5 Large 38 joint ones. Two swapped blocks are on the GPU at a time. What learns stays on "
       "the GPU. Needs gradient checkpointing and a frozen denoiser. Kohya: blocks_to_swap.",
       min=0, max=200, advanced=True),
    _f("training", "fit", CHOICE, "off", "Fit my GPU",
       "auto: before training, turn on the cheapest memory savers that make the predicted peak fit the GPU "
       "(in order of their cost to speed: caches, gradient checkpointing, 8-bit optimizer state, an 8-bit base "
       "(fp8; int8 where fp8 is refused, as in fp32, when it is enough by itself), blocks swapped, and last a "
       "4-bit nf4 base in place of the 8-bit base and the swapping) and log the choice and why; `trainer check` "
       "shows the same choice. A 4-bit base trains the LoRA against a coarsely rounded model (see "
       "base_quantization). off: the settings as written.", choices=("off", "auto"), advanced=True),
    _f("training", "gpu_memory_gib", FLOAT, 0.0, "My GPU (GiB)",
       "The GPU memory to plan for (training.fit and the preflight card); 0 = the card the run finds "
       "(`trainer check --gpu 12GB` sets it for one check).", min=0.0, max=1024.0, advanced=True),
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
       "Also adapt the 3x3 conv layers, LoCon-style (Kohya: network_args conv_dim/conv_alpha). The same as "
       "lora.type = locon; with loha/lokr it adds their conv layers.",
       methods=_NETWORK, advanced=True),
    _f("lora", "conv_rank", INT, 0, "Conv rank",
       "Rank for the conv layers when train_conv is on; 0 uses rank.", min=0, max=1024, methods=_NETWORK,
       advanced=True),
    _f("lora", "conv_alpha", FLOAT, 0.0, "Conv alpha",
       "Alpha for the conv layers when train_conv is on; 0 uses alpha.", min=0.0, methods=_NETWORK,
       advanced=True),
    # --- [lora] which transformer blocks and sub-layers train (SD 3/3.5, Flux.1, Chroma)
    _f("lora", "train_blocks", CHOICE, "all", "Flux blocks",
       "Flux.1 / Chroma: which blocks get LoRA layers: all, double (the double-stream blocks) or single. "
       "Kohya: network_args train_blocks.", choices=("all", "double", "single"), methods=_NETWORK, advanced=True),
    _f("lora", "train_double_block_indices", STR, "", "Flux double blocks",
       'Flux.1 / Chroma: the double blocks that train, e.g. "0-5,10"; empty: all. SD 3/3.5: the joint blocks. '
       "Kohya: network_args train_double_block_indices.", methods=_NETWORK, advanced=True),
    _f("lora", "train_single_block_indices", STR, "", "Flux single blocks",
       'Flux.1 / Chroma: the single blocks that train, e.g. "0-19"; empty: all. Kohya: network_args '
       "train_single_block_indices.", methods=_NETWORK, advanced=True),
    _f("lora", "transformer_layers", STR_LIST, ["attn", "mlp", "mod"], "Transformer sub-layers",
       "SD 3/3.5, Flux.1, Chroma: which linear layers of a block train: attn (q/k/v and output projections), mlp "
       "(feed-forward; Flux's single-block linear1/linear2) and mod (the modulation layers; Chroma has none). "
       "sd-scripts trains all three.", methods=_NETWORK, advanced=True,
       check=lambda v: None if v and set(v) <= {"attn", "mlp", "mod"} else 'must be some of "attn", "mlp", "mod"'),
    # --- [lora] network types (LyCORIS algorithms through peft), DoRA, and continuing from a LoRA file
    _f("lora", "type", CHOICE, "lora", "Network type",
       "lora: attention (and feed-forward) layers; locon: also the conv layers (the same as train_conv = true); "
       "loha: Hadamard-product LoHa; lokr: Kronecker-product LoKr (LyCORIS' algo). loha/lokr adapt conv layers "
       "too when train_conv is on. Saved in the LyCORIS key layout ComfyUI and A1111 read.",
       choices=("lora", "locon", "loha", "lokr"), methods=_NETWORK),
    _f("lora", "dora", BOOL, False, "DoRA",
       "Weight-decomposed LoRA: also learn each output channel's magnitude (LyCORIS dora_wd, on the output "
       "axis). lora and locon only. Applied as trained by LyCORIS, peft and Kiln itself (previews, grid, lora "
       "tools), and in diffusers from the output.save_diffusers copy (diffusers drops DoRA from the .safetensors). "
       "NOT as trained by ComfyUI today (it divides by the base weight's norm, not the trained one's: a few % off "
       "per channel, more the longer you train) nor by AUTOMATIC1111 (input axis only). docs/lora.md says more.",
       methods=_NETWORK, advanced=True),
    _f("lora", "lokr_factor", INT, -1, "LoKr factor",
       "Split each weight's sides into factors near this number (LyCORIS factor); -1 picks sides near the "
       "square root. Used with type = lokr.", min=-1, max=1024, methods=_NETWORK, advanced=True,
       check=lambda v: "must be -1 (automatic) or a factor of at least 1" if v == 0 else None),
    _f("lora", "lokr_decompose_both", BOOL, False, "LoKr decompose both",
       "Also make LoKr's smaller Kronecker factor low-rank (LyCORIS decompose_both). Used with type = lokr.",
       methods=_NETWORK, advanced=True),
    _f("lora", "init_weights", PATH, "", "Start from LoRA file",
       "An existing Kiln or Kohya LoRA .safetensors to continue training from (Kohya: network_weights). "
       "rank/alpha left at their defaults are read from the file (Kohya: dim_from_weights); the file must "
       "match the base model's architecture and this job's layers. The optimizer starts fresh.",
       methods=_NETWORK, advanced=True),
    _f("sample", "grid_at_end", BOOL, False, "Checkpoint grid at the end",
       "When training finishes, also draw every saved checkpoint x strength 0.5/0.75/1.0 over the sample prompts "
       "into OUTPUT/grid/ (grid.png and index.html; the same as `python -m trainer grid JOB`).",
       methods=_NETWORK, advanced=True),
    # --- [dreambooth]
    _f("dreambooth", "instance_prompt", STR, "", "Instance prompt",
       'Prompt naming your subject with a rare token, e.g. "a photo of sks dog". Used for images without '
       "a caption.", methods=("dreambooth",)),
    _f("dreambooth", "class_prompt", STR, "", "Class prompt",
       'Prompt for the generic class, e.g. "a photo of a dog"; class images are generated from it. Needed '
       "with prior preservation.", methods=("dreambooth",)),
    _f("dreambooth", "class_negative_prompt", STR, "", "Class negative prompt",
       "Negative prompt used when generating class images (also LoRA's, from dataset.reg_prompt).",
       methods=_NETWORK, advanced=True),
    _f("dreambooth", "prior_preservation", BOOL, True, "Prior preservation",
       "Also train on generated class images so the model keeps what the class looks like in general "
       "(Kohya: reg_data_dir).", methods=("dreambooth",)),
    _f("dreambooth", "class_images_per_instance", INT, 200, "Class images per subject image",
       "Class images to generate for each subject image (200 x the number of subject images in all).",
       min=1, max=10_000, methods=("dreambooth",)),
    _f("dreambooth", "prior_loss_weight", FLOAT, 1.0, "Prior loss weight",
       "Weight of the class-image loss against the subject-image loss; for LoRA, of the regularisation "
       "images (dataset.reg_dir or generated from dataset.reg_prompt, concepts with is_regularization).",
       min=0.0, max=100.0,
       methods=("lora", "dreambooth"), advanced=True),
    _f("dreambooth", "class_dir", PATH, "", "Class image folder",
       "Where class images are kept and reused; empty uses a shared cache keyed by model and class prompt. "
       "Your own class images may be put here: they count, Kiln only adds the missing ones (named "
       "kiln-class-NNNNN.png) and never changes a file that is there. Kohya: reg_data_dir.",
       methods=("dreambooth",), advanced=True),
    _f("dreambooth", "class_steps", INT, 30, "Class image steps",
       "Denoising steps for each generated class image (also LoRA's, from dataset.reg_prompt).", min=1,
       max=1000, methods=_NETWORK, advanced=True),
    _f("dreambooth", "class_guidance_scale", FLOAT, 7.5, "Class image CFG scale",
       "Classifier-free guidance scale for generating class images (also LoRA's, from dataset.reg_prompt).",
       min=0.0, max=100.0, methods=_NETWORK, advanced=True),
    _f("dreambooth", "class_sampler", CHOICE, "ddim", "Class image sampler",
       "Scheduler used to generate class images (also LoRA's, from dataset.reg_prompt).",
       choices=("ddim", "euler_a", "euler", "dpmpp_2m"), methods=_NETWORK, advanced=True),
    _f("dreambooth", "class_batch_size", INT, 4, "Class image batch",
       "Class images generated at once (also LoRA's, from dataset.reg_prompt); lower it if generation runs out "
       "of GPU memory.", min=1, max=256, methods=_NETWORK, advanced=True),
    _f("dreambooth", "use_lora", BOOL, False, "DreamBooth-LoRA",
       "Train LoRA layers (the [lora] settings) instead of the full UNet: far less memory, a small file.",
       methods=("dreambooth",)),
    _f("dreambooth", "train_text_encoder", BOOL, False, "Train text encoder",
       "Also train the text encoder (its LoRA layers with use_lora).", methods=("dreambooth",)),
    _f("dreambooth", "stop_text_encoder_step", INT, 0, "Stop text encoder at step",
       "Freeze the text encoder after this many steps; 0 trains it to the end. Kohya: stop_text_encoder_training.",
       min=0, max=10_000_000, methods=("dreambooth",), advanced=True),
    # --- [finetune]
    _f("finetune", "train_text_encoder", BOOL, False, "Train text encoder",
       "Also train the text encoder(s) at training.text_encoder_lr (Kohya fine_tune.py: train_text_encoder). "
       "Off: only the UNet learns, and the captions' encodings can be cached.", methods=("finetune",)),
    _f("finetune", "stop_text_encoder_step", INT, 0, "Stop text encoder at step",
       "Freeze the text encoder after this many steps; 0 trains it to the end.",
       min=0, max=10_000_000, methods=("finetune",), advanced=True),
    # --- [textual_inversion]
    _f("textual_inversion", "token", STR, "", "Token",
       'The new word to learn, e.g. "<my-style>"; use it in prompts. Kohya: token_string.',
       methods=("textual_inversion",), check=_single_token),
    _f("textual_inversion", "init_word", STR, "", "Initial word",
       'An existing word close to the concept ("dog", "painting"); every vector starts from its embedding. '
       'Words the tokenizer splits into several tokens ("watercolor painting") start from their mean.',
       methods=("textual_inversion",), check=_words_not_blank),
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
       "(SD 1.x/2.x LoRA, and DreamBooth and fine-tune checkpoints). Kohya: save_model_as = diffusers.",
       advanced=True),
    _f("output", "keep_states", INT, 3, "Training states kept",
       "How many recent resumable training states to keep; 0 saves none (no resume).", min=0, max=1000,
       advanced=True),
    _f("output", "overwrite", BOOL, False, "Overwrite",
       "Allow replacing an existing NAME.safetensors. When false, a job refuses to start rather than replace "
       "a file you have.", advanced=True),
    # --- [output] per-epoch saves and pruning (issue 15)
    _f("output", "save_every_n_epochs", INT, 0, "Save every N epochs",
       "Also save a checkpoint (and a training state) at the end of every this many epochs; 0 is off. "
       "Kohya: save_every_n_epochs.", min=0, max=100_000),
    _f("output", "keep_last_n_saves", INT, 0, "Checkpoints kept",
       "Keep only this many recent NAME-stepNNNNNNNN checkpoint files, deleting older ones Kiln wrote (never the "
       "final file or anything else, nor the best by validation); 0 keeps all. Like Kohya's "
       "save_last_n_epochs, but counting every checkpoint.", min=0, max=100_000,
       advanced=True),
    # --- [sample]
    _f("sample", "prompts", STR_LIST, [], "Sample prompts",
       "Prompts for preview images, in Kohya prompt-line syntax: text, then --n negative, --w width, "
       "--h height, --s steps, --l CFG scale, --d seed.", check=prompt_lines_problem),
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
    # --- [sample] per-epoch previews (issue 15)
    _f("sample", "every_n_epochs", INT, 0, "Sample every N epochs",
       "Generate previews at the end of every this many epochs; 0 is off. Kohya: sample_every_n_epochs.",
       min=0, max=100_000),
    _f("sample", "at_first_step", BOOL, False, "Sample before training",
       "Also generate previews before the first step, to see the base model. Kohya: sample_at_first.",
       advanced=True),
    _f("sample", "with_ema", BOOL, True, "Sample with EMA weights",
       "With training.ema, make previews with the EMA weights; false uses the trained weights.", advanced=True),
    # --- [validation] held-out loss and early stopping (issue 15)
    _f("validation", "split", FLOAT, 0.0, "Validation split",
       "Fraction of the subject images held out of training for validation (chosen by seed); 0 is off.",
       min=0.0, max=0.5),
    _f("validation", "dir", PATH, "", "Validation folder",
       "A folder of validation images (with captions), instead of a split of the training images."),
    _f("validation", "every_n_steps", INT, 0, "Validate every N steps",
       "Also compute the validation loss every this many steps; it is always computed at each save and at "
       "the end, so every checkpoint has its loss. 0: only then.",
       min=0, max=10_000_000),
    _f("validation", "seed", INT, 1234, "Validation seed",
       "Seed of the fixed noises and timesteps, so every validation (and every run) is comparable.",
       min=0, max=2**32 - 1, advanced=True),
    _f("validation", "early_stopping_patience", INT, 0, "Early stopping patience",
       "Stop (saving first, like a user stop) after this many validations without a new best loss; 0 is off.",
       min=0, max=10_000),
    _f("validation", "loss", CHOICE, "training", "Validation loss",
       "training: the loss the run optimises (training.loss with its Huber schedule, min-SNR/debiased "
       "weighting, noise options, masks and loss weights) at fixed timesteps spread over min_timestep to "
       "max_timestep, as Kohya validates; mse: plain mean squared error over all timesteps, which compares "
       "runs with different loss settings. Both are fixed draws, comparable between the checkpoints of a run, "
       "and the same with default loss settings.", choices=("training", "mse"), advanced=True),
    # --- [logging] optional Weights & Biases (issue 15)
    _f("logging", "wandb", BOOL, False, "Weights & Biases",
       "Also log the TensorBoard scalars and samples to Weights & Biases (needs `pip install wandb` and a "
       "login); nothing is sent when false.", advanced=True),
    _f("logging", "wandb_project", STR, "kiln", "W&B project", "Weights & Biases project name.", advanced=True),
    _f("logging", "wandb_run_name", STR, "", "W&B run name",
       "Weights & Biases run name; empty uses output.name.", advanced=True),
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


# --- sensible ranges (ui): values people actually use; outside them (but still allowed) the UI asks before Start.
SENSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "training.learning_rate": (1e-7, 1e-2),
    "training.text_encoder_lr": (1e-7, 1e-2),
    "training.max_steps": (1, 200_000),
    "training.epochs": (1, 1000),
    "training.batch_size": (1, 64),
    "training.weight_decay": (0.0, 0.5),
    "training.lr_warmup_steps": (0, 20_000),
    "dataset.repeats": (1, 200),
    "lora.rank": (1, 256),
    "lora.alpha": (0.1, 256),
    "lora.conv_rank": (1, 128),
    "dreambooth.class_images_per_instance": (1, 1000),
    "dreambooth.prior_loss_weight": (0.0, 5.0),
    "textual_inversion.vectors": (1, 16),
    "sample.cfg_scale": (1.0, 20.0),
    "sample.steps": (5, 150),
}


def sensible_range(name: str) -> tuple[float, float] | None:
    """(low, high) that almost every real job stays within, or None when any allowed value is ordinary."""
    return SENSIBLE_RANGES.get(name)
