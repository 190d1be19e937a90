"""The dataset pipeline (trainer.data), on small images generated here."""
from __future__ import annotations

import hashlib
import math
import random
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import (
    DatasetError, LatentCache, TrainData, load_image_rgb, make_buckets, process_caption,
    dataset_settings, resize_and_crop, scan_dataset,
)
from trainer.data.buckets import bucket_for_image, kept_fraction
from trainer.data.images import to_rgb


def small_settings(root: Path, **changes):
    """Settings scaled down so tests stay fast: 64 px training, 8 px bucket steps."""
    values = dict(resolution=64, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=8)
    values.update(changes)
    return dataset_settings(root, **values)


def save_image(path: Path, size: tuple[int, int], color=(200, 30, 40), mode: str = "RGB", **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, color)
    if mode == "RGB":  # some structure, so crops and flips are visible in the pixels
        pixels = np.asarray(image).copy()
        pixels[:, : size[0] // 3] = (10, 220, 90)
        image = Image.fromarray(pixels)
    image.save(path, **save_args)
    return path


def write_caption(path: Path, text: str, bom: bool = False) -> None:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def folder_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def mixed_dataset(tmp_path: Path) -> Path:
    """Kohya folders, a plain subfolder and loose images, in several aspect ratios and formats."""
    root = tmp_path / "dataset"
    dog = root / "10_sks dog"
    save_image(dog / "a.png", (64, 64))
    save_image(dog / "b.png", (96, 48))
    write_caption(dog / "b.txt", "sks dog, red collar\n", bom=True)
    save_image(root / "3_style" / "nested" / "c.jpg", (48, 96), format="JPEG")
    write_caption(root / "3_style" / "nested" / "c.txt", "style, painting")
    save_image(root / "plain" / "d.webp", (80, 60), format="WEBP")
    save_image(root / "e.BMP", (70, 70), format="BMP")
    write_caption(root / "e.txt", "  loose image  ")
    (root / "notes.md").write_text("not an image")
    return root


# --- scanning ---------------------------------------------------------------------------------------------

def test_scan_follows_kohya_folders_and_settings(mixed_dataset: Path) -> None:
    index = scan_dataset(small_settings(mixed_dataset, repeats=2, default_caption="a photo"))
    by_name = {item.path.name: item for item in index.items}
    assert sorted(by_name) == ["a.png", "b.png", "c.jpg", "d.webp", "e.BMP"]
    assert (by_name["a.png"].caption, by_name["a.png"].repeats, by_name["a.png"].subset) == \
        ("sks dog", 10, "10_sks dog")
    assert by_name["b.png"].caption == "sks dog, red collar"  # sidecar wins; BOM and newline gone
    assert (by_name["c.jpg"].repeats, by_name["c.jpg"].subset) == (3, "3_style")
    assert (by_name["d.webp"].caption, by_name["d.webp"].repeats, by_name["d.webp"].subset) == \
        ("a photo", 2, "plain")
    assert (by_name["e.BMP"].caption, by_name["e.BMP"].subset) == ("loose image", "dataset")
    assert (by_name["b.png"].width, by_name["b.png"].height) == (96, 48)
    assert index.num_images == 5
    assert index.num_repeated == 10 + 10 + 3 + 2 + 2
    assert index.tag_frequency() == {
        "10_sks dog": {"sks dog": 2, "red collar": 1}, "3_style": {"style": 1, "painting": 1},
        "plain": {"a photo": 1}, "dataset": {"loose image": 1}}
    assert index.skipped == []
    assert any("notes.md" in warning for warning in index.warnings)


def test_scan_is_deterministic(mixed_dataset: Path) -> None:
    first = scan_dataset(small_settings(mixed_dataset))
    second = scan_dataset(small_settings(mixed_dataset))
    assert first.items == second.items


def test_uncaptioned_images_are_warned_about(tmp_path: Path) -> None:
    save_image(tmp_path / "one.png", (40, 40))
    save_image(tmp_path / "two.png", (40, 40))
    write_caption(tmp_path / "two.txt", "captioned")
    index = scan_dataset(small_settings(tmp_path))
    caption_warnings = [w for w in index.warnings if "no caption" in w]
    assert len(caption_warnings) == 1 and "one.png" in caption_warnings[0] and "two.png" not in caption_warnings[0]


def test_caption_extension_without_dot_and_multiline_caption(tmp_path: Path) -> None:
    save_image(tmp_path / "x.png", (40, 40))
    write_caption(tmp_path / "x.caption", "first line\nsecond line\n")
    index = scan_dataset(small_settings(tmp_path, caption_extension="caption"))
    assert index.items[0].caption == "first line"
    assert any("x.caption" in w and "only the first" in w for w in index.warnings)


def test_unicode_and_space_file_names(tmp_path: Path) -> None:
    folder = tmp_path / "5_ça va"
    image_path = save_image(folder / "ünïcode 画像 1.png", (48, 40))
    write_caption(folder / "ünïcode 画像 1.txt", "猫, chat")
    index = scan_dataset(small_settings(tmp_path))
    assert [(i.path, i.caption, i.repeats) for i in index.items] == [(image_path, "猫, chat", 5)]
    batch = next(TrainData(index, small_settings(tmp_path), batch_size=1, seed=0).epoch_batches(0))
    assert batch.paths == [image_path] and batch.pixels is not None


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"does not exist") as raised:
        scan_dataset(small_settings(tmp_path / "nope"))
    assert "nope" in str(raised.value) and "dataset.dir" in str(raised.value)


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(DatasetError, match=r"is empty") as raised:
        scan_dataset(small_settings(tmp_path))
    assert str(tmp_path) in str(raised.value) and ".png" in str(raised.value)


def test_folder_of_non_images_names_files_and_accepted_extensions(tmp_path: Path) -> None:
    (tmp_path / "readme.pdf").write_bytes(b"%PDF")
    Image.new("RGB", (40, 40)).save(tmp_path / "anim.gif")
    with pytest.raises(DatasetError) as raised:
        scan_dataset(small_settings(tmp_path))
    message = str(raised.value)
    assert "has no images" in message and "readme.pdf" in message and "anim.gif" in message
    for extension in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        assert extension in message


def make_broken_files(root: Path) -> dict[str, str]:
    """Broken files by name, with a word their skip reason must contain."""
    save_image(root / "tmp.jpg", (64, 64), format="JPEG")
    data = (root / "tmp.jpg").read_bytes()
    (root / "tmp.jpg").unlink()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "zero.png").write_bytes(b"")
    (root / "text.jpg").write_text("I am not a JPEG")
    Image.new("RGB", (1, 1)).save(root / "dot.png")
    Image.new("RGB", (15, 100)).save(root / "thin.png")
    return {"truncated.jpg": "truncated", "zero.png": "0 bytes", "text.jpg": "not a readable image",
            "dot.png": "too small", "thin.png": "too small"}


def test_broken_files_are_skipped_with_reasons_in_one_warning(tmp_path: Path) -> None:
    expected = make_broken_files(tmp_path)
    good = save_image(tmp_path / "good.png", (40, 40))
    before = folder_digest(tmp_path)
    index = scan_dataset(small_settings(tmp_path))
    assert [item.path for item in index.items] == [good]
    reasons = {path.name: reason for path, reason in index.skipped}
    assert sorted(reasons) == sorted(expected)
    for name, word in expected.items():
        assert word in reasons[name], (name, reasons[name])
    skip_warnings = [w for w in index.warnings if w.startswith("skipped")]
    assert len(skip_warnings) == 1 and all(name in skip_warnings[0] for name in expected)
    assert folder_digest(tmp_path) == before  # nothing the user had was changed or removed


def test_only_broken_files_is_an_error_listing_them(tmp_path: Path) -> None:
    expected = make_broken_files(tmp_path)
    with pytest.raises(DatasetError, match="no usable images") as raised:
        scan_dataset(small_settings(tmp_path))
    assert all(name in str(raised.value) for name in expected)


def test_extreme_aspect_ratio_is_trained_with_a_crop_warning(tmp_path: Path) -> None:
    Image.new("RGB", (10000, 50), (90, 90, 90)).save(tmp_path / "banner.png")
    settings = small_settings(tmp_path)
    index = scan_dataset(settings)
    assert (index.items[0].width, index.items[0].height) == (10000, 50)
    assert any("banner.png" in w and "cropped away" in w for w in index.warnings)
    batch = next(TrainData(index, settings, batch_size=1, seed=0).epoch_batches(0))
    assert batch.pixels is not None and batch.pixels.shape == (1, 3, 32, 128)
    assert batch.original_sizes == [(50, 10000)]


def test_zero_repeat_folder_is_skipped(tmp_path: Path) -> None:
    save_image(tmp_path / "0_off" / "a.png", (40, 40))
    save_image(tmp_path / "2_on" / "b.png", (40, 40))
    index = scan_dataset(small_settings(tmp_path))
    assert [item.path.name for item in index.items] == ["b.png"]
    assert "0 repeats" in index.skipped[0][1]


# --- image loading ----------------------------------------------------------------------------------------

def test_cmyk_jpeg_becomes_the_right_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "red.jpg", format="JPEG", quality=95)
    image = load_image_rgb(tmp_path / "red.jpg")
    red, green, blue = image.getpixel((16, 16))
    assert image.mode == "RGB" and red > 240 and green < 15 and blue < 15


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 257 * 200, 65535]], dtype=np.uint16).repeat(16, axis=0).repeat(16, axis=1)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = load_image_rgb(tmp_path / "deep.png")
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in (0, 16, 32, 48)] == [(0,) * 3, (100,) * 3, (200,) * 3, (255,) * 3]


def write_png_rgb16(path: Path, pixel: tuple[int, int, int], size: int = 16) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot save one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" + struct.pack(">3H", *pixel) * size
    header = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * size))
                     + chunk(b"IEND", b""))


def test_16_bit_rgb_png_keeps_its_colour(tmp_path: Path) -> None:
    write_png_rgb16(tmp_path / "deep.png", (65535, 257 * 128, 0))
    assert load_image_rgb(tmp_path / "deep.png").getpixel((3, 3)) == (255, 128, 0)


def test_float_and_32_bit_images_are_scaled() -> None:
    as_float = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F")
    assert to_rgb(as_float).getpixel((0, 0)) == (128, 128, 128)
    as_int = Image.fromarray(np.full((4, 4), 257 * 60, dtype=np.int32), mode="I")
    assert to_rgb(as_int).getpixel((0, 0)) == (60, 60, 60)


def test_transparency_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)      # opaque red
    rgba[:, 8:12] = (0, 0, 0, 0)        # fully transparent (black underneath must not show)
    rgba[:, 12:] = (0, 0, 0, 128)       # half-transparent black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    image = load_image_rgb(tmp_path / "alpha.png")
    assert image.getpixel((2, 2)) == (255, 0, 0)
    assert image.getpixel((9, 2)) == (255, 255, 255)
    assert all(abs(channel - 127) <= 1 for channel in image.getpixel((14, 2)))

    grey_alpha = Image.new("LA", (16, 16), (0, 0))
    grey_alpha.save(tmp_path / "la.png")
    assert load_image_rgb(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_palette_png_with_and_without_transparency(tmp_path: Path) -> None:
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    for x in range(8):
        for y in range(16):
            palette.putpixel((x, y), 0)
    palette.save(tmp_path / "plain.png")
    palette.save(tmp_path / "keyed.png", transparency=0)
    plain = load_image_rgb(tmp_path / "plain.png")
    keyed = load_image_rgb(tmp_path / "keyed.png")
    assert plain.getpixel((12, 3)) == keyed.getpixel((12, 3)) == (10, 200, 30)
    assert plain.getpixel((2, 3)) == (0, 0, 0)
    assert keyed.getpixel((2, 3)) == (255, 255, 255)


def test_exif_rotated_jpeg_is_upright_in_scan_and_load(tmp_path: Path) -> None:
    stored = np.zeros((40, 80, 3), dtype=np.uint8)  # stored landscape 80x40
    stored[:20, :40] = (255, 255, 255)               # white block in the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.jpg", format="JPEG", quality=95, exif=exif.tobytes())
    image = load_image_rgb(tmp_path / "phone.jpg")
    assert image.size == (40, 80)
    # Rotating clockwise moves the stored top-left to the displayed top-right.
    assert min(image.getpixel((30, 10))) > 200 and max(image.getpixel((10, 10))) < 50
    item = scan_dataset(small_settings(tmp_path)).items[0]
    assert (item.width, item.height) == (40, 80)


# --- buckets ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("resolution, low, high, step", [(512, 256, 1024, 64), (1024, 512, 2048, 64),
                                                         (64, 32, 128, 8)])
def test_buckets_fit_the_area_and_step(resolution: int, low: int, high: int, step: int) -> None:
    buckets = make_buckets(resolution, low, high, step)
    assert (resolution, resolution) in buckets
    for width, height in buckets:
        assert width * height <= resolution ** 2
        assert width % step == height % step == 0
        assert low <= width <= high and low <= height <= high
        assert (height, width) in buckets
    assert len(set(buckets)) == len(buckets)


def test_bucket_choice_follows_aspect_ratio_and_settings(tmp_path: Path) -> None:
    settings = small_settings(tmp_path)
    buckets = make_buckets(64, 32, 128, 8)
    assert bucket_for_image(300, 300, settings, buckets) == (64, 64)
    wide = bucket_for_image(200, 100, settings, buckets)
    assert abs(wide[0] / wide[1] - 2) == min(abs(w / h - 2) for w, h in buckets)
    assert bucket_for_image(100, 200, settings, buckets) == wide[::-1]

    no_upscale = small_settings(tmp_path, bucket_no_upscale=True)
    assert bucket_for_image(50, 41, no_upscale, buckets) == (48, 40)  # no larger than the image
    large = bucket_for_image(400, 200, no_upscale, buckets)
    assert large[0] * large[1] <= 64 * 64 and large[0] % 8 == large[1] % 8 == 0
    scale = math.sqrt(64 * 64 / (400 * 200))  # shrink to fit the area, then round each side down to a step
    assert 0 <= 400 * scale - large[0] < 8 and 0 <= 200 * scale - large[1] < 8

    assert bucket_for_image(200, 100, small_settings(tmp_path, enable_bucket=False), buckets) == (64, 64)


def test_resize_and_crop_gives_bucket_size_crop_position_and_flip() -> None:
    pixels = np.zeros((50, 100, 3), dtype=np.uint8)
    pixels[:, :50] = (255, 0, 0)
    pixels[:, 50:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    crop, (top, left) = resize_and_crop(image, (32, 32))  # resized to 64x32, centre crop
    assert crop.size == (32, 32) and (top, left) == (0, 16)
    assert crop.getpixel((2, 16))[0] > 200 and crop.getpixel((29, 16))[2] > 200

    flipped, (top, left) = resize_and_crop(image, (32, 32), crop_position=(0.0, 0.0), flip=True)
    assert (top, left) == (0, 32)  # the leftmost crop, seen in the mirrored image, starts at the right
    assert np.array_equal(np.asarray(flipped), np.asarray(resize_and_crop(image, (32, 32), (0.0, 0.0))[0])[:, ::-1])
    assert kept_fraction(100, 50, (32, 32)) == pytest.approx(0.5)


# --- captions ---------------------------------------------------------------------------------------------

def test_process_caption_keep_tokens_shuffle_and_dropout() -> None:
    caption = "sks, dog, red collar, grass, sunny, park"
    outputs = set()
    for seed in range(20):
        result = process_caption(caption, True, 1, 0.0, random.Random(seed))
        tags = result.split(", ")
        assert tags[0] == "sks" and sorted(tags) == sorted(caption.split(", "))
        outputs.add(result)
    assert len(outputs) > 1
    assert process_caption(caption, True, 2, 0.0, random.Random(3)) == \
        process_caption(caption, True, 2, 0.0, random.Random(3))
    assert process_caption(caption, False, 0, 0.0, random.Random(0)) == caption
    assert process_caption(caption, True, 0, 1.0, random.Random(0)) == ""
    dropped = sum(process_caption(caption, False, 0, 0.3, random.Random(seed)) == "" for seed in range(400))
    assert 80 < dropped < 160


# --- epochs and batches -----------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
def test_batches_per_epoch_equals_batches_yielded(mixed_dataset: Path, batch_size: int) -> None:
    settings = small_settings(mixed_dataset, repeats=2)
    index = scan_dataset(settings)
    data = TrainData(index, settings, batch_size=batch_size, seed=1)
    batches = list(data.epoch_batches(0))
    assert len(batches) == data.batches_per_epoch
    expected_steps = sum(math.ceil(count / batch_size) for count in data.buckets.values())
    assert data.batches_per_epoch == expected_steps and len(data.buckets) > 1
    seen = Counter(path for batch in batches for path in batch.paths)
    assert seen == {item.path: item.repeats for item in index.items}
    for batch in batches:
        assert 1 <= len(batch.paths) <= batch_size
        assert batch.pixels is not None and batch.latents is None
        height, width = batch.target_sizes[0]
        assert batch.pixels.shape == (len(batch.paths), 3, height, width)
        assert len(set(batch.target_sizes)) == 1
        assert batch.pixels.min() >= -1 and batch.pixels.max() <= 1
        assert batch.is_class == [False] * len(batch.paths)
        assert len(batch.captions) == len(batch.original_sizes) == len(batch.crop_top_lefts) == len(batch.paths)


def batch_record(batch) -> tuple:
    return (batch.paths, batch.captions, batch.flipped, batch.crop_top_lefts, batch.original_sizes,
            batch.target_sizes, batch.pixels.numpy().tobytes() if batch.pixels is not None else None)


def augmented(root: Path):
    return small_settings(root, flip=True, random_crop=True, shuffle_caption=True, keep_tokens=1,
                          caption_dropout_rate=0.2, repeats=2)


def test_same_seed_gives_identical_batches_regardless_of_global_rng(mixed_dataset: Path) -> None:
    settings = augmented(mixed_dataset)
    index = scan_dataset(settings)
    random.seed(1)
    torch.manual_seed(1)
    first = [batch_record(b) for b in TrainData(index, settings, batch_size=2, seed=7).epoch_batches(3)]
    random.seed(2)
    torch.manual_seed(2)
    np.random.seed(2)
    second = [batch_record(b) for b in TrainData(index, settings, batch_size=2, seed=7).epoch_batches(3)]
    assert first == second
    other_seed = [batch_record(b) for b in TrainData(index, settings, batch_size=2, seed=8).epoch_batches(3)]
    other_epoch = [batch_record(b) for b in TrainData(index, settings, batch_size=2, seed=7).epoch_batches(4)]
    assert other_seed != first and other_epoch != first
    assert any(any(record[2]) for record in first)  # flips happen
    assert any(not all(record[2]) for record in first)


def test_resuming_at_a_batch_replays_the_tail_of_the_epoch(mixed_dataset: Path) -> None:
    settings = augmented(mixed_dataset)
    data = TrainData(scan_dataset(settings), settings, batch_size=3, seed=11)
    full = [batch_record(b) for b in data.epoch_batches(2)]
    for start in (1, len(full) // 2, len(full) - 1, len(full)):
        assert [batch_record(b) for b in data.epoch_batches(2, start=start)] == full[start:]
    with pytest.raises(DatasetError, match="cannot start epoch 2 at batch"):
        next(data.epoch_batches(2, start=len(full) + 1))


def test_batch_at_walks_epochs_back_to_back(mixed_dataset: Path) -> None:
    settings = augmented(mixed_dataset)
    data = TrainData(scan_dataset(settings), settings, batch_size=2, seed=5)
    stream = [batch_record(b) for epoch in range(3) for b in data.epoch_batches(epoch)]
    assert [batch_record(data.batch_at(i)) for i in range(len(stream))] == stream
    assert batch_record(data.batch_at(len(stream) - 1)) == stream[-1]  # random access, not only in order
    assert batch_record(data.batch_at(1)) == stream[1]


def test_image_removed_after_scan_is_a_clear_error(tmp_path: Path) -> None:
    save_image(tmp_path / "keep.png", (40, 40))
    gone = save_image(tmp_path / "gone.png", (40, 40))
    settings = small_settings(tmp_path)
    data = TrainData(scan_dataset(settings), settings, batch_size=2, seed=0)
    gone.unlink()
    with pytest.raises(DatasetError, match="gone.png") as raised:
        list(data.epoch_batches(0))
    assert "when the dataset was scanned" in str(raised.value)


def test_bad_batch_size_and_bad_bucket_settings(mixed_dataset: Path) -> None:
    settings = small_settings(mixed_dataset)
    with pytest.raises(DatasetError, match="batch_size"):
        TrainData(scan_dataset(settings), settings, batch_size=0, seed=0)
    with pytest.raises(DatasetError, match="bucket_reso_steps"):
        scan_dataset(small_settings(mixed_dataset, bucket_reso_steps=12))
    with pytest.raises(DatasetError, match="min_bucket_reso"):
        scan_dataset(small_settings(mixed_dataset, min_bucket_reso=256))


def test_summary_reports_what_check_needs(mixed_dataset: Path) -> None:
    Image.new("RGB", (4, 4)).save(mixed_dataset / "tiny.png")
    settings = small_settings(mixed_dataset, repeats=2)
    data = TrainData(scan_dataset(settings), settings, batch_size=4, seed=0)
    summary = data.summary()
    assert summary["images"] == 5 and summary["repeated_images"] == 27
    assert summary["subsets"]["10_sks dog"] == {"images": 2, "repeats": 10}
    assert summary["batches_per_epoch"] == data.batches_per_epoch
    assert sum(bucket["samples"] for bucket in summary["buckets"]) == 27
    assert sum(bucket["batches"] for bucket in summary["buckets"]) == data.batches_per_epoch
    assert [Path(entry["path"]).name for entry in summary["skipped"]] == ["tiny.png"]


# --- latent cache -----------------------------------------------------------------------------------------

class CountingEncoder:
    """A stand-in VAE: 8x average pooling to 4 channels; counts the images it encodes."""

    def __init__(self) -> None:
        self.images = 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.images += pixels.shape[0]
        pooled = torch.nn.functional.avg_pool2d(pixels, 8)
        return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)


def test_latent_cache_memory_hits_and_latents_match_pixels(mixed_dataset: Path) -> None:
    settings = small_settings(mixed_dataset, flip=True, shuffle_caption=True)
    index = scan_dataset(settings)
    uncached = [b for b in TrainData(index, settings, batch_size=2, seed=5).epoch_batches(0)]
    data = TrainData(index, settings, batch_size=2, seed=5)
    encoder = CountingEncoder()
    cache = LatentCache(encoder, vae_id="vae-a")
    progress: list[tuple[int, int]] = []
    data.attach_latent_cache(cache, progress=lambda done, total: progress.append((done, total)))
    assert encoder.images == 2 * index.num_images  # both flip variants of each image, once
    assert progress[-1] == (2 * index.num_images, 2 * index.num_images)
    cached = list(data.epoch_batches(0))
    assert len(cached) == len(uncached)
    for with_latents, with_pixels in zip(cached, uncached):
        assert with_latents.pixels is None
        assert with_latents.paths == with_pixels.paths and with_latents.captions == with_pixels.captions
        assert with_latents.crop_top_lefts == with_pixels.crop_top_lefts
        assert with_latents.original_sizes == with_pixels.original_sizes
        assert torch.allclose(with_latents.latents, CountingEncoder()(with_pixels.pixels), atol=1e-6)
    TrainData(index, settings, batch_size=2, seed=5).attach_latent_cache(cache)
    assert encoder.images == 2 * index.num_images  # all memory hits


def test_latent_cache_keeps_the_training_dtype_on_disk_and_apart(mixed_dataset: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    settings = small_settings(mixed_dataset)
    cache_dir = tmp_path / "latents"
    encoder = CountingEncoder()
    data = TrainData(scan_dataset(settings), settings, 2, 0)
    data.attach_latent_cache(LatentCache(encoder, "vae-a", cache_dir, dtype=torch.bfloat16))
    files = sorted(cache_dir.glob("*.safetensors"))
    assert files and {load_file(f)["latents"].dtype for f in files} == {torch.bfloat16}
    batch = next(iter(data.epoch_batches(0)))
    assert batch.latents.dtype == torch.bfloat16
    fresh = CountingEncoder()(next(iter(TrainData(scan_dataset(settings), settings, 2, 0).epoch_batches(0))).pixels)
    assert torch.allclose(batch.latents.float(), fresh, rtol=1e-2, atol=1e-2)  # bf16 keeps ~3 digits
    before = encoder.images
    # an fp32 job on the same folder does not read the bf16 entries back: it encodes its own
    TrainData(scan_dataset(settings), settings, 2, 0).attach_latent_cache(LatentCache(encoder, "vae-a", cache_dir))
    assert encoder.images == 2 * before and len(list(cache_dir.glob("*.safetensors"))) == 2 * len(files)


def test_latent_cache_on_disk_reuses_and_reencodes_changed_images(mixed_dataset: Path, tmp_path: Path) -> None:
    settings = small_settings(mixed_dataset)
    cache_dir = tmp_path / "latents"
    dataset_before = folder_digest(mixed_dataset)
    first = CountingEncoder()
    TrainData(scan_dataset(settings), settings, 2, 0).attach_latent_cache(LatentCache(first, "vae-a", cache_dir))
    assert first.images == 5
    files = sorted(cache_dir.iterdir())
    assert len(files) == 5 and all(f.suffix == ".safetensors" for f in files)  # no temporary files left

    second = CountingEncoder()
    data = TrainData(scan_dataset(settings), settings, 2, 0)
    data.attach_latent_cache(LatentCache(second, "vae-a", cache_dir))
    assert second.images == 0  # every latent read from disk
    assert all(batch.latents is not None for batch in data.epoch_batches(0))

    save_image(mixed_dataset / "10_sks dog" / "a.png", (64, 64), color=(1, 2, 3))  # same size, new content
    third = CountingEncoder()
    TrainData(scan_dataset(settings), settings, 2, 0).attach_latent_cache(LatentCache(third, "vae-a", cache_dir))
    assert third.images == 1

    other_vae = CountingEncoder()
    TrainData(scan_dataset(settings), settings, 2, 0).attach_latent_cache(LatentCache(other_vae, "vae-b", cache_dir))
    assert other_vae.images == 5

    for entry in cache_dir.iterdir():
        entry.write_bytes(b"damaged")
    repaired = CountingEncoder()
    TrainData(scan_dataset(settings), settings, 2, 0).attach_latent_cache(LatentCache(repaired, "vae-b", cache_dir))
    assert repaired.images == 5  # damaged entries are misses, encoded again
    assert repaired.images == other_vae.images
    dataset_after = folder_digest(mixed_dataset)
    changed = {name for name in dataset_before if dataset_before[name] != dataset_after[name]}
    assert set(dataset_after) == set(dataset_before) and changed == {"10_sks dog/a.png"}  # only our own edit


def test_latent_cache_refuses_random_crop(mixed_dataset: Path) -> None:
    settings = small_settings(mixed_dataset, random_crop=True)
    data = TrainData(scan_dataset(settings), settings, 2, 0)
    with pytest.raises(DatasetError) as raised:
        data.attach_latent_cache(LatentCache(CountingEncoder(), "vae-a"))
    assert "random_crop" in str(raised.value) and "cache_latents" in str(raised.value)
