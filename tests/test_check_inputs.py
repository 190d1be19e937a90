"""`trainer check` approves only what `trainer run` accepts: each bad model source or output folder is one clear
line and a non-zero exit from check, and run refuses the same job before it loads a model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import make_dataset, write_job
from trainer.cli import EXIT_BAD_INPUT, EXIT_OK, main


def _sd_header_file(path: Path, keys: list[str], data_bytes: int, actual_bytes: int | None = None) -> Path:
    """A .safetensors file written by hand: a header naming `keys` (4 bytes each) and `actual_bytes` of data."""
    header, offset = {}, 0
    for key in keys:
        header[key] = {"dtype": "F32", "shape": [1], "data_offsets": [offset, offset + 4]}
        offset += 4
    assert offset == data_bytes
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"\0" * (data_bytes if actual_bytes is None
                                                                          else actual_bytes))
    return path


SD15_KEYS = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x.weight",
             "first_stage_model.encoder.conv_in.weight"]


def _check(capsys, job: Path, *extra: str) -> tuple[int, str]:
    code = main(["check", str(job), *extra])
    captured = capsys.readouterr()
    return code, captured.err


def _job(tmp_path: Path, base, output_dir: Path | None = None, data: Path | None = None, **sections) -> Path:
    data = data or make_dataset(tmp_path / "data", n=2)
    return write_job(tmp_path / "job.toml", base, data, output_dir or tmp_path / "out", sections=sections)


def test_a_good_job_passes(tmp_path, capsys):
    code, err = _check(capsys, _job(tmp_path, "builtin:tiny-sd15"))
    assert code == EXIT_OK, err


def _bad_model(tmp_path: Path, case: str):
    if case == "missing file":
        return tmp_path / "models" / "gone.safetensors", {}
    if case == "unknown builtin":
        return "builtin:tiny-sd99", {}
    if case == "folder without model_index.json":
        (tmp_path / "folder").mkdir()
        return tmp_path / "folder", {}
    if case == "truncated safetensors":
        return _sd_header_file(tmp_path / "cut.safetensors", SD15_KEYS, 12, actual_bytes=5), {}
    if case == "not a safetensors file":
        (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
        return tmp_path / "junk.safetensors", {}
    if case == "non-SD safetensors":
        return _sd_header_file(tmp_path / "other.safetensors", ["encoder.weight"], 4), {}
    if case == "ckpt without allow_pickle":
        (tmp_path / "old.ckpt").write_bytes(b"not looked at")
        return tmp_path / "old.ckpt", {}
    raise AssertionError(case)


@pytest.mark.parametrize("case, expected", [
    ("missing file", "model not found"),
    ("unknown builtin", "'builtin:tiny-sd99' is not a built-in model (there are builtin:tiny-sd15"),
    ("folder without model_index.json", "without model_index.json"),
    ("truncated safetensors", "truncated"),
    ("not a safetensors file", "not a readable .safetensors file"),
    ("non-SD safetensors", "is not a Stable Diffusion model"),
    ("ckpt without allow_pickle", "set model.allow_pickle = true"),
])
def test_bad_model_sources_fail_check_with_one_clear_line(tmp_path, capsys, case, expected):
    base, sections = _bad_model(tmp_path, case)
    code, err = _check(capsys, _job(tmp_path, base, **sections))
    assert code == EXIT_BAD_INPUT
    assert err.startswith("kiln: error: ") and "model.base" in err and expected in err, err
    assert "Traceback" not in err


def test_a_good_header_passes_without_reading_weights(tmp_path, capsys):
    model = _sd_header_file(tmp_path / "fake-sd.safetensors", SD15_KEYS, 12)
    code, err = _check(capsys, _job(tmp_path, model, model={"arch": "sd15"}))
    assert code == EXIT_OK, err  # the header alone names an SD 1.x model; only run reads the weights


def test_a_ckpt_passes_check_with_allow_pickle(tmp_path, capsys):
    (tmp_path / "old.ckpt").write_bytes(b"not unpickled by check")
    code, err = _check(capsys, _job(tmp_path, tmp_path / "old.ckpt", model={"allow_pickle": True, "arch": "sd15"}))
    assert code == EXIT_OK, err


def _bad_output(tmp_path: Path, case: str) -> tuple[Path, Path | None]:
    """(output dir, dataset dir or None for the default one)."""
    if case == "read-only folder":
        if os.geteuid() == 0:  # root writes through file modes: /proc refuses new files to anyone
            return Path("/proc/kiln-output"), None
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        return locked / "out", None
    if case == "path under a file":
        (tmp_path / "a-file").write_text("x")
        return tmp_path / "a-file" / "out", None
    if case == "output is a file":
        (tmp_path / "out-file").write_text("x")
        return tmp_path / "out-file", None
    if case == "existing output without overwrite":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "test-lora.safetensors").write_bytes(b"mine")
        return tmp_path / "out", None
    if case == "output inside the dataset":
        data = make_dataset(tmp_path / "data", n=2)
        return data / "results", data
    if case == "dataset inside the output":
        data = make_dataset(tmp_path / "work" / "data", n=2)
        return tmp_path / "work", data
    raise AssertionError(case)


@pytest.mark.parametrize("case, expected", [
    ("read-only folder", "is not writable"),
    ("path under a file", "which is a file, not a folder"),
    ("output is a file", "is a file, not a folder"),
    ("existing output without overwrite", "already exists; choose another output.name, or set output.overwrite"),
    ("output inside the dataset", "is inside dataset.dir"),
    ("dataset inside the output", "is inside output.dir"),
])
def test_bad_output_folders_fail_check_with_one_clear_line(tmp_path, capsys, case, expected):
    output, data = _bad_output(tmp_path, case)
    code, err = _check(capsys, _job(tmp_path, "builtin:tiny-sd15", output, data))
    assert code == EXIT_BAD_INPUT
    assert err.startswith("kiln: error: ") and expected in err, err


def test_existing_output_passes_with_overwrite(tmp_path, capsys):
    output, _ = _bad_output(tmp_path, "existing output without overwrite")
    code, err = _check(capsys, _job(tmp_path, "builtin:tiny-sd15", output, output={"overwrite": True}))
    assert code == EXIT_OK, err
    assert (output / "test-lora.safetensors").read_bytes() == b"mine"


@pytest.mark.parametrize("case", ["output inside the dataset", "truncated safetensors"])
def test_run_refuses_the_same_job_before_loading_anything(tmp_path, capsys, case):
    if case == "truncated safetensors":
        base, output, data = _bad_model(tmp_path, case)[0], tmp_path / "out", None
    else:
        base, (output, data) = "builtin:tiny-sd15", _bad_output(tmp_path, case)
    job = _job(tmp_path, base, output, data)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["run", str(job)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "kiln: error: " in err and "loading base model" not in err and "Traceback" not in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_deeply_nested_toml_is_a_clear_message(tmp_path, capsys):
    job = tmp_path / "deep.toml"
    job.write_text("method = " + "[" * 50_000)
    code, err = _check(capsys, job)
    assert code == EXIT_BAD_INPUT
    assert "nests arrays or tables too deeply" in err and "RecursionError" not in err


def test_a_key_with_a_nul_byte_is_a_clear_message(tmp_path, capsys):
    job = _job(tmp_path, "builtin:tiny-sd15")
    job.write_text('"seed\\u0000" = 4\n' + job.read_text())
    code, err = _check(capsys, job)
    assert code == EXIT_BAD_INPUT
    assert 'the key "seed\\u0000" contains a control character (such as a NUL byte)' in err, err
    assert "\x00" not in err


def test_class_images_inside_the_dataset_fail_check(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out", method="dreambooth",
                    sections={"dreambooth": {"instance_prompt": "sks", "class_prompt": "a shape",
                                             "class_dir": str(data / "class")}})
    code, err = _check(capsys, job)
    assert code == EXIT_BAD_INPUT and "dreambooth.class_dir" in err and "is inside dataset.dir" in err, err


def test_the_ui_check_says_the_same(tmp_path):
    from ui.job_files import run_preflight

    job = _job(tmp_path, "builtin:tiny-sd99")
    ok, report = run_preflight(job.read_text(), tmp_path)
    assert not ok and "'builtin:tiny-sd99' is not a built-in model" in report
