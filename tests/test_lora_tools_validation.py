"""Issue 25: every LoRA tool validates its input file (each class of damage, hand-built here), its numbers and
its output path first, says what is wrong in one line, and never writes a non-finite tensor."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.cli import main

UNET = "lora_unet_down_blocks_0_attentions_0_proj_in"
OTHER = "lora_unet_down_blocks_0_attentions_0_proj_out"


def lora(up=(8, 4), down=(4, 8), alpha=4.0, fill=0.1) -> dict[str, torch.Tensor]:
    return {"lora_up.weight": torch.full(up, fill), "lora_down.weight": torch.full(down, fill),
            "alpha": torch.tensor(alpha)}


def write(path: Path, modules: dict[str, dict[str, torch.Tensor]]) -> Path:
    save_file({f"{name}.{suffix}": t for name, tensors in modules.items() for suffix, t in tensors.items()},
              str(path), metadata={"ss_base_model_version": "sd_v1"})
    return path


def write_raw(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> Path:
    """A .safetensors file written byte by byte, for dtypes torch cannot (or should not have to) make."""
    header, blob = {}, b""
    for key, (dtype, shape, data) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob)
    return path


def _f32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def damaged(tmp_path: Path, case: str) -> tuple[Path, str]:
    """(a LoRA file with one good module and one damaged the way `case` says, what its reason must say)."""
    good = {OTHER: lora()}
    path = tmp_path / f"{case.replace(' ', '_')}.safetensors"
    if case in ("complex64", "float8"):
        dtype, data = ("C64", b"\0" * 8 * 32) if case == "complex64" else ("F8_E4M3", b"\0" * 32)
        raw = {f"{OTHER}.lora_up.weight": ("F32", [8, 4], _f32([0.1] * 32)),
               f"{OTHER}.lora_down.weight": ("F32", [4, 8], _f32([0.1] * 32)),
               f"{UNET}.lora_up.weight": (dtype, [8, 4], data), f"{UNET}.lora_down.weight": ("F32", [4, 8],
                                                                                            _f32([0.1] * 32))}
        return write_raw(path, raw), f"lora_up.weight has dtype {dtype}"
    broken, reason = {
        "mismatched shapes": (lora(up=(8, 3)), "lora_up.weight (8, 3) does not fit lora_down.weight (4, 8)"),
        "missing half": ({"lora_down.weight": torch.ones(4, 8), "alpha": torch.tensor(4.0)},
                         "a partial LoRA: lora_up.weight missing"),
        "partial LoHa": ({"hada_w1_a": torch.ones(8, 2), "hada_w1_b": torch.ones(2, 8), "alpha": torch.tensor(2.0)},
                         "a partial LoHa: hada_w2_a, hada_w2_b missing"),
        "partial LoKr": ({"lokr_w1": torch.ones(2, 2), "alpha": torch.tensor(2.0)},
                         "a partial LoKr: lokr_w2 missing"),
        "zero rank": (lora(up=(8, 0), down=(0, 8)), "an empty (zero-rank) tensor"),
        "NaN weights": (lora(fill=float("nan")), "holds NaN or infinite values"),
        "inf alpha": (lora(alpha=float("inf")), "alpha holds NaN or infinite values"),
        "unknown layout": ({**lora(), "lora_mid.weight": torch.ones(4, 4, 3, 3)},
                           "lora_mid.weight is not part of a LoRA module Kiln reads"),
    }[case]
    return write(path, {**good, UNET: broken}), reason


CASES = ["mismatched shapes", "missing half", "partial LoHa", "partial LoKr", "zero rank", "complex64", "float8",
         "NaN weights", "inf alpha", "unknown layout"]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["lora", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kiln: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_every_tool_refuses_a_damaged_file_in_one_line(tmp_path, capsys, case):
    path, reason = damaged(tmp_path, case)
    out = tmp_path / "out.safetensors"
    for args in (("resize", path, "--rank", 2, "--out", out), ("merge", path, path, "--out", out),
                 ("resize", path, "--dynamic", "sv_fro", 0.9, "--out", out)):
        code, _, err = run(capsys, *args)
        line = one_error(err)
        assert code == 2 and "1 broken module(s)" in line and UNET in line and reason in line, line
        assert not out.exists()


@pytest.mark.parametrize("case", CASES)
def test_inspect_lists_broken_modules_as_broken(tmp_path, capsys, case):
    path, reason = damaged(tmp_path, case)
    code, out, err = run(capsys, "inspect", path)
    assert code == 0, err
    assert f"{UNET}  BROKEN: " in out and reason in out, out
    assert f"{OTHER}  rank 4  alpha 4" in out and "+ 1 BROKEN" in out


def test_lora_init_refuses_a_damaged_file_too(tmp_path):
    from trainer.lora_tools.network import read_network_file
    from trainer.models.errors import ModelError

    path, reason = damaged(tmp_path, "NaN weights")
    with pytest.raises(ModelError, match=f"lora.init_weights: .* {UNET}: .*{reason}"):
        read_network_file(path, "lora.init_weights")


@pytest.mark.parametrize("args, expected", [
    (("--rank", 0), "lora resize --rank 0: the rank must be at least 1"),
    (("--rank", -3), "lora resize --rank -3: the rank must be at least 1"),
    (("--dynamic", "sv_fro", "nan"), "--dynamic sv_fro nan: the fraction must be above 0 and at most 1"),
    (("--dynamic", "sv_cumulative", 0), "--dynamic sv_cumulative 0: the fraction must be above 0"),
    (("--dynamic", "sv_fro", -1), "--dynamic sv_fro -1: the fraction must be above 0"),
    (("--dynamic", "sv_fro", 1.5), "--dynamic sv_fro 1.5: the fraction must be above 0 and at most 1"),
    (("--dynamic", "sv_ratio", "nan"), "--dynamic sv_ratio nan: the ratio must be a number of at least 1"),
    (("--dynamic", "sv_ratio", 0.5), "--dynamic sv_ratio 0.5: the ratio must be a number of at least 1"),
    (("--dynamic", "sv_magic", 2), "--dynamic sv_magic: unknown method"),
])
def test_resize_numbers_are_checked_first(tmp_path, capsys, args, expected):
    path = write(tmp_path / "a.safetensors", {UNET: lora()})
    code, _, err = run(capsys, "resize", path, *args, "--out", tmp_path / "b.safetensors")
    assert code == 2 and expected in one_error(err)
    assert not (tmp_path / "b.safetensors").exists()


def test_merge_and_extract_numbers_are_checked_first(tmp_path, capsys):
    path = write(tmp_path / "a.safetensors", {UNET: lora()})
    out = tmp_path / "m.safetensors"
    code, _, err = run(capsys, "merge", path, path, "--weights", "1,nan", "--out", out)
    assert code == 2 and "--weights: nan is not a finite number" in one_error(err)
    code, _, err = run(capsys, "merge", path, "--rank", 0, "--out", out)
    assert code == 2 and "lora merge --rank 0: the rank must be at least 1" in one_error(err)
    code, _, err = run(capsys, "extract", "--base", path, "--tuned", path, "--rank", -1, "--out", out)
    assert code == 2 and "lora extract --rank -1: the rank must be at least 1" in one_error(err)


@pytest.mark.parametrize("where", ["folder", "/proc/version", "missing folder"])
def test_bad_outputs_are_refused_in_one_line(tmp_path, capsys, where):
    path = write(tmp_path / "a.safetensors", {UNET: lora()})
    out = {"folder": tmp_path, "/proc/version": Path("/proc/version"),
           "missing folder": tmp_path / "nope" / "b.safetensors"}[where]
    before = Path("/proc/version").read_text()
    code, _, err = run(capsys, "resize", path, "--rank", 2, "--out", out, "--force")
    line = one_error(err)
    assert code == 2 and f"--out {out}" in line
    assert Path("/proc/version").read_text() == before


def test_resize_of_a_sound_file_still_works(tmp_path, capsys):
    path = write(tmp_path / "a.safetensors", {UNET: lora(), OTHER: lora(fill=0.2)})
    code, _, err = run(capsys, "resize", path, "--dynamic", "sv_ratio", 4, "--out", tmp_path / "b.safetensors")
    assert code == 0, err


def test_merge_never_writes_non_finite_tensors(tmp_path, capsys):
    """Finite inputs whose sum overflows: refused, nothing written (main wrote 40 non-finite tensors)."""
    big = write(tmp_path / "big.safetensors", {UNET: lora(fill=1e30)})
    out = tmp_path / "m.safetensors"
    code, _, err = run(capsys, "merge", big, big, "--out", out)
    assert code == 2 and "would hold NaN or infinite values" in one_error(err)
    assert not out.exists()


def test_merge_into_a_checkpoint_never_writes_non_finite_tensors(tmp_path, capsys):
    from trainer.lora_tools.checkpoint import Checkpoint
    from trainer.models.tiny import save_tiny_model

    checkpoint = save_tiny_model(tmp_path / "base.safetensors", arch="sd15", fmt="single-file")
    name, target = next((n, t) for n, t in sorted(Checkpoint(checkpoint, "test").lora_targets().items())
                        if n.startswith("lora_unet") and len(Checkpoint(checkpoint, "test").shapes[t.key]) == 2)
    rows, cols = Checkpoint(checkpoint, "test").shapes[target.key]
    huge = write(tmp_path / "huge.safetensors", {name: lora(up=(rows, 2), down=(2, cols), alpha=2.0, fill=1e30)})
    out = tmp_path / "merged.safetensors"
    code, _, err = run(capsys, "merge", huge, "--into", checkpoint, "--out", out)
    assert code == 2 and "would hold NaN or infinite values" in one_error(err)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    nan = write(tmp_path / "nan.safetensors", {name: lora(up=(rows, 2), down=(2, cols), fill=float("nan"))})
    code, _, err = run(capsys, "merge", nan, "--into", checkpoint, "--out", out)
    assert code == 2 and "holds NaN or infinite values" in one_error(err)
    assert not out.exists()


def test_too_long_paths_are_one_line(tmp_path, capsys):
    path = write(tmp_path / "a.safetensors", {UNET: lora()})
    long = tmp_path / ("d" * 300 + ".safetensors")
    code, _, err = run(capsys, "inspect", long)
    assert code == 2 and "File name too long" in one_error(err)
    code, _, err = run(capsys, "resize", path, "--rank", 2, "--out", long)
    assert code == 2 and "File name too long" in one_error(err)
