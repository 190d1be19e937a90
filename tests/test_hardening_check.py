"""Issue 25: `check` refuses what `run` refuses, huge or absurd numbers, and settings that were silently wrong.
Each case failed on the main of that day (a passing check and a failing run, a traceback, or silence)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.helpers import make_dataset, write_job
from trainer.cli import EXIT_BAD_INPUT, EXIT_OK, main


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("kiln: error:")]


def _lora_file(path: Path, rank: int = 4, extra: dict | None = None) -> Path:
    """A one-module Kohya LoRA file of `rank` (an SD 1.x UNet layer name), written with safetensors."""
    import torch
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{name}.lora_down.weight": torch.zeros(rank, 32), f"{name}.lora_up.weight": torch.zeros(32, rank),
               f"{name}.alpha": torch.tensor(float(rank))}
    save_file({**tensors, **(extra or {})}, str(path))
    return path


def _not_a_lora(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(2, 2)}, str(path))
    return path


# (case, base, sections, what the one error line must say: key and value)
CASES = {
    "clip_skip beyond the text encoder": ("builtin:tiny-sd15", {"training": {"clip_skip": 3}},
                                          "training.clip_skip = 3 is more than the 2 layers"),
    "token already in the vocabulary": ("builtin:tiny-sd15", {"textual_inversion": {"token": "dog",
                                                                                    "init_word": "cat"}},
                                        "textual_inversion.token: 'dog' is already in the tokenizer's vocabulary"),
    "init_word of spaces": ("builtin:tiny-sd15", {"textual_inversion": {"token": "<kiln-x>", "init_word": "   "}},
                            'textual_inversion.init_word = "   " is not valid (must hold a word'),
    "save_a1111_pt with SDXL": ("builtin:tiny-sdxl", {"textual_inversion": {"token": "<kiln-x>", "init_word": "cat",
                                                                            "save_a1111_pt": True}},
                                "textual_inversion.save_a1111_pt = true does not apply to SDXL"),
    "arch sdxl on an SD 1.x model": ("builtin:tiny-sd15", {"model": {"arch": "sdxl"}},
                                     "model.arch = 'sdxl' but model.base = builtin:tiny-sd15 is an SD 1.x model"),
    "zero_terminal_snr on an epsilon model": ("builtin:tiny-sd15", {"training": {"zero_terminal_snr": True}},
                                              "training.zero_terminal_snr = true needs a v-prediction model, but "
                                              "model.base = builtin:tiny-sd15 predicts 'epsilon'"),
    "xformers not installed": ("builtin:tiny-sd15", {"training": {"attention": "xformers"}},
                               'training.attention = "xformers" but the xformers package is not installed'),
    "wandb not installed": ("builtin:tiny-sd15", {"logging": {"wandb": True}},
                            "logging.wandb = true but the wandb package is not installed"),
    "init_weights missing": ("builtin:tiny-sd15", {"lora": {"init_weights": "{tmp}/gone.safetensors"}},
                             "lora.init_weights: {tmp}/gone.safetensors does not exist"),
    "init_weights not a LoRA": ("builtin:tiny-sd15", {"lora": {"init_weights": "{tmp}/model.safetensors"}},
                                "lora.init_weights: {tmp}/model.safetensors holds no LoRA, LoHa or LoKr tensors"),
    "init_weights of another rank": ("builtin:tiny-sd15", {"lora": {"init_weights": "{tmp}/rank4.safetensors",
                                                                    "rank": 8}},
                                     "lora.init_weights = {tmp}/rank4.safetensors has rank 4 but lora.rank = 8"),
    "sample option --x": ("builtin:tiny-sd15", {"sample": {"prompts": ["a cat --x 3"]}},
                          "sample.prompts = [\"a cat --x 3\"] is not valid (sample prompt 'a cat --x 3': unknown "
                          "option --x"),
    "sample option --w abc": ("builtin:tiny-sd15", {"sample": {"prompts": ["a cat --w abc"]}},
                              "--w needs a number (whole), got 'abc'"),
    "sample option --s 0": ("builtin:tiny-sd15", {"sample": {"prompts": ["a cat --s 0"]}},
                            "--s 0 is out of range (must be between 1 and 1000)"),
    "sample option --d huge": ("builtin:tiny-sd15", {"sample": {"prompts": ["a cat --d 99999999999999999999"]}},
                               "--d 99999999999999999999 is out of range (must be between 0 and 4294967295)"),
}


def _fill(value, tmp: Path):
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, tmp) for v in value]
    return value.replace("{tmp}", str(tmp)) if isinstance(value, str) else value


def _case_job(tmp_path: Path, case: str, monkeypatch) -> tuple[Path, str]:
    base, sections, expected = CASES[case]
    _lora_file(tmp_path / "rank4.safetensors")
    _not_a_lora(tmp_path / "model.safetensors")
    method = "textual_inversion" if "textual_inversion" in sections else "lora"
    real_find_spec = importlib.util.find_spec
    # whether or not this machine has them: the job asks for packages that are "not installed"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("xformers", "wandb") else real_find_spec(name, *a))
    job = write_job(tmp_path / "job.toml", base, make_dataset(tmp_path / "data", n=2), tmp_path / "out",
                    method=method, sections=_fill(sections, tmp_path))
    return job, _fill(expected, tmp_path)


@pytest.mark.parametrize("case", list(CASES))
def test_check_refuses_what_run_refuses_in_one_line(tmp_path, capsys, monkeypatch, case):
    job, expected = _case_job(tmp_path, case, monkeypatch)
    code, err = _cli(capsys, "check", str(job))
    assert code == EXIT_BAD_INPUT, err
    lines = _error_lines(err)
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err

    code, err = _cli(capsys, "run", str(job))
    assert code == EXIT_BAD_INPUT, err
    assert expected in err and "loading base model" not in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_same_settings_pass_on_a_model_that_takes_them(tmp_path, capsys):
    """The checks read the model: a token the vocabulary lacks, clip_skip within the layers, a file of the
    job's rank all pass."""
    data = make_dataset(tmp_path / "data", n=2)
    _lora_file(tmp_path / "rank4.safetensors")
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out",
                    sections={"training": {"clip_skip": 2}, "model": {"arch": "sd15"},
                              "lora": {"init_weights": str(tmp_path / "rank4.safetensors"), "rank": 4, "alpha": 4},
                              "sample": {"prompts": ["a cat --w 64 --h 64 --s 2 --d 4294967295"]}})
    code, err = _cli(capsys, "check", str(job))
    assert code == EXIT_OK, err
    ti = write_job(tmp_path / "ti.toml", "builtin:tiny-sd15", data, tmp_path / "out2", method="textual_inversion",
                   sections={"textual_inversion": {"token": "<kiln-new>", "init_word": "cat"}})
    code, err = _cli(capsys, "check", str(ti))
    assert code == EXIT_OK, err


def test_model_facts_of_a_diffusers_folder_and_the_builtin_models_match_the_loaded_models(tiny_sd15_dir):
    from trainer.model_facts import model_facts
    from trainer.models.tiny import make_tiny

    for ref, arch in (("builtin:tiny-sd15", "sd15"), ("builtin:tiny-sdxl", "sdxl"), (str(tiny_sd15_dir), "sd15")):
        facts = model_facts(ref)
        built = make_tiny(arch)
        assert facts.arch == arch
        assert facts.text_encoder_layers == built["text_encoder"].config.num_hidden_layers
        assert facts.prediction_type == built["scheduler"].config.prediction_type


def test_clip_skip_and_v_prediction_are_read_from_a_diffusers_folder(tmp_path, capsys, tiny_sd15_dir):
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out",
                    sections={"training": {"clip_skip": 5, "zero_terminal_snr": True}})
    code, err = _cli(capsys, "check", str(job))
    assert code == EXIT_BAD_INPUT
    assert "training.clip_skip = 5 is more than the 2 layers" in err
    assert "predicts 'epsilon'" in err


# --- huge or absurd numbers -------------------------------------------------------------------------------


def _kohya_job(tmp_path: Path, **keys) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=2)
    config = {"pretrained_model_name_or_path": "builtin:tiny-sd15", "train_data_dir": str(data),
              "output_dir": str(tmp_path / "out"), "output_name": "x", "LoRA_type": "Standard",
              "max_resolution": "64,64", "train_batch_size": 1, "max_train_steps": 4, **keys}
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("key", ["seed", "max_train_steps"])
def test_a_401_digit_number_is_out_of_range_not_a_traceback(tmp_path, capsys, key):
    code, err = _cli(capsys, "check", str(_kohya_job(tmp_path, **{key: int("9" * 401)})))
    assert code == EXIT_BAD_INPUT and "Traceback" not in err
    kiln_key = {"seed": "training.seed", "max_train_steps": "training.max_steps"}[key]
    assert len(_error_lines(err)) == 1 and f"{kiln_key} = 9999" in err and "is out of range" in err, err


@pytest.mark.parametrize("value", ["-512,512", "Infinity", "1e400", "512,-1e400"])
def test_absurd_kohya_resolutions_are_noted_not_tracebacks(tmp_path, capsys, value):
    job = _kohya_job(tmp_path, max_resolution=value)
    code, err = _cli(capsys, "convert", str(job), "-o", str(tmp_path / "job.toml"))
    assert code == EXIT_OK and "Traceback" not in err, err
    text = (tmp_path / "job.toml").read_text()
    assert f"Kohya max_resolution = {json.dumps(value)}: ignored: a value Kiln does not support" in text
    code, err = _cli(capsys, "check", str(job))
    assert code == EXIT_OK and "Traceback" not in err, err


def test_sample_prompts_that_are_not_text_are_noted(tmp_path, capsys):
    job = _kohya_job(tmp_path, sample_prompts=[1, 2])
    code, err = _cli(capsys, "convert", str(job), "-o", str(tmp_path / "job.toml"))
    assert code == EXIT_OK and "Traceback" not in err, err
    assert "Kohya sample_prompts = [1, 2]: ignored" in (tmp_path / "job.toml").read_text()


def test_convert_writes_toml_that_reads_back_whatever_the_keys_hold(tmp_path, capsys):
    import tomllib

    job = _kohya_job(tmp_path, **{"bad\x01key": 1, "odd\x7fkey\x1b[31m": "x"})
    code, err = _cli(capsys, "convert", str(job), "-o", str(tmp_path / "job.toml"))
    assert code == EXIT_OK, err
    text = (tmp_path / "job.toml").read_text()
    tomllib.loads(text)  # main wrote the control characters into comments, which TOML refuses
    assert "bad\\x01key" in text


def _check_json(capsys, job: Path) -> dict:
    code = main(["check", str(job), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == (EXIT_OK if result["ok"] else EXIT_BAD_INPUT)
    return result


@pytest.mark.parametrize("folder", ["99999999999999999999_big", "100000000_x"])
def test_huge_kohya_folder_repeats_are_capped_with_a_warning(tmp_path, capsys, folder):
    make_dataset(tmp_path / "data" / folder, n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", tmp_path / "data", tmp_path / "out")
    result = _check_json(capsys, job)
    assert result["ok"], result["errors"]
    assert result["plan"]["images_with_repeats"] == 2 * 1000
    asked = folder.split("_")[0]
    assert any(f"folder '{folder}' asks for {asked} repeats" in w and "at most 1000" in w
               for w in result["warnings"]), result["warnings"]


def test_a_2_gib_caption_file_is_ignored_with_a_message(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=2)
    with open(data / "img_0.txt", "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB claimed, nothing written
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out")
    result = _check_json(capsys, job)
    assert result["ok"], result["errors"]
    assert any("img_0.txt: 2,147,483,648 bytes, more than the 1 MiB a caption file may have, ignored" in w
               for w in result["warnings"]), result["warnings"]
    code, err = _cli(capsys, "doctor", str(data), "--json")
    assert code == EXIT_OK and "Traceback" not in err


def test_a_caption_at_the_cap_is_read(tmp_path):
    from trainer.data.captions import MAX_CAPTION_BYTES, CaptionTooLarge, read_caption_bytes

    ok, big = tmp_path / "ok.txt", tmp_path / "big.txt"
    ok.write_bytes(b"a" * MAX_CAPTION_BYTES)
    big.write_bytes(b"a" * (MAX_CAPTION_BYTES + 1))
    assert len(read_caption_bytes(ok)) == MAX_CAPTION_BYTES
    with pytest.raises(CaptionTooLarge):
        read_caption_bytes(big)


@pytest.mark.parametrize("case", ["5000-character model path", "300-character folder name"])
def test_too_long_paths_are_one_line_naming_the_key(tmp_path, capsys, case):
    data = make_dataset(tmp_path / "data", n=2)
    if case == "5000-character model path":
        base, dataset, expected = "/" + "/".join(["m" * 99] * 50) + ".safetensors", data, "model.base is a path of"
    else:
        base, dataset, expected = "builtin:tiny-sd15", tmp_path / ("d" * 300), "dataset.dir = "
    job = write_job(tmp_path / "job.toml", base, dataset, tmp_path / "out")
    for verb in ("check", "run"):
        code, err = _cli(capsys, verb, str(job))
        assert code == EXIT_BAD_INPUT and "Traceback" not in err, err
        assert len(_error_lines(err)) == 1 and expected in err, err
    if case == "300-character folder name":
        assert "is 300 characters; file and folder names may be at most 255 bytes" in err


def test_fractional_repeats_round_up_to_at_least_one_sample(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", "", tmp_path / "out",
                    sections={"dataset": {"dir": "", "concepts": [{"dir": str(data), "repeats": 0.0001}]},
                              "training": {"batch_size": 1}})
    result = _check_json(capsys, job)
    assert result["ok"], result["errors"]
    assert result["plan"]["images_with_repeats"] == 1  # 2 x 0.0001 rounded up; main planned no batches


def test_exact_fractions_are_not_pushed_up_by_float_error():
    from trainer.data.scan import ImageItem, epoch_repeats

    items = [ImageItem(Path(f"{i}.png"), "", 0.3, 64, 64, "s") for i in range(10)]
    assert sum(epoch_repeats(items, seed=1)) == 3  # 10 x 0.3 is 3.0000000000000004 in floats


def test_an_unwritable_home_falls_back_to_a_temporary_cache(tmp_path, monkeypatch):
    from trainer.models.config_dir import materialize_config_dir
    from trainer.paths import kiln_cache_dir

    monkeypatch.delenv("KILN_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", "/proc")  # nothing can be created there, not even by root
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    cache = kiln_cache_dir()
    assert cache.is_dir() and cache.parent == tmp_path
    folder = materialize_config_dir("sd15", {"model_index.json": {"_class_name": "StableDiffusionPipeline"}})
    assert folder.is_relative_to(tmp_path) and (folder / "model_index.json").is_file()


# --- silently wrong -----------------------------------------------------------------------------------------


def test_the_only_concept_with_loss_weight_0_is_refused(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", "", tmp_path / "out",
                    sections={"dataset": {"dir": "", "concepts": [{"dir": str(data), "loss_weight": 0.0}]}})
    code, err = _cli(capsys, "check", str(job))
    assert code == EXIT_BAD_INPUT
    assert len(_error_lines(err)) == 1 and "dataset.concepts[1].loss_weight = 0" in err
    assert "training would learn nothing" in err


def test_num_processes_check_and_run_agree(tmp_path, capsys):
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", make_dataset(tmp_path / "data", n=2),
                    tmp_path / "out")
    result = json.loads((main(["check", str(job), "--json", "--set", "training.num_processes=64"]),
                         capsys.readouterr().out)[1])
    assert result["plan"]["world_size"] == 64
    assert any("training.num_processes = 64: planned for 64 processes" in w and "a plain `trainer run` refuses it"
               in w for w in result["warnings"]), result["warnings"]
    code, err = _cli(capsys, "run", str(job), "--set", "training.num_processes=64")
    assert code == EXIT_BAD_INPUT
    assert "training.num_processes = 64 but 1 process(es) started" in err and "loading base model" not in err


def test_the_same_folder_as_two_concepts_is_named(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", "", tmp_path / "out",
                    sections={"dataset": {"dir": "", "concepts": [{"dir": str(data)}, {"dir": str(data) + "/"}]}})
    result = _check_json(capsys, job)
    assert any(w.startswith("dataset.concepts[2].dir = ") and "is the same folder as dataset.concepts[1].dir" in w
               for w in result["warnings"]), result["warnings"]


def test_doctor_blur_median_is_a_number_on_a_mixed_folder(tmp_path):
    from PIL import Image

    from trainer.doctor import examine_dataset

    data = make_dataset(tmp_path / "data", n=3, size=128)
    Image.new("RGB", (16, 8000), (200, 10, 10)).save(data / "sliver.png")  # 1 px wide at the measuring size
    Image.new("RGB", (128, 128), (120, 120, 120)).save(data / "flat.png")  # no detail at all: blurry
    report = examine_dataset(data, resolution=64)
    blurry = [f for f in report.findings if f.kind == "blurry"]
    assert blurry and "nan" not in blurry[0].message.lower(), report.to_text()
    assert any("flat.png" in name for name in blurry[0].files)
    assert not any("sliver.png" in name for name in blurry[0].files)


def test_doctor_on_a_too_long_folder_name_is_one_line(tmp_path, capsys):
    code, err = _cli(capsys, "doctor", str(tmp_path / ("d" * 300)))
    assert code == EXIT_BAD_INPUT and "Traceback" not in err
    assert len(_error_lines(err)) == 1 and "File name too long" in err, err
