"""One dataset scanner for training and the UI, and the surprises a real folder holds: caption extensions in
another letter case, unreadable folders, captions without images, decompression bombs."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from trainer.data import dataset_settings, scan_dataset
from ui.datasets import save_captions, summarize, view_dataset

REPO = Path(__file__).resolve().parents[1]


def image(path: Path, size=(64, 64), color=(120, 60, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but whose data is a few bytes: what a decompression bomb's
    header looks like. Decoding it would fail (or, for a real bomb, eat the memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def settings(root: Path, **changes):
    return dataset_settings(root, resolution=64, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=8,
                            **changes)


def test_scan_and_ui_view_import_without_torch() -> None:
    code = ("import sys, trainer.data.scan, trainer.data, ui.datasets; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def tricky_tree(root: Path) -> Path:
    """Every case where the UI's old scanner and training disagreed, plus files both must survive."""
    image(root / "10_sks dog" / "a.png")                      # Kohya folder: 10 repeats, caption "sks dog"
    image(root / "10_sks dog" / "closeups" / "b.png")         # nearest N_ ancestor, not only the parent
    image(root / "5_" / "c.png")                              # "5_" has no name: not a Kohya folder
    image(root / "3_style" / "d.png")
    (root / "3_style" / "d.TXT").write_text("red, blue\n")     # caption extension in capitals
    image(root / "e.png", size=(96, 48))                      # loose at the top
    (root / "3_style" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    png_header_only(root / "3_style" / "bomb.png", 100_000, 100_000)
    return root


def test_ui_view_and_training_view_agree_on_a_tricky_tree(tmp_path: Path) -> None:
    root = tricky_tree(tmp_path / "ds")
    training = scan_dataset(dataset_settings(root))
    view = view_dataset(root)
    ui_view = view.images
    as_training = [(item.path.relative_to(root).as_posix(), item.repeats, item.caption, (item.width, item.height))
                   for item in training.items]
    as_ui = [(i.relative, i.repeats, i.training_caption, (i.width, i.height)) for i in ui_view]
    assert as_ui == as_training
    # Which rules won (training's): `(.+)`, the nearest N_ ancestor, the caption extension in any case.
    assert as_training == [
        ("10_sks dog/a.png", 10, "sks dog", (64, 64)),
        ("10_sks dog/closeups/b.png", 10, "sks dog", (64, 64)),
        ("3_style/d.png", 3, "red, blue", (64, 64)),
        ("5_/c.png", 1, "", (64, 64)),
        ("e.png", 1, "", (96, 48)),
    ]
    assert [i.caption for i in ui_view if i.relative == "3_style/d.png"] == ["red, blue"]
    # What training skips, the Dataset tab says, with the reasons.
    assert view.findings == training.warnings
    assert "bomb.png: its header claims" in summarize(view) and "broken.png" in summarize(view)


def test_caption_extension_matches_in_any_letter_case(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    (tmp_path / "a.TXT").write_text("upper case sidecar")
    image(tmp_path / "b.png")
    (tmp_path / "b.Caption").write_text("custom extension")
    (tmp_path / "b.txt").write_text("not the configured extension")
    txt = {item.path.name: item.caption for item in scan_dataset(settings(tmp_path)).items}
    assert txt == {"a.png": "upper case sidecar", "b.png": "not the configured extension"}
    custom = {item.path.name: item.caption for item in scan_dataset(settings(tmp_path,
                                                                             caption_extension=".caption")).items}
    assert custom == {"a.png": "", "b.png": "custom extension"}


def test_exact_spelling_of_the_extension_wins_when_both_exist(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    (tmp_path / "a.TXT").write_text("capitals")
    (tmp_path / "a.txt").write_text("exact")
    assert scan_dataset(settings(tmp_path)).items[0].caption == "exact"


def test_caption_editor_writes_the_caption_file_training_reads(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    (tmp_path / "a.TXT").write_text("old")
    assert save_captions(tmp_path, [("a.png", "new words")]) == (["a.png"], [])  # (changed, problems)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.TXT", "a.png"]  # no second a.txt beside it
    assert scan_dataset(settings(tmp_path)).items[0].caption == "new words"


def test_unreadable_subfolder_is_a_warning_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    image(tmp_path / "ok" / "a.png")
    locked = tmp_path / "locked"
    image(locked / "b.png")
    real_scandir = os.scandir

    def scandir(path="."):  # tests run as root here, so chmod 000 would not lock anything
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    index = scan_dataset(settings(tmp_path))
    assert [item.path.name for item in index.items] == ["a.png"]
    assert index.unreadable_folders == [(locked, "Permission denied")]
    assert any("cannot be read" in w and "locked" in w for w in index.warnings)


def test_caption_file_without_an_image_is_listed(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / "renamed.txt").write_text("its image is gone")
    index = scan_dataset(settings(tmp_path))
    assert index.orphan_captions == [tmp_path / "renamed.txt"]
    assert any("no image of the same name" in w and "renamed.txt" in w for w in index.warnings)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_skipped_without_decoding(tmp_path: Path, monkeypatch) -> None:
    image(tmp_path / "fine.png")
    png_header_only(tmp_path / "huge.png", 100_000, 100_000)      # Pillow itself refuses at open
    png_header_only(tmp_path / "large.png", 9_500, 9_500)         # Pillow would only warn and decode it
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    index = scan_dataset(settings(tmp_path))
    reasons = {path.name: reason for path, reason in index.skipped}
    assert [item.path.name for item in index.items] == ["fine.png"]
    assert "10000000000 pixels" in reasons["huge.png"] and "not decoded" in reasons["huge.png"]
    assert "9500x9500" in reasons["large.png"] and "decompression bomb" in reasons["large.png"]
    assert (9_500, 9_500) not in decoded and (100_000, 100_000) not in decoded


def test_captioning_keeps_a_caption_file_in_capitals(tmp_path: Path) -> None:
    from trainer.caption import CaptionOptions
    from trainer.caption.methods import make_captioner
    from trainer.caption.runner import caption_dataset

    image(tmp_path / "a.png")
    (tmp_path / "a.TXT").write_text("kept caption")
    image(tmp_path / "b.png")
    options = CaptionOptions(dir=str(tmp_path), method="basic", text="new caption")
    caption_dataset(options, make_captioner(options))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.TXT", "a.png", "b.png", "b.txt"]
    assert (tmp_path / "a.TXT").read_text() == "kept caption"
    assert (tmp_path / "b.txt").read_text().strip() == "new caption"
