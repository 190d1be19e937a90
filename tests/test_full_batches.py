"""dataset.full_batches: every batch holds training.batch_size samples. Images of buckets with fewer samples than
a batch move to the nearest bucket that has enough, and each bucket's short last batch is topped up with other
samples of that bucket; the plan stays deterministic by (seed, epoch), and with the key off (its default) the
batches are exactly those of before."""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import torch.nn.functional as F
from PIL import Image

from tests.helpers import make_dataset, write_job
from trainer.config import load_job, parse_job
from trainer.data import LatentCache, TrainData, dataset_settings, scan_dataset
from trainer.data.buckets import centre_crop_top_left
from trainer.dreambooth import planned_index


def picture(path: Path, size: tuple[int, int], shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade % 256, 90, (3 * shade) % 256)).save(path)
    return path


def settings(root: Path, **changes):
    """64 px training with 8 px bucket steps, so small test images land in several buckets."""
    return dataset_settings(root, resolution=64, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=8,
                            **changes)


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Buckets of 6, 2, 1 and 1 samples per epoch: two square images x 3 repeats (64x64), a tall one x 2
    (40x88), and one image each in the 88x40 and 72x56 buckets."""
    root = tmp_path / "mixed"
    picture(root / "3_square" / "a.png", (64, 64), 10)
    picture(root / "3_square" / "b.png", (64, 64), 60)
    picture(root / "2_tall" / "c.png", (48, 96), 110)
    picture(root / "1_wide" / "d.png", (96, 48), 160)
    picture(root / "1_mid" / "e.png", (70, 60), 210)
    return root


def plan_of(data: TrainData, epoch: int, start: int = 0) -> list[list[int]]:
    """The item numbers of each batch the epoch yields (from the batches themselves, images and all)."""
    numbers = {item.path: number for number, item in enumerate(data.index.items)}
    return [[numbers[path] for path in batch.paths] for batch in data.epoch_batches(epoch, start)]


def assert_full_epochs(data: TrainData, epochs: int = 3) -> list[list[list[int]]]:
    """Every batch of each epoch is full and of one bucket, every epoch sample appears at least once, and the
    extra samples are exactly the summary's count, all of them samples of the epoch."""
    expected = Counter(data.epoch_samples)
    assert data.batches_per_epoch == sum(math.ceil(count / data.batch_size) for count in data.buckets.values())
    plans = [plan_of(data, epoch) for epoch in range(epochs)]
    for batches in plans:
        assert len(batches) == data.batches_per_epoch
        assert [len(batch) for batch in batches] == [data.batch_size] * len(batches)
        assert all(len({data.item_buckets[number] for number in batch}) == 1 for batch in batches)
        seen = Counter(number for batch in batches for number in batch)
        assert all(seen[number] >= count for number, count in expected.items())
        assert set(seen) == set(expected)  # fillers are samples of the epoch (the reg subset, say)
        assert sum(seen.values()) - len(data.epoch_samples) == data.summary()["filled_samples"]
    return plans


# --- every batch full ------------------------------------------------------------------------------------------

# Samples added per epoch: at 2 the moves alone fill every batch (8 square, 2 tall); at 3 and 4 the tall image
# moves too (10 square); at 7 no bucket holds a batch, so nothing moves and every bucket is topped up.
@pytest.mark.parametrize("batch_size, filled", [(2, 0), (3, 2), (4, 2), (7, 18)])
def test_every_batch_is_full_and_every_sample_appears(mixed: Path, batch_size: int, filled: int) -> None:
    index = scan_dataset(settings(mixed))
    off = TrainData(index, settings(mixed), batch_size, seed=3)
    assert any(len(batch) < batch_size for batch in plan_of(off, 0))  # the case the key is for
    data = TrainData(index, settings(mixed, full_batches=True), batch_size, seed=3)
    assert_full_epochs(data)
    assert data.batches_per_epoch <= off.batches_per_epoch  # moves can only save batches; the fill adds none
    summary = data.summary()
    assert summary["full_batches"] and summary["samples_per_epoch"] == data.batches_per_epoch * batch_size
    assert sum(bucket["filled"] for bucket in summary["buckets"]) == summary["filled_samples"] == filled
    if batch_size == 7:  # no bucket holds a batch: nothing moves, the buckets are topped up with repeats
        assert data.moved == [] and data.buckets == off.buckets
        assert data.batches_per_epoch == off.batches_per_epoch
    else:  # the 1-sample buckets (and at 3 and 4 the tall one) join the square bucket
        assert len(data.buckets) < len(off.buckets) and (64, 64) in data.buckets


def test_batch_size_one_changes_nothing(mixed: Path) -> None:
    index = scan_dataset(settings(mixed))
    on = TrainData(index, settings(mixed, full_batches=True), 1, seed=0)
    off = TrainData(index, settings(mixed), 1, seed=0)
    assert on.moved == [] and on.summary()["filled_samples"] == 0
    assert [plan_of(on, epoch) for epoch in range(2)] == [plan_of(off, epoch) for epoch in range(2)]


def test_fillers_are_other_images_of_the_bucket_when_it_has_enough(tmp_path: Path) -> None:
    for number in range(5):
        picture(tmp_path / "squares" / f"{number}.png", (64, 64), 40 * number)
    cfg = settings(tmp_path / "squares", full_batches=True)
    data = TrainData(scan_dataset(cfg), cfg, 4, seed=1)
    assert data.batches_per_epoch == 2 and data.summary()["filled_samples"] == 3
    for batches in assert_full_epochs(data, epochs=6):
        assert all(len(set(batch)) == len(batch) for batch in batches)  # 1 short + 3 others, no repeat


def test_a_bucket_of_one_image_that_cannot_move_repeats_it(tmp_path: Path) -> None:
    picture(tmp_path / "one" / "only.png", (48, 96), 0)
    cfg = settings(tmp_path / "one", full_batches=True)
    data = TrainData(scan_dataset(cfg), cfg, 3, seed=0)
    assert assert_full_epochs(data, epochs=1) == [[[0, 0, 0]]]


# --- moving to a fuller bucket ---------------------------------------------------------------------------------

def test_images_of_small_buckets_move_to_the_nearest_full_bucket(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for number in range(4):
        picture(root / f"square{number}.png", (64, 64), 30 * number)
    picture(root / "tall0.png", (48, 96), 1)
    picture(root / "tall1.png", (48, 96), 2)
    near_tall = picture(root / "x_near_tall.png", (50, 90), 3)  # alone in 48x80
    near_square = picture(root / "y_near_square.png", (70, 60), 4)  # alone in 72x56
    index = scan_dataset(settings(root))
    off = TrainData(index, settings(root), 2, seed=0)
    number = {item.path: n for n, item in enumerate(index.items)}
    assert off.item_buckets[number[near_tall]] == (48, 80) and off.item_buckets[number[near_square]] == (72, 56)
    assert off.buckets == {(40, 88): 2, (48, 80): 1, (64, 64): 4, (72, 56): 1}

    data = TrainData(index, settings(root, full_batches=True), 2, seed=0)
    # Nearest by log aspect ratio among the buckets holding >= 2 samples, not the biggest bucket.
    assert data.item_buckets[number[near_tall]] == (40, 88)
    assert data.item_buckets[number[near_square]] == (64, 64)
    assert data.buckets == {(40, 88): 3, (64, 64): 5}
    assert sorted((Path(m["path"]).name, m["from"], m["to"]) for m in data.summary()["moved"]) == [
        ("x_near_tall.png", [48, 80], [40, 88]), ("y_near_square.png", [72, 56], [64, 64])]
    assert_full_epochs(data)
    # The crop, the target size (SDXL conditioning) and the cached latent follow the new bucket.
    batches = list(data.epoch_batches(0))
    for batch in batches:
        for path, target, crop in zip(batch.paths, batch.target_sizes, batch.crop_top_lefts):
            if path == near_tall:
                assert target == (88, 40) and crop == centre_crop_top_left(50, 90, (40, 88))
    data.attach_latent_cache(LatentCache(lambda pixels: F.avg_pool2d(pixels, 8).repeat(1, 2, 1, 1)[:, :4], "pool"))
    for batch in data.epoch_batches(0):
        assert batch.latents is not None and batch.latents.shape[2:] == (batch.target_sizes[0][0] // 8,
                                                                           batch.target_sizes[0][1] // 8)


def test_no_upscale_moves_only_into_buckets_no_larger_than_the_image(tmp_path: Path) -> None:
    root = tmp_path / "data"
    picture(root / "a.png", (64, 64), 0)
    picture(root / "b.png", (64, 64), 50)
    small = picture(root / "small.png", (48, 48), 100)  # its own 48x48 bucket; 64x64 would upscale it
    large = picture(root / "large.png", (90, 70), 150)  # its own 72x56 bucket; 64x64 fits inside it
    index = scan_dataset(settings(root, bucket_no_upscale=True))
    number = {item.path: n for n, item in enumerate(index.items)}
    off = TrainData(index, settings(root, bucket_no_upscale=True), 2, seed=0)
    assert off.buckets == {(48, 48): 1, (64, 64): 2, (72, 56): 1}
    data = TrainData(index, settings(root, bucket_no_upscale=True, full_batches=True), 2, seed=0)
    assert data.item_buckets[number[small]] == (48, 48) and data.item_buckets[number[large]] == (64, 64)
    for item_number, _ in data.moved:
        item, bucket = index.items[item_number], data.item_buckets[item_number]
        assert bucket[0] <= item.width and bucket[1] <= item.height
    plans = assert_full_epochs(data)
    assert all([number[small]] * 2 in batches for batches in plans)  # alone in its bucket: repeated to fill


# --- DreamBooth class images and LoRA regularisation images ----------------------------------------------------

def test_dreambooth_class_and_subject_samples_stay_paired(tmp_path: Path) -> None:
    subjects, classes = tmp_path / "subject", tmp_path / "class"
    picture(subjects / "s0.png", (128, 128), 0)
    picture(subjects / "s1.png", (128, 128), 40)
    picture(subjects / "s2.png", (96, 192), 80)  # alone in a tall bucket: moves to the square one
    for number in range(3):
        picture(classes / f"c{number}.png", (128, 128), 120 + 30 * number)
    cfg = parse_job({"method": "dreambooth", "model": {"base": "builtin:tiny-sd15"},
                     "dataset": {"dir": str(subjects), "resolution": 128, "min_bucket_reso": 64,
                                 "max_bucket_reso": 256, "bucket_reso_steps": 16, "full_batches": True},
                     "dreambooth": {"instance_prompt": "sks thing", "class_prompt": "thing",
                                    "class_dir": str(classes), "class_images_per_instance": 1}})
    index = planned_index(cfg)
    assert index.num_class_images == 3
    data = TrainData(index, cfg.dataset, 4, seed=2)
    assert data.buckets == {(128, 128): 6} and len(data.moved) == 1
    for batches in assert_full_epochs(data, epochs=6):
        # 3 subject + 3 class samples in the bucket: every batch of 4 holds two of each, fillers included.
        assert all(sum(index.items[n].is_class for n in batch) == 2 for batch in batches)


def test_lora_reg_images_stay_paired_and_fill_from_the_epochs_subset(tmp_path: Path) -> None:
    for number in range(3):
        picture(tmp_path / "subject" / f"s{number}.png", (64, 64), 20 * number)
    for number in range(5):
        picture(tmp_path / "reg" / f"r{number}.png", (64, 64), 150 + 20 * number)
    cfg = settings(tmp_path / "subject", reg_dir=str(tmp_path / "reg"), full_batches=True)
    index = scan_dataset(cfg)
    data = TrainData(index, cfg, 4, seed=5)
    subset = {n for n in data.epoch_samples if index.items[n].is_class}
    assert len(subset) == 3  # as many reg samples as subject samples, a fixed subset of the 5
    for batches in assert_full_epochs(data, epochs=5):
        assert all(sum(index.items[n].is_class for n in batch) == 2 for batch in batches)
        assert {n for batch in batches for n in batch if index.items[n].is_class} == subset


def test_the_validation_set_is_not_filled(mixed: Path) -> None:
    from trainer.validation import Validator

    cfg = parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": str(mixed)},
                     "training": {"batch_size": 4},
                     "validation": {"loss": "mse"}})  # the plain loss needs no model to set up
    cfg.dataset = settings(mixed, full_batches=True)  # the tiny test buckets, below the schema's 64 px floor
    held_out = scan_dataset(cfg.dataset)
    validator = Validator(cfg, model=None, method=None, index=held_out)
    assert not validator.data.full_batches and validator.data.moved == []
    assert sum(len(batch) for batch in plan_of(validator.data, 0)) == len(validator.data.epoch_samples)
    assert cfg.dataset.full_batches  # the training's own setting is left as it is


# --- determinism and resume ------------------------------------------------------------------------------------

def record(batch) -> tuple:
    return (batch.paths, batch.captions, batch.flipped, batch.crop_top_lefts, batch.target_sizes,
            batch.pixels.numpy().tobytes())


def test_full_batches_replay_by_seed_and_epoch_and_resume_mid_epoch(mixed: Path) -> None:
    cfg = settings(mixed, full_batches=True, flip=True, random_crop=True, shuffle_caption=True)
    first = TrainData(scan_dataset(cfg), cfg, 3, seed=9)
    second = TrainData(scan_dataset(cfg), cfg, 3, seed=9)  # a fresh process after a resume
    epochs = [[record(batch) for batch in first.epoch_batches(epoch)] for epoch in range(3)]
    assert epochs == [[record(batch) for batch in second.epoch_batches(epoch)] for epoch in range(3)]
    assert epochs[0] != epochs[1]
    for epoch, full in enumerate(epochs):
        for start in range(len(full) + 1):
            assert [record(batch) for batch in second.epoch_batches(epoch, start=start)] == full[start:]
    stream = [batch for full in epochs for batch in full]
    assert [record(second.batch_at(index)) for index in reversed(range(len(stream)))] == stream[::-1]
    assert TrainData(scan_dataset(cfg), cfg, 3, seed=10).summary()["filled_samples"] == \
        first.summary()["filled_samples"]  # how many are added depends on the counts only, not the seed


# --- off: exactly the batches of before ------------------------------------------------------------------------

# Batches (file names) of the `mixed` dataset plus 3 reg images, seed 4, as Kiln planned them before the key
# existed (commit 5865154): with the key absent or false the plans must not change by a sample.
BEFORE = {
    (2, 0): "r1 r2 | d | r2 b | r0 r1 | b r0 | r1 a | r2 b | e | r1 a | c c | a r0",
    (2, 1): "b r2 | r2 b | r1 a | r1 a | e | r0 r0 | a r1 | r0 r2 | d | r1 b | c c",
    (3, 0): "r1 r2 b | a r0 r1 | d | a r0 r1 | r0 | e | r2 b r1 | c c | a r2 b",
    (3, 1): "e | a r1 b | a r0 r2 | a r1 r1 | r2 b r1 | r0 r0 b | d | r2 | c c",
}


def with_reg(mixed: Path) -> Path:
    for number in range(3):
        picture(mixed.parent / "reg" / f"r{number}.png", (64, 64), 90 + 50 * number)
    return mixed.parent / "reg"


def names(data: TrainData, epoch: int) -> str:
    """The epoch's batches as "a b | c | ...": each batch's file names without .png, in training order."""
    return " | ".join(" ".join(path.stem for path in batch.paths) for batch in data.epoch_batches(epoch))


@pytest.mark.parametrize("batch_size, epoch", sorted(BEFORE))
def test_off_keeps_the_batches_of_before(mixed: Path, batch_size: int, epoch: int) -> None:
    reg = with_reg(mixed)
    absent = settings(mixed, reg_dir=str(reg))
    assert absent.full_batches is False
    index = scan_dataset(absent)
    plain = TrainData(index, absent, batch_size, seed=4)
    assert names(plain, epoch) == BEFORE[(batch_size, epoch)]
    false = TrainData(index, dataclasses.replace(absent, full_batches=False), batch_size, seed=4)
    assert names(false, epoch) == BEFORE[(batch_size, epoch)]
    summary = plain.summary()
    assert summary["filled_samples"] == 0 and summary["moved"] == [] and not summary["full_batches"]


# --- through the training loop ---------------------------------------------------------------------------------

def test_training_runs_the_planned_steps_with_every_batch_full(tmp_path: Path, tiny_sd15_dir, monkeypatch) -> None:
    from trainer.loop import default_paths, train
    from trainer.preflight import preflight_data, preflight_report

    data_dir = make_dataset(tmp_path / "data", n=4, size=128)
    tall = picture(data_dir / "tall.png", (40, 100), 7)  # alone in a 64x192 bucket
    (data_dir / "tall.txt").write_text("kiln shape, tall")
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data_dir, tmp_path / "out",
                    sections={"dataset": {"full_batches": True, "resolution": 128, "min_bucket_reso": 64,
                                          "max_bucket_reso": 256, "bucket_reso_steps": 64},
                              "training": {"max_steps": 0, "epochs": 2, "batch_size": 2}})
    cfg = load_job(job)
    report = preflight_report(cfg)
    assert "128x128 (5 samples, 3 batches, +1 to fill)" in report
    assert "full batches: 1 sample(s) added per epoch to fill last batches, 1 image(s) moved to a fuller bucket" \
        in report
    assert f"moved {tall}: 64x192 -> 128x128" in report
    checked = preflight_data(load_job(job))
    assert checked["plan"]["total_steps"] == 6 and checked["dataset"]["filled_samples"] == 1

    seen: list[tuple[int, list[Path]]] = []
    real_batch_at = TrainData.batch_at

    def recording(self, index):
        batch = real_batch_at(self, index)
        seen.append((index, list(batch.paths)))
        return batch

    monkeypatch.setattr(TrainData, "batch_at", recording)
    result = train(cfg, default_paths(cfg))
    assert result.status == "done" and result.step == result.total_steps == 6
    assert [index for index, _ in seen] == list(range(6))
    assert all(len(paths) == 2 for _, paths in seen)
    for epoch in range(2):  # 3 batches an epoch; the moved image is trained in each
        assert tall in {path for _, paths in seen[3 * epoch:3 * epoch + 3] for path in paths}
