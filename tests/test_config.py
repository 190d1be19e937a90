"""Tests for trainer.config: schema, TOML load/validate/save, overrides, paths, migration, docs."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trainer.config import (CURRENT_VERSION, FIELDS, METHODS, SECTION_CLASSES, SECTIONS, ConfigError, JobConfig,
                            TrainingSection, fields_for, list_presets, load_job, parse_job, presets_dir,
                            save_job, section_fields)
from trainer.config.docs import DOC_PATH, render_config_doc
from trainer.config.values import convert_value

LORA_JOB = """\
method = "lora"
[model]
base = "builtin:tiny-sd15"
[dataset]
dir = "images"
"""


def write(folder: Path, text: str, name: str = "job.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def error_text(path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_job(write(path, text), overrides)
    return str(info.value)


def minimal(method: str = "lora", **sections: dict) -> dict:
    data: dict = {"method": method, "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": "/data/images"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


# --- the package stays light ------------------------------------------------------------------------------

def test_import_does_not_load_torch_diffusers_or_gradio():
    code = ("import sys, trainer.config; heavy = [m for m in ('torch', 'diffusers', 'gradio', 'transformers') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the schema ---------------------------------------------------------------------------------------------

def test_every_field_is_complete_and_its_default_is_valid():
    for field in FIELDS:
        assert field.section in SECTIONS and field.label and field.help, field.name
        assert set(field.methods) <= set(METHODS) and field.methods, field.name
        if field.type == "choice":
            assert field.choices, field.name
        if not field.required:
            _, problem = convert_value(field, field.default)
            assert problem is None, problem
    assert len({f.name for f in FIELDS}) == len(FIELDS)


def test_fields_for_method_filters_by_method():
    lora = {f.name for f in fields_for("lora")}
    ti = {f.name for f in fields_for("textual_inversion")}
    dreambooth = {f.name for f in fields_for("dreambooth")}
    assert "lora.rank" in lora and "textual_inversion.token" not in lora
    assert "textual_inversion.token" in ti and not any(n.startswith("lora.") for n in ti)
    assert {"dreambooth.instance_prompt", "lora.rank"} <= dreambooth
    assert "training.learning_rate" in lora & ti & dreambooth
    with pytest.raises(ValueError):
        fields_for("hypernetwork")


def test_jobconfig_has_one_attribute_per_schema_section():
    assert tuple(SECTION_CLASSES) == SECTIONS[1:]
    cfg = JobConfig(method="lora")
    for section in SECTIONS[1:]:
        assert isinstance(getattr(cfg, section), SECTION_CLASSES[section])


def test_section_classes_can_be_built_directly_with_schema_defaults():
    section = TrainingSection(learning_rate=3e-4)
    assert section.learning_rate == 3e-4 and section.optimizer == "adamw8bit" and section.batch_size == 1
    first, second = JobConfig(method="lora"), JobConfig(method="lora")
    first.sample.prompts.append("a cat")
    assert second.sample.prompts == []  # defaults are not shared between instances


# --- defaults -----------------------------------------------------------------------------------------------

def test_keys_left_out_take_the_schema_defaults(tmp_path):
    cfg = load_job(write(tmp_path, LORA_JOB))
    assert cfg.method == "lora" and cfg.version == CURRENT_VERSION
    assert cfg.source == str(tmp_path / "job.toml")
    assert cfg.warnings == [] and cfg.migration_notes == []
    given = {"method", "model.base", "dataset.dir", "output.dir"}
    for field in FIELDS:
        if field.name not in given:
            assert cfg.get(field.name) == field.default, field.name
    assert cfg.training.learning_rate == 1e-4 and cfg.training.optimizer == "adamw8bit"
    assert cfg.dreambooth.class_images_per_instance == 200 and cfg.lora.rank == 16


def test_parse_job_accepts_a_dict_and_converts_ints_for_float_fields():
    cfg = parse_job(minimal(lora={"alpha": 4}))
    assert cfg.source == "<memory>"
    assert cfg.lora.alpha == 4.0 and isinstance(cfg.lora.alpha, float)


# --- overrides ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, name, expected", [
    ("training.learning_rate=5e-5", "training.learning_rate", 5e-5),
    ("training.batch_size=4", "training.batch_size", 4),
    ("lora.alpha=4", "lora.alpha", 4.0),
    ("training.gradient_checkpointing=yes", "training.gradient_checkpointing", True),
    ("training.cache_latents=0", "training.cache_latents", False),
    ("training.cache_latents=false", "training.cache_latents", False),
    ("training.optimizer=prodigy", "training.optimizer", "prodigy"),
    ("training.mixed_precision=no", "training.mixed_precision", "no"),
    ("model.base=org/name", "model.base", "org/name"),
    ("output.name=123", "output.name", "123"),
    ('output.name="my lora"', "output.name", "my lora"),
    ("sample.prompts=a cat --n blurry --s 10", "sample.prompts", ["a cat --n blurry --s 10"]),
    ('sample.prompts=["a cat", "a dog"]', "sample.prompts", ["a cat", "a dog"]),
    (" dataset.resolution = 768 ", "dataset.resolution", 768),
])
def test_overrides_are_converted_to_the_field_type(override, name, expected):
    cfg = parse_job(minimal(), overrides=[override])
    value = cfg.get(name)
    assert value == expected and type(value) is type(expected)


def test_override_can_change_the_method(tmp_path):
    cfg = load_job(write(tmp_path, LORA_JOB), ["method=textual_inversion", "textual_inversion.token=<x>",
                                               "textual_inversion.init_word=dog"])
    assert cfg.method == "textual_inversion" and cfg.textual_inversion.token == "<x>"


def test_bad_override_names_the_override_key_value_and_what_is_allowed(tmp_path):
    message = error_text(tmp_path, LORA_JOB, ("training.batch_size=four",))
    assert message == ('--set training.batch_size=four: training.batch_size = "four" has the wrong type '
                       "(must be a whole number)")


def test_override_problems_unknown_key_and_missing_equals(tmp_path):
    message = error_text(tmp_path, LORA_JOB, ("training.rank=8", "training.seed", "trainig.seed=1"))
    lines = message.splitlines()
    assert lines[0] == "--set training.rank=8: `training.rank` is not a key of [training]; did you mean `lora.rank`?"
    assert lines[1] == "--set training.seed: expected section.key=value"
    assert lines[2] == "--set trainig.seed=1: [trainig] is not a section; did you mean [training]?"


# --- error messages -----------------------------------------------------------------------------------------

def test_out_of_range_names_file_key_value_and_range(tmp_path):
    message = error_text(tmp_path, LORA_JOB + "[training]\nlearning_rate = -1\n")
    assert message == f"{tmp_path / 'job.toml'}: training.learning_rate = -1 is out of range (must be > 0)"


@pytest.mark.parametrize("extra, expected", [
    ("[training]\nbatch_size = 0\n", "training.batch_size = 0 is out of range (must be between 1 and 256)"),
    ('[training]\nbatch_size = "2"\n', 'training.batch_size = "2" has the wrong type (must be a whole number)'),
    ("[training]\nseed = 1.5\n", "training.seed = 1.5 has the wrong type (must be a whole number)"),
    ('[training]\ncache_latents = "yes"\n', 'training.cache_latents = "yes" has the wrong type (must be true or '
                                            'false)'),
    ("[training]\nlearning_rate = nan\n", "training.learning_rate = nan is not a finite number"),
    ('[training]\noptimizer = "AdamW8bit"\n', 'training.optimizer = "AdamW8bit" is not allowed (must be one of '
                                              '"adamw8bit", "adamw", "lion8bit", "prodigy", "adafactor", "dadaptadam", '
                                                  '"dadaptlion", "came", "adamwschedulefree", "pagedadamw8bit"); did '
                                                  'you mean "adamw8bit"?'),
    ("[dataset]\nresolution = 500\n", "dataset.resolution = 500 is not a multiple of 8"),
    ('[dataset]\ncaption_extension = "txt"\n', 'dataset.caption_extension = "txt" is not valid (must be a file '
                                               'extension starting with a dot, like ".txt")'),
    ('[output]\nname = "../evil"\n', 'output.name = "../evil" is not valid (must be a safe file name'),
    ('[output]\nname = "model.safetensors"\n', "must be a name without an extension"),
    ('[sample]\nprompts = "a cat"\n', 'sample.prompts = "a cat" has the wrong type (must be a list of strings)'),
    ("[lora]\nrank = 2000\n", "lora.rank = 2000 is out of range (must be between 1 and 1024)"),
    ('model = "x"\n', "`model` must be a table"),
])
def test_invalid_values_are_explained(tmp_path, extra, expected):
    # Appending a second [dataset]/[model] table would be a TOML error, so the extra text replaces LORA_JOB's.
    job = LORA_JOB if not extra.startswith(("[dataset]", "model =")) else 'method = "lora"\n'
    if extra.startswith("[dataset]"):
        extra = extra.replace("[dataset]\n", '[dataset]\ndir = "images"\n') + '[model]\nbase = "builtin:x"\n'
    elif extra.startswith("model ="):
        extra += '[dataset]\ndir = "images"\n'
    message = error_text(tmp_path, job + extra)
    assert message.startswith(f"{tmp_path / 'job.toml'}: ")
    assert expected in message


def test_several_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_job(write(tmp_path, LORA_JOB + "[training]\nlearning_rate = 0\nbatch_size = -1\nepoch = 3\n"))
    problems = info.value.problems
    assert len(problems) == 3
    assert any("training.learning_rate = 0" in p for p in problems)
    assert any("training.batch_size = -1" in p for p in problems)
    assert any("did you mean `training.epochs`?" in p for p in problems)
    assert str(info.value) == "\n".join(problems)


@pytest.mark.parametrize("extra, expected", [
    ("[training]\nrank = 8\n", "`training.rank` is not a key of [training]; did you mean `lora.rank`?"),
    ("[training]\nlerning_rate = 1e-4\n",
     "`training.lerning_rate` is not a key of [training]; did you mean `training.learning_rate`?"),
    ("[lora]\nnetwork_dim = 8\n", "`lora.network_dim` is not a key of [lora]"),
    ("[trainig]\nseed = 1\n", "[trainig] is not a section; did you mean [training]?"),
    ("[optimizer]\nname = 1\n", "[optimizer] is not a section (sections: model, dataset"),
])
def test_unknown_keys_and_sections_suggest_the_closest(tmp_path, extra, expected):
    assert expected in error_text(tmp_path, LORA_JOB + extra)


def test_top_level_key_of_a_section_suggests_the_section(tmp_path):
    message = error_text(tmp_path, "version = 1\nlearning_rate = 1e-4\n" + LORA_JOB)
    assert "`learning_rate` is not a top-level key; did you mean `training.learning_rate`?" in message


def test_toml_syntax_error_names_file_and_line(tmp_path):
    message = error_text(tmp_path, 'method = "lora"\n[training]\nbatch_size 4\n')
    assert message.startswith(f"{tmp_path / 'job.toml'}: TOML syntax error")
    assert "line 3" in message


def test_missing_file_and_missing_required_keys(tmp_path):
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(tmp_path / "absent.toml")
    message = error_text(tmp_path, "[training]\nseed = 1\n")
    for name in ("method", "model.base", "dataset.dir"):
        assert f"{tmp_path / 'job.toml'}: {name} is required but missing" in message


def test_an_invalid_required_value_is_not_also_reported_missing(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_job(write(tmp_path, LORA_JOB.replace('"lora"', '"loraa"')))
    assert len(info.value.problems) == 1 and 'method = "loraa" is not allowed' in str(info.value)


# --- cross-field checks and warnings -------------------------------------------------------------------------

def test_dreambooth_needs_instance_prompt_and_class_prompt_with_prior_preservation():
    with pytest.raises(ConfigError) as info:
        parse_job(minimal("dreambooth"))
    assert info.value.problems == [
        '<memory>: dreambooth.instance_prompt is required when method = "dreambooth" (it is empty)',
        "<memory>: dreambooth.class_prompt is required when dreambooth.prior_preservation = true (it is empty)"]
    cfg = parse_job(minimal("dreambooth", dreambooth={"instance_prompt": "sks dog", "prior_preservation": False}))
    assert cfg.dreambooth.instance_prompt == "sks dog"


def test_textual_inversion_needs_token_and_init_word():
    with pytest.raises(ConfigError) as info:
        parse_job(minimal("textual_inversion"))
    assert "textual_inversion.token is required" in str(info.value)
    assert "textual_inversion.init_word is required" in str(info.value)
    with pytest.raises(ConfigError, match="must be one word"):
        parse_job(minimal("textual_inversion", textual_inversion={"token": "my style", "init_word": "art"}))


def test_bucket_range_and_cache_latents_with_random_crop_conflict():
    with pytest.raises(ConfigError) as info:
        parse_job(minimal(dataset={"min_bucket_reso": 512, "max_bucket_reso": 256, "random_crop": True}))
    message = str(info.value)
    assert "dataset.max_bucket_reso = 256 is smaller than dataset.min_bucket_reso = 512" in message
    assert "training.cache_latents = true conflicts with dataset.random_crop = true" in message
    parse_job(minimal(dataset={"random_crop": True}, training={"cache_latents": False}))
    with pytest.raises(ConfigError, match="dataset.resolution = 128 is outside the bucket range"):
        parse_job(minimal(dataset={"resolution": 128, "min_bucket_reso": 256, "max_bucket_reso": 1024}))
    assert parse_job(minimal(dataset={"resolution": 128, "min_bucket_reso": 256, "enable_bucket": False}))
    # sizes left at 0 are checked once the model fills them in (trainer/config/native.py)
    cfg = parse_job(minimal(dataset={"resolution": 128, "min_bucket_reso": 256}))
    with pytest.raises(ConfigError, match="dataset.resolution = 128 is outside the bucket range"):
        from trainer.config.native import apply_native_sizes
        apply_native_sizes(cfg, "sd15")


def test_complete_false_allows_unfilled_values_but_not_bad_ones():
    cfg = parse_job({"method": "dreambooth"}, complete=False)
    assert cfg.model.base == "" and cfg.dreambooth.instance_prompt == ""
    with pytest.raises(ConfigError, match="method is required"):
        parse_job({}, complete=False)
    with pytest.raises(ConfigError, match="training.seed = -1"):
        parse_job({"method": "lora", "training": {"seed": -1}}, complete=False)


def test_suspicious_values_give_warnings_not_errors():
    prodigy = parse_job(minimal(training={"optimizer": "prodigy"}))
    assert any("Prodigy" in w and "training.learning_rate = 0.0001" in w for w in prodigy.warnings)
    high = parse_job(minimal(training={"learning_rate": 0.1}))
    assert any("unusually high for LoRA" in w for w in high.warnings)
    unused = parse_job(minimal("textual_inversion", textual_inversion={"token": "<t>", "init_word": "dog"},
                               lora={"rank": 4}))
    assert unused.warnings == ['lora.rank = 4 is set but method "textual_inversion" does not use it']
    assert parse_job(minimal()).warnings == []


# --- paths --------------------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_job_folder(tmp_path, monkeypatch):
    job_dir, elsewhere = tmp_path / "jobs" / "a", tmp_path / "elsewhere"
    job_dir.mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "local" / "model").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    path = write(job_dir, 'method = "dreambooth"\n[model]\nbase = "../models/sd15.safetensors"\nvae = "org/vae"\n'
                          '[dataset]\ndir = "images"\n[dreambooth]\ninstance_prompt = "sks"\nclass_prompt = "dog"\n'
                          'class_dir = "~/class"\n[output]\ndir = "/abs/out"\n')
    cfg = load_job(path)
    assert cfg.dataset.dir == str(job_dir / "images")
    assert cfg.model.base == str(tmp_path / "jobs" / "models" / "sd15.safetensors")
    assert cfg.model.vae == "org/vae"  # a hub id stays a hub id
    assert cfg.dreambooth.class_dir == os.path.expanduser("~/class")
    assert cfg.output.dir == "/abs/out"
    existing = load_job(path, ["model.vae=local/model"])  # a local folder shaped like a hub id is a path
    assert existing.model.vae == str(elsewhere / "local" / "model")
    assert load_job(path, ["dataset.dir=data"]).dataset.dir == str(elsewhere / "data")  # overrides: cwd
    assert load_job(path, ["model.base=builtin:tiny-sd15"]).model.base == "builtin:tiny-sd15"
    assert load_job(path, ["dreambooth.class_dir="]).dreambooth.class_dir == ""


def test_model_path_shaped_like_a_hub_id_resolves_when_it_exists_next_to_the_job(tmp_path):
    (tmp_path / "org" / "name").mkdir(parents=True)
    cfg = load_job(write(tmp_path, LORA_JOB.replace("builtin:tiny-sd15", "org/name")))
    assert cfg.model.base == str(tmp_path / "org" / "name")
    hub = load_job(write(tmp_path, LORA_JOB.replace("builtin:tiny-sd15", "runwayml/sd-v1-5")))
    assert hub.model.base == "runwayml/sd-v1-5"


# --- save / load --------------------------------------------------------------------------------------------

def _busy_config(tmp_path: Path) -> JobConfig:
    return parse_job(minimal("dreambooth",
                             model={"arch": "sd2", "prediction_type": "v_prediction", "vae": "/vae.safetensors"},
                             dataset={"resolution": 768, "flip": True, "caption_dropout_rate": 0.05},
                             training={"learning_rate": 2e-6, "max_steps": 800, "seed": 7,
                                       "optimizer": "adamw", "noise_offset": 0.05},
                             dreambooth={"instance_prompt": 'a "sks" dog', "class_prompt": "a dog\\cat",
                                         "use_lora": True},
                             lora={"rank": 32, "alpha": 16.0},
                             textual_inversion={"vectors": 4},
                             sample={"prompts": ["ünïcode prompt --n blurry", "tab\there\nnewline\x7f"],
                                     "every_n_steps": 100}),
                     base_dir=str(tmp_path))


def test_save_and_load_round_trip_exactly(tmp_path):
    cfg = _busy_config(tmp_path)
    path = tmp_path / "saved" / "job.toml"
    save_job(cfg, path)
    again = load_job(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.textual_inversion.vectors == 4  # unused by dreambooth but not the default: kept
    save_job(again, path)  # replacing an existing file leaves no temporary files behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["job.toml"]


def test_saved_file_lists_sections_in_schema_order_and_skips_unused_defaults(tmp_path):
    cfg = parse_job(minimal("textual_inversion", textual_inversion={"token": "<t>", "init_word": "dog"}))
    text = cfg.to_toml()
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == ["[model]", "[dataset]", "[training]", "[textual_inversion]", "[output]", "[sample]",
                       "[validation]", "[logging]"]
    assert tomllib.loads(text)["method"] == "textual_inversion"
    assert parse_job(tomllib.loads(text)).to_dict() == cfg.to_dict()


def test_to_dict_holds_every_schema_value():
    data = parse_job(minimal()).to_dict()
    assert data["method"] == "lora" and data["version"] == CURRENT_VERSION
    for field in FIELDS:
        assert (data[field.section][field.key] if field.section else data[field.key]) is not None


# --- versions and migration ---------------------------------------------------------------------------------

KOHYA_FILE = """\
pretrained_model_name_or_path = "models/base.safetensors"
train_data_dir = "train"
output_dir = "out"
output_name = "my_lora"
resolution = "512,512"
network_dim = 32
network_alpha = 16
network_module = "networks.lora"
train_batch_size = 2
max_train_steps = 1200
learning_rate = 0.0002
optimizer_type = "AdamW8bit"
lr_scheduler = "cosine"
mixed_precision = "bf16"
seed = 1234
save_every_n_steps = 200
gradient_checkpointing = true
cache_latents = true
noise_offset = 0.05
min_snr_gamma = 5.0
xformers = true
logging_dir = "logs"
"""


def test_kohya_style_file_is_migrated_with_notes(tmp_path):
    cfg = load_job(write(tmp_path, KOHYA_FILE))
    assert cfg.method == "lora" and cfg.version == CURRENT_VERSION
    assert (cfg.lora.rank, cfg.lora.alpha) == (32, 16.0)
    assert (cfg.training.batch_size, cfg.training.max_steps, cfg.training.learning_rate) == (2, 1200, 2e-4)
    assert (cfg.training.optimizer, cfg.training.lr_scheduler, cfg.training.mixed_precision) == (
        "adamw8bit", "cosine", "bf16")
    assert (cfg.training.seed, cfg.training.gradient_checkpointing, cfg.training.min_snr_gamma) == (1234, True, 5.0)
    assert cfg.dataset.resolution == 512 and cfg.dataset.dir == str(tmp_path / "train")
    assert cfg.model.base == str(tmp_path / "models" / "base.safetensors")
    assert (cfg.output.dir, cfg.output.name, cfg.output.save_every_n_steps) == (str(tmp_path / "out"), "my_lora", 200)
    notes = "\n".join(cfg.migration_notes)
    assert "Kohya network_dim = 32 -> lora.rank = 32" in notes
    assert 'Kohya optimizer_type = "AdamW8bit" -> training.optimizer = "adamw8bit"' in notes
    ignored = {n.key: n.result for n in cfg.migration_notes if getattr(n, "result", "").startswith("ignored")}
    assert {"xformers", "logging_dir", "network_module"} <= set(ignored)
    assert "network_dim" not in ignored
    assert cfg.lora.train_text_encoder  # sd-scripts trains the text encoder unless network_train_unet_only


def test_kohya_grouped_tables_version_0_and_precedence(tmp_path):
    text = ('version = 0\nmethod = "lora"\n[model_arguments]\npretrained_model_name_or_path = "org/model"\n'
            '[dataset_arguments]\ntrain_data_dir = "/data"\nresolution = "768,512"\n'
            '[training_arguments]\nmax_train_steps = 100\nmax_train_epochs = 5\noptimizer_type = "DAdaptAdam"\n'
            '[additional_network_arguments]\nnetwork_args = ["conv_dim=8", "conv_alpha=4"]\n')
    cfg = load_job(write(tmp_path, text))
    assert cfg.model.base == "org/model" and cfg.dataset.dir == "/data"
    assert cfg.dataset.resolution == 624  # same area as 768x512, a multiple of 8
    assert (cfg.training.epochs, cfg.training.max_steps) == (5, 0)
    assert cfg.training.optimizer == "dadaptadam"
    assert (cfg.lora.train_conv, cfg.lora.conv_rank, cfg.lora.conv_alpha) == (True, 8, 4.0)
    notes = "\n".join(cfg.migration_notes)
    assert 'Kohya optimizer_type = "DAdaptAdam" -> training.optimizer = "dadaptadam"' in notes
    assert "max_train_epochs takes precedence over max_train_steps" in notes


def test_migrated_file_saves_as_the_current_version(tmp_path):
    cfg = load_job(write(tmp_path, KOHYA_FILE))
    save_job(cfg, tmp_path / "v1.toml")
    again = load_job(tmp_path / "v1.toml")
    assert again.migration_notes == [] and again.to_dict() == cfg.to_dict()


def test_version_newer_than_kiln_is_an_error_that_says_to_update(tmp_path):
    message = error_text(tmp_path, f"version = {CURRENT_VERSION + 1}\n" + LORA_JOB)
    assert message.startswith(f"{tmp_path / 'job.toml'}: version = {CURRENT_VERSION + 1} is newer")
    assert "update Kiln" in message
    assert "is not valid" in error_text(tmp_path, 'version = "1"\n' + LORA_JOB)


# --- presets and docs ---------------------------------------------------------------------------------------

def test_list_presets_maps_names_to_files(tmp_path):
    write(tmp_path, LORA_JOB, "b-preset.toml")
    write(tmp_path, LORA_JOB, "a-preset.toml")
    write(tmp_path, "not a preset", "notes.md")
    assert list_presets(tmp_path) == {"a-preset": tmp_path / "a-preset.toml", "b-preset": tmp_path / "b-preset.toml"}
    assert presets_dir() == Path(__file__).resolve().parents[1] / "presets"


def test_shipped_presets_are_valid():
    for name, path in list_presets().items():
        load_job(path, complete=False)


def test_generated_section_classes_match_the_schema():
    # Regenerate with: .venv/bin/python -m trainer.config.docs
    import dataclasses

    from trainer.config.sections import SECTION_CLASSES
    from trainer.config.sections_gen import SECTIONS_PATH, render_sections_module

    assert SECTIONS_PATH.read_text(encoding="utf-8") == render_sections_module()
    for section, cls in SECTION_CLASSES.items():
        attributes = {f.name: f for f in dataclasses.fields(cls)}
        assert list(attributes) == [f.key for f in section_fields(section)]
        made = cls()
        for field in section_fields(section):
            assert getattr(made, field.key) == field.default
            assert attributes[field.key].type == {"int": "int", "float": "float", "bool": "bool",
                                                  "list[str]": "list[str]", "list[table]": "list[dict]"}.get(field.type, "str")
    assert parse_job(minimal()).dataset.__class__ is SECTION_CLASSES["dataset"]


def test_docs_config_md_matches_the_schema():
    # Regenerate with: .venv/bin/python -m trainer.config.docs
    assert DOC_PATH.read_text(encoding="utf-8") == render_config_doc()
    doc = render_config_doc()
    for field in FIELDS:
        assert f"`{field.key}`" in doc
