"""docs/config.md, rendered from the schema and the Kohya migration table so the docs cannot drift.
Regenerate with: .venv/bin/python -m trainer.config.docs"""
from __future__ import annotations

from pathlib import Path

from ..atomic import write_text_atomic
from .kohya import IMPLIED_KEYS, KOHYA_KEYS
from .migrate import MIGRATIONS
from .schema import CURRENT_VERSION, FIELD_TYPES, METHODS, SECTION_HELP, SECTIONS, Field, section_fields
from .values import allowed_text, format_value

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "config.md"

_INTRO = f"""# Job file reference

<!-- Generated from trainer/config/schema.py by `.venv/bin/python -m trainer.config.docs`; do not edit. -->

A job is one TOML file: a top-level `method` and `version`, then one table per section. Keys left out take
the default. Relative paths resolve against the job file's folder. The current format version is
{CURRENT_VERSION}; older files and Kohya_ss-style files (flat keys such as `network_dim`) are migrated when read,
and a note is printed for every key that was mapped or ignored. The versions: {"; ".join(
    f"{m.from_version} -> {m.to_version}: {m.note}" for m in MIGRATIONS)}.

Any key can be overridden on the command line: `--set section.key=value` (top-level keys without a section,
e.g. `--set method=lora`). The value is read as a TOML value (`--set training.learning_rate=5e-5`,
`--set sample.prompts='["a cat", "a dog"]'`); text may be left unquoted, and booleans also accept
yes/no/1/0. Relative paths in overrides resolve against the current directory.

Types: {", ".join(f"`{t}`" for t in FIELD_TYPES)}. Methods: {", ".join(f"`{m}`" for m in METHODS)}.
Keys marked *advanced* are in the web UI's advanced section.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(field: Field) -> str:
    allowed = allowed_text(field)
    if field.multiple_of:
        allowed += f", multiple of {field.multiple_of}"
    if field.required:
        unless = f" unless `{field.required_unless}` is set" if field.required_unless else ""
        allowed = f"**required**{unless}; " + allowed
    methods = "all" if set(field.methods) == set(METHODS) else ", ".join(field.methods)
    description = field.help + (" *(advanced)*" if field.advanced else "")
    # None: an item field that takes its section's key of the same name
    default = (f"as [{field.section.rpartition('.')[0]}]" if field.default is None
               else f"`{format_value(field.default)}`")
    cells = [f"`{field.key}`", field.type, default, allowed, methods, description]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table_list_doc(field: Field) -> str:
    return (f"### [[{field.name}]]\n\n{field.help} Write one table per entry; a key left out takes its default "
            f"(\"as [{field.section}]\": the [{field.section}] key of the same name). Messages number the tables "
            f"from 1: `{field.name}[2].repeats` is the second table's repeats.\n\n"
            "| Key | Type | Default | Allowed | Methods | Description |\n|---|---|---|---|---|---|\n"
            + "\n".join(_row(item) for item in field.item_fields) + "\n")


def render_config_doc() -> str:
    """The whole of docs/config.md."""
    parts = [_INTRO]
    for section in SECTIONS:
        title = "Top level" if not section else f"[{section}]"
        parts.append(f"## {title}\n\n{SECTION_HELP[section]}\n\n"
                     "| Key | Type | Default | Allowed | Methods | Description |\n|---|---|---|---|---|---|\n"
                     + "\n".join(_row(f) for f in section_fields(section)) + "\n")
        parts += [_table_list_doc(f) for f in section_fields(section) if f.item_fields]
    kohya_rows = "\n".join([f"| `{k.kohya}` | `{_cell(k.target)}` |" for k in KOHYA_KEYS]
                           + [f"| `{kohya}` | {_cell(target)} |" for kohya, target in IMPLIED_KEYS])
    parts.append("## Kohya_ss configs\n\nA Kohya GUI config (`.json`, from its LoRA, DreamBooth, fine-tune or "
                 "textual-inversion tab) or an sd-scripts TOML file (flat argument names, also inside Kohya's "
                 "`[*_arguments]` tables; or any file with `version = 0`) is read as a Kohya file: `trainer check "
                 "FILE` and `trainer run FILE` take it directly, and `python -m trainer convert KOHYA.json -o "
                 "job.toml` writes it as a Kiln job with the notes as comments. Numbers written as strings "
                 '(`"0.0001"`) or whole numbers written as floats (`64.0`) are read as the GUI means them; empty '
                 "values keep Kiln's default. Each key leaves a migration note: what it became, or why it was "
                 "ignored (keys the GUI writes as off or empty leave none). What Kiln cannot train is refused "
                 "with the key and value named: LoRA types other than Standard, LoCon, LoHa, LoKr and Flux1 (iA3, "
                 "GLoRA, DyLoRA, LoRA-FA, OFT, native fine-tuning), and of SD 3 / Flux.1 / Chroma what Kiln does "
                 "not train for them: DreamBooth and full fine-tunes (the GUI's SD3/Flux DreamBooth and "
                 "fine-tune tabs, sd3_train.py / flux_train.py) and `train_t5xxl`.\n\n"
                 "SD 3 / Flux.1 / Chroma LoRA configs (the GUI's `flux1_checkbox` / `sd3_checkbox`, sd-scripts' "
                 "`network_module = \"networks.lora_flux\"` / `\"networks.lora_sd3\"`, `model_type = "
                 "\"chroma\"`) import as LoRA jobs of that family (`model.arch`): `clip_l`, `clip_g`, `t5xxl` "
                 "and `ae` become `model.clip_l`, `model.clip_g`, `model.t5xxl` and `model.vae`; `fp8_base` / "
                 "`fp8_base_unet` become `training.base_quantization = \"fp8\"` (and `fp8_base` without "
                 "`fp8_base_unet` also `training.t5_quantization = \"fp8\"`: sd-scripts then loads T5-XXL as "
                 "stored, keeping an fp8 file in fp8); `blocks_to_swap`, "
                 "`guidance_scale`, `discrete_flow_shift`, `sigmoid_scale` map one to one. sd-scripts reads the timestep options per script, and so does the import: for "
                 "Flux and Chroma `timestep_sampling` sigma / uniform / shift / flux_shift keep their names and "
                 "sigmoid is Kiln's `logit_normal` (mean 0, std 1), and with sigma a `weighting_scheme` of "
                 "logit_normal or mode becomes that draw (its `logit_mean` / `logit_std` / `mode_scale` kept; "
                 "with the other samplings they are unused and dropped with a note); a Flux file without "
                 "`guidance_scale` or `timestep_sampling` gets sd-scripts' defaults (3.5, sigma). Flux and "
                 "Chroma's `model_prediction_type` (raw, additive, sigma_scaled) becomes "
                 "`training.model_prediction_type` (unset: sd-scripts' default sigma_scaled), and with "
                 "sigma_scaled a `weighting_scheme` of sigma_sqrt or cosmap becomes `training.weighting_scheme` "
                 "(sd-scripts weighs the loss only then; otherwise it is dropped with a note). For SD 3 "
                 "`weighting_scheme` picks the draw (logit_normal, mode, uniform) or the loss weights "
                 "(sigma_sqrt, cosmap), and `training_shift` on a logit-normal draw at mean 0 is Kiln's `shift` "
                 "draw. `network_args` `train_blocks`, `train_double_block_indices`, `train_single_block_indices` "
                 "(lora_sd3's `train_block_indices`) become the `lora.` keys of the same names. The SD options "
                 "the GUI writes into every config (`min_snr_gamma`, `noise_offset`, `clip_skip`, ...) are "
                 "dropped with the reason for a flow model, as the Flux/SD3 ones are for an SD model; the "
                 "memory options Kiln does without (`split_mode`, `cpu_offload_checkpointing`, `mem_eff_save`, "
                 "per-layer ranks such as `img_attn_dim`, `apply_t5_attn_mask`, `t5xxl_max_token_length`) are "
                 "noted as ignored.\n\n"
                 "The GUI's `LoRA_type` (Standard, Kohya LoCon, LoCon, LyCORIS/LoCon, LyCORIS/LoHa, LyCORIS/LoKr) "
                 "and sd-scripts' `network_module = \"lycoris.kohya\"` with `network_args` (`algo=`, `conv_dim=`, "
                 "`conv_alpha=`, `dora_wd=`, `factor=`, `decompose_both=`) become `lora.type` and its options; "
                 "LoCon is a LoRA with `lora.train_conv = true`. LyCORIS adapts the conv layers unless its preset "
                 "leaves them out, so its LoHa/LoKr jobs train them too; LyCORIS' `factor = -1` is "
                 "`lora.lokr_factor`'s default (automatic). `network_weights` becomes `lora.init_weights`, and "
                 "with `dim_from_weights` the rank and alpha are read from that file.\n\n"
                 "The GUI's `lr_warmup` is a percentage (it becomes `training.lr_warmup_ratio`); a non-zero "
                 "`text_encoder_lr` (GUI), or sd-scripts without `network_train_unet_only`, trains the text "
                 "encoder; `reg_data_dir` is `dataset.reg_dir` for LoRA and `dreambooth.class_dir` for "
                 "DreamBooth, and a DreamBooth config without it turns prior preservation off. The GUI's "
                 "`noise_offset_type` picks `noise_offset` (Original) or the `multires_noise_*` keys (Multires); "
                 "`huber_c` and `huber_schedule` count only with a huber or smooth_l1 `loss_type`. "
                 "`save_last_n_epochs` becomes `output.keep_last_n_saves` when only epoch saves are made, and "
                 "`save_last_n_steps` = N with `save_every_n_steps` = S becomes N // S + 1 kept files (what "
                 "Kohya keeps) when only step saves are made; Kiln counts both kinds of save together, so with "
                 "both on the limit is noted, not converted.\n\n"
                 "A config of sd-scripts' `fine_tune.py` / `sdxl_train.py` with a metadata file (`in_json`) or of "
                 "the GUI's Fine-tune tab (`image_folder`, `dataset_repeats`, `train_text_encoder`, its metadata "
                 "switches) becomes `method = \"finetune\"`: Kiln reads the caption files beside the images "
                 "instead of the metadata file. What Kohya accepts and Kiln trains another way is translated "
                 "with a note: a `bucket_reso_steps` that is not a multiple of 8 becomes the nearest one (at "
                 "least 8); a LoKr `network_dim`/`conv_dim` above 1024 (LyCORIS' \"full matrix\" convention, "
                 "often 100000) becomes rank = alpha = 1024, which keeps both Kronecker factors whole and "
                 "unscaled as LyCORIS does; the GUI's `additional_parameters` box is read as sd-scripts "
                 "arguments (`--network_train_unet_only`, `--max_grad_norm=0`, ...) that win over the GUI's "
                 "own keys; plain Lion is Kiln's 8-bit Lion; Adafactor with its relative step (Kohya's default "
                 "for it) drops the file's learning rates, which it ignores; a file that names no optimizer "
                 "gets sd-scripts' AdamW.\n\n"
                 "| Kohya key | Kiln key |\n|---|---|\n" + kohya_rows + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    from .sections_gen import SECTIONS_PATH, render_sections_module

    write_text_atomic(DOC_PATH, render_config_doc())
    write_text_atomic(SECTIONS_PATH, render_sections_module())
    print(f"wrote {DOC_PATH} and {SECTIONS_PATH}")
