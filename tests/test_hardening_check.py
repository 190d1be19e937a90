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
