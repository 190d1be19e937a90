"""The dataset doctor on a generated dataset with planted problems: it finds exactly those, changes nothing
unless asked, and on a clean set finds nothing."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from trainer.doctor import examine_dataset, move_duplicates_aside

ROOT = Path(__file__).resolve().parents[1]
TAGS = ["red", "blue", "shape", "toy", "studio"]


def textured(seed: int, size: int = 256) -> Image.Image:
    """A sharp, busy picture unlike any other seed's: random blocks of colour over fine noise."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((size // 8, size // 8, 1), dtype=np.uint8)).astype(np.int16)
    image += rng.integers(-30, 30, image.shape, dtype=np.int16)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def clean_dataset(root: Path, n: int = 10) -> Path:
    folder = root / "5_kiln toy"
    folder.mkdir(parents=True)
    rng = random.Random(0)
    for i in range(n):
        textured(i).save(folder / f"img_{i:02d}.png")
        tags = rng.sample(TAGS, 3)
        (folder / f"img_{i:02d}.txt").write_text(", ".join(["kiln", *tags]))
    return root


@pytest.fixture()
def planted(tmp_path):
    root = clean_dataset(tmp_path / "data")
    folder = root / "5_kiln toy"
    # A re-encoded, slightly smaller copy of img_03: the same picture.
    textured(3).resize((240, 240)).save(folder / "copy_of_03.jpg", quality=90)
    (folder / "copy_of_03.txt").write_text("kiln, red, toy")
    # A blurred picture (of a new seed, so it duplicates nothing).
    textured(50).filter(ImageFilter.GaussianBlur(6)).save(folder / "blurred.png")
    (folder / "blurred.txt").write_text("kiln, blue, toy")
    # Far too small for 512 px training.
    textured(60, size=96).save(folder / "tiny.png")
    (folder / "tiny.txt").write_text("kiln, shape, toy")
    # A caption without the trigger word.
    (folder / "img_07.txt").write_text("red, blue, shape")
    return root


def test_clean_dataset_has_no_findings(tmp_path):
    report = examine_dataset(clean_dataset(tmp_path / "data"), resolution=256, trigger="kiln")
    assert report.images == 10
    assert report.findings == [], report.to_text()
    assert [(c.subset, c.images, c.repeats, c.per_epoch) for c in report.concepts] == [("5_kiln toy", 10, 5, 50)]


def test_finds_exactly_the_planted_problems(planted):
    report = examine_dataset(planted, resolution=256, trigger="kiln")
    by_kind = {finding.kind: finding for finding in report.findings}
    assert set(by_kind) == {"duplicates", "blurry", "small", "no-trigger"}, report.to_text()
    assert by_kind["duplicates"].files == ["5_kiln toy/copy_of_03.jpg = 5_kiln toy/img_03.png"] or \
        by_kind["duplicates"].files == ["5_kiln toy/img_03.png = 5_kiln toy/copy_of_03.jpg"]
    assert [f.split(" ")[0] for f in by_kind["blurry"].files] == ["5_kiln"] and \
        "blurred.png" in by_kind["blurry"].files[0] and len(by_kind["blurry"].files) == 1
    assert len(by_kind["small"].files) == 1 and "tiny.png (96x96" in by_kind["small"].files[0]
    assert "upscaled 2.7x" in by_kind["small"].files[0]  # 96 px into a 256 px bucket
    assert by_kind["no-trigger"].files == ["5_kiln toy/img_07.png"]
    for finding in report.findings:  # every finding says what to do
        assert finding.advice


def test_doctor_changes_nothing_until_asked_then_moves_duplicates_aside(planted):
    before = sorted(p.relative_to(planted) for p in planted.rglob("*"))
    report = examine_dataset(planted, resolution=256, trigger="kiln")
    assert sorted(p.relative_to(planted) for p in planted.rglob("*")) == before

    moved = move_duplicates_aside(report)
    aside = planted.with_name("data-duplicates") / "5_kiln toy"
    kept, gone = ("img_03", "copy_of_03") if (planted / "5_kiln toy" / "img_03.png").exists() else ("copy_of_03", "img_03")
    assert len(moved) == 2  # the image and its caption
    assert not list((planted / "5_kiln toy").glob(f"{gone}.*"))
    assert sorted(p.name for p in aside.iterdir()) == sorted([f"{gone}.txt", next(p.name for p in aside.iterdir()
                                                                                  if p.suffix != ".txt")])
    assert list((planted / "5_kiln toy").glob(f"{kept}.*"))
    assert examine_dataset(planted, resolution=256).kinds()["duplicates"] == 0


def test_typo_tags_imbalance_aspect_and_exif(tmp_path):
    root = clean_dataset(tmp_path / "data")
    folder = root / "5_kiln toy"
    (folder / "img_00.txt").write_text("kiln, studoi, red")  # swapped letters of 'studio': a likely typo
    (folder / "img_01.txt").write_text("kiln, studi, red")   # a letter missing: a likely typo
    (folder / "img_02.txt").write_text("kiln, garden, red")  # used once but like no common tag: fine
    other = root / "1_other"
    other.mkdir()
    textured(70, size=256).crop((0, 0, 256, 64)).save(other / "wide.png")  # 4:1
    rotated = textured(71)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(other / "rotated.jpg", exif=exif)
    for name in ("wide", "rotated"):
        (other / f"{name}.txt").write_text("kiln, toy, red")
    report = examine_dataset(root, resolution=256, trigger="kiln")
    by_kind = {finding.kind: finding for finding in report.findings}
    assert by_kind["rare-tag"].files == ["studi", "studoi"]
    assert by_kind["aspect"].files == ["1_other/wide.png (256x64)"]
    assert by_kind["exif-rotated"].files == ["1_other/rotated.jpg"]
    assert "'5_kiln toy' is seen 25.0x as often" in by_kind["imbalance"].message


def test_cli_json_and_bad_folder(planted, tmp_path):
    run = subprocess.run([sys.executable, "-m", "trainer", "doctor", str(planted), "--resolution", "256",
                          "--trigger", "kiln", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert {f["kind"] for f in data["findings"]} == {"duplicates", "blurry", "small", "no-trigger"}
    assert data["concepts"][0]["per_epoch"] == 5 * 13

    missing = subprocess.run([sys.executable, "-m", "trainer", "doctor", str(tmp_path / "nope")], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
