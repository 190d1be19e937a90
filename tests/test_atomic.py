"""trainer/atomic.py, the one writer of files and folders: all or nothing, old files intact, a full disk said in
one line."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from tests.helpers import make_dataset, write_job
from trainer.atomic import (DiskFullError, is_disk_full, write_atomically, write_bytes_atomic,
                            write_folder_atomically)


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_bytes_atomic(tmp_path / "weights.bin", b"old weights")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"new wei")
        raise disk_full()

    with pytest.raises(DiskFullError) as raised:
        write_atomically(target, half_then_fail)
    assert str(raised.value) == f"disk full while saving {target}; earlier files are intact"
    assert target.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]

    with pytest.raises(ValueError):  # any other failure: raised as it is, and still nothing left behind
        write_atomically(target, lambda tmp: (tmp.write_bytes(b"x"), int("not a number")))
    assert target.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


def test_folders_appear_complete_and_replace_only_when_asked(tmp_path):
    target = tmp_path / "model"

    def fill(content: str):
        def write(folder: Path) -> None:
            (folder / "sub").mkdir()
            (folder / "sub" / "a.txt").write_text(content)
        return write

    write_folder_atomically(target, fill("first"))
    with pytest.raises(FileExistsError):
        write_folder_atomically(target, fill("second"))
    assert (target / "sub" / "a.txt").read_text() == "first"

    def broken(folder: Path) -> None:
        (folder / "half.txt").write_text("half")
        raise disk_full()

    with pytest.raises(DiskFullError, match=f"disk full while saving {target}; earlier files are intact"):
        write_folder_atomically(target, broken, replace=True)
    assert (target / "sub" / "a.txt").read_text() == "first" and not (target / "half.txt").exists()

    write_folder_atomically(target, fill("second"), replace=True)
    assert (target / "sub" / "a.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old folder left


def test_disk_full_is_recognised_through_library_wrappers():
    try:
        try:
            raise disk_full()
        except OSError as cause:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0") from cause
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert is_disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("bad value"))


def test_disk_full_while_saving_the_final_lora_is_one_line_and_keeps_earlier_files(tmp_path, monkeypatch, capsys):
    """The real CLI verb, in-process so the write can be made to fail half-way through the final file."""
    import safetensors.torch

    from trainer.cli import main

    out = tmp_path / "out"
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", make_dataset(tmp_path / "data"), out, sections={
        "training": {"max_steps": 4}, "output": {"save_every_n_steps": 2, "overwrite": True}})
    assert main(["run", str(job)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"test-lora.safetensors", "test-lora-step00000002.safetensors"} <= set(before)

    real_save_file = safetensors.torch.save_file
    final = out / "test-lora.safetensors"

    def fills_the_disk_on_the_final_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        if Path(filename).name.startswith(f".{final.name}."):
            with open(filename, "r+b") as partial:  # half of it reached the disk
                partial.truncate(os.path.getsize(filename) // 2)
            raise disk_full()

    monkeypatch.setattr(safetensors.torch, "save_file", fills_the_disk_on_the_final_file)
    capsys.readouterr()
    code = main(["run", str(job)])
    err = capsys.readouterr().err
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("kiln: error:")]
    assert errors == [f"kiln: error: disk full while saving {final}; earlier files are intact"]
    assert "Traceback" not in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after["test-lora.safetensors"] == before["test-lora.safetensors"]  # the old final file is intact
    assert not [name for name in after if name.endswith(".tmp")]


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str):
    """A real filesystem that fills up: a tmpfs of `size` (needs root; skipped elsewhere)."""
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def test_a_really_full_disk_is_named_by_every_kind_of_writer(tmp_path):
    """safetensors (Rust), torch.save (C++), PIL and the streaming writer each report a full disk their own way;
    each becomes DiskFullError, with no partial file left."""
    import safetensors.torch
    from PIL import Image

    from trainer.checkpoint import list_states, save_state
    from trainer.models.safetensors_stream import write_safetensors_streaming

    big = {"weight": torch.randn(256, 1024)}  # 1 MiB: larger than the disk
    writers = {
        "lora.safetensors": lambda tmp: safetensors.torch.save_file(big, tmp),
        "model.safetensors": lambda tmp: write_safetensors_streaming(tmp, big),
        "sample.png": lambda tmp: Image.effect_noise((1024, 1024), 60).save(tmp, format="PNG"),
    }
    with small_disk(tmp_path, "256k") as disk:
        for name, write in writers.items():
            with pytest.raises(DiskFullError, match=f"disk full while saving {disk / name}"):
                write_atomically(disk / name, write)
        save_state(disk / "state", 2, {"weights": torch.zeros(8)}, keep=2)
        with pytest.raises(DiskFullError, match="disk full while saving .*step00000004"):
            save_state(disk / "state", 4, {"weights": big["weight"]}, keep=2)
        assert [step for step, _ in list_states(disk / "state")] == [2]
        leftovers = [p for p in disk.rglob("*") if p.name.startswith(".")]
        assert leftovers == []
        assert sorted(p.name for p in disk.iterdir()) == ["state"]
