"""Datasets Kohya users expect: [[dataset.concepts]], regularisation images for LoRA, masked training and the
caption options (tag dropout, keep_tokens_separator, wildcards, prefix/suffix)."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import make_dataset, write_job
from trainer.config import ConfigError, load_job, parse_job
from trainer.config.docs import render_config_doc
from trainer.data import DatasetError, TrainData, dataset_settings, process_caption, scan_dataset
from trainer.diffusion import example_losses
from trainer.methods.base import TrainingMethod
from trainer.preflight import build_plan


def images(folder: Path, n: int, size=(64, 64), caption: str | None = None, color=(90, 160, 30)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (color[0], color[1], (color[2] + 37 * i) % 256)).save(folder / f"img{i}.png")
        if caption is not None:
            (folder / f"img{i}.txt").write_text(f"{caption} {i}")
    return folder


def settings(root: Path | str, **changes):
    return dataset_settings(root, resolution=64, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=8,
                            **changes)


def concept(folder: Path, **keys) -> dict:
    """A [[dataset.concepts]] table as the config holds it: every key, None for "as [dataset]"."""
    table = {"dir": str(folder), "repeats": 1.0, "caption": "", "caption_extension": None, "caption_prefix": "",
             "caption_suffix": "", "is_regularization": False, "loss_weight": 1.0, "flip": None,
             "random_crop": None, "shuffle_caption": None}
    table.update(keys)
    return table


# --- the schema: an array of tables ------------------------------------------------------------------------

JOB = """method = "lora"
[model]
base = "builtin:tiny-sd15"
[dataset]
resolution = 64
[[dataset.concepts]]
dir = "subject"
repeats = 2.5
caption = "sks dog"
loss_weight = 2.0
flip = true
[[dataset.concepts]]
dir = "/abs/reg"
is_regularization = true
"""


def test_concepts_are_read_checked_and_written_back(tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(JOB)
    cfg = load_job(tmp_path / "job.toml")  # dataset.dir may stay empty: the concepts list the folders
    first, second = cfg.dataset.concepts
    assert first == concept(tmp_path / "subject", repeats=2.5, caption="sks dog", loss_weight=2.0, flip=True)
    assert second == concept(Path("/abs/reg"), is_regularization=True)
    (tmp_path / "again.toml").write_text(cfg.to_toml())
    assert "[[dataset.concepts]]" in cfg.to_toml() and "None" not in cfg.to_toml()
    assert load_job(tmp_path / "again.toml").dataset.concepts == cfg.dataset.concepts


@pytest.mark.parametrize("table, message", [
    ('dir = "a"\nrepeats = 0', "dataset.concepts[2].repeats = 0 is out of range (must be > 0 and <= 1000)"),
    ('dir = "a"\nrepeatz = 2', "`dataset.concepts[2].repeatz` is not a key of [[dataset.concepts]]; did you mean "
                               "`repeats`?"),
    ("repeats = 2", "dataset.concepts[2].dir is required but missing"),
    ('dir = "a"\nflip = "yes"', "dataset.concepts[2].flip = \"yes\" has the wrong type (must be true or false)"),
    ('dir = "a"\ncaption_extension = "txt"', "dataset.concepts[2].caption_extension = \"txt\" is not valid"),
])
def test_a_bad_concept_is_named_by_its_number_and_key(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "job.toml").write_text(JOB.split("[[dataset.concepts]]")[0] + '[[dataset.concepts]]\ndir = "x"\n'
                                       + "[[dataset.concepts]]\n" + table + "\n")
    with pytest.raises(ConfigError) as info:
        load_job(tmp_path / "job.toml")
    assert message in str(info.value)


def test_dataset_dir_is_still_required_without_concepts() -> None:
    with pytest.raises(ConfigError, match=r"dataset.dir is required but missing \(or set dataset.concepts\)"):
        parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"}})


def test_config_doc_describes_the_concept_keys() -> None:
    doc = render_config_doc()
    section = doc.split("### [[dataset.concepts]]")[1].split("\n## ")[0]
    for key in ("dir", "repeats", "caption_extension", "caption_prefix", "is_regularization", "loss_weight",
                "flip", "random_crop", "shuffle_caption"):
        assert f"| `{key}` |" in section
    assert "| as [dataset] |" in section


# --- concepts in the scan and the batches -------------------------------------------------------------------

def test_concepts_bring_their_own_captions_repeats_weights_and_augmentation(tmp_path: Path) -> None:
    main = images(tmp_path / "main" / "2_main thing", 2)
    subject = images(tmp_path / "subject", 2, caption="own caption")
    plain = images(tmp_path / "plain", 1)
    (plain / "img0.cap").write_text("from a .cap file")
    cfg = settings(tmp_path / "main", concepts=[
        concept(subject, loss_weight=3.0, flip=True, caption_prefix="sks,", caption_suffix=", best"),
        concept(plain, caption="fallback", caption_extension=".cap", repeats=4.0),
    ])
    index = scan_dataset(cfg)
    by_name = {item.path.relative_to(tmp_path).as_posix(): item for item in index.items}
    assert {name: (item.caption, item.repeats, item.loss_weight) for name, item in by_name.items()} == {
        "main/2_main thing/img0.png": ("main thing", 2, 1.0),
        "main/2_main thing/img1.png": ("main thing", 2, 1.0),
        "subject/img0.png": ("sks, own caption 0, best", 1.0, 3.0),
        "subject/img1.png": ("sks, own caption 1, best", 1.0, 3.0),
        "plain/img0.png": ("from a .cap file", 4.0, 1.0),
    }
    data = TrainData(index, cfg, batch_size=1, seed=3)
    batches = [data.batch_at(i) for i in range(data.batches_per_epoch * 4)]
    flipped = {path.parent.name for batch in batches for path, flip in zip(batch.paths, batch.flipped) if flip}
    assert flipped == {"subject"}  # only the concept with flip = true, though dataset.flip is false
    weights = {(path.parent.name, weight) for batch in batches for path, weight in zip(batch.paths, batch.loss_weights)}
    assert weights == {("2_main thing", 1.0), ("subject", 3.0), ("plain", 1.0)}


def test_a_kohya_dataset_chosen_as_a_concept_keeps_its_folder_captions(tmp_path: Path) -> None:
    """A concept's own caption wins; without one, an uncaptioned image in a Kohya `N_name` folder takes `name`
    (the table's repeats still count, not N); a caption file still comes first."""
    kohya = images(tmp_path / "kohya" / "10_sks dog", 2)
    (kohya / "img1.txt").write_text("a written caption")
    loose = images(tmp_path / "kohya", 1, color=(10, 20, 30))
    named = images(tmp_path / "named" / "5_sks cat", 1)
    cfg = settings(tmp_path / "unused", concepts=[concept(tmp_path / "kohya", repeats=2.0),
                                                  concept(tmp_path / "named", caption="my own words")])
    cfg.dir = ""
    index = scan_dataset(cfg)
    by_name = {item.path.relative_to(tmp_path).as_posix(): (item.caption, item.repeats) for item in index.items}
    assert by_name == {
        "kohya/10_sks dog/img0.png": ("sks dog", 2.0),
        "kohya/10_sks dog/img1.png": ("a written caption", 2.0),
        "kohya/img0.png": ("", 2.0),
        "named/5_sks cat/img0.png": ("my own words", 1.0),
    }
    assert loose.exists() and named.exists()


# 3 images x repeats, the fraction rounded half up: 4.5 -> 5, 1.5 -> 2, 6.75 -> 7.
@pytest.mark.parametrize("repeats, batch_size, extra_samples", [(1.5, 1, 5), (0.5, 2, 2), (2.25, 3, 7)])
def test_fractional_repeats_keep_the_step_count_exact(tmp_path: Path, repeats: float, batch_size: int,
                                                      extra_samples: int) -> None:
    cfg = settings(images(tmp_path / "main", 3), concepts=[concept(images(tmp_path / "extra", 3, (96, 64)),
                                                                   repeats=repeats)])
    index = scan_dataset(cfg)
    expected = 3 + extra_samples
    assert index.num_repeated == expected
    data = TrainData(index, cfg, batch_size=batch_size, seed=11)
    job = parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": "x"},
                     "training": {"epochs": 3, "batch_size": batch_size}})
    plan = build_plan(job, data, world_size=1)
    per_epoch = [Counter(path for batch in data.epoch_batches(epoch) for path in batch.paths) for epoch in range(3)]
    assert sum(len(list(data.epoch_batches(epoch))) for epoch in range(3)) == plan.total_steps
    assert per_epoch[0] == per_epoch[1] == per_epoch[2]  # the same images get the extra sample every epoch
    assert sum(per_epoch[0].values()) == expected


# --- regularisation images for LoRA --------------------------------------------------------------------------

def test_reg_dir_images_pair_with_subject_images_and_weigh_by_prior_loss_weight(tmp_path: Path) -> None:
    subject = images(tmp_path / "subject" / "3_sks dog", 2)
    images(tmp_path / "reg" / "1_dog", 5, color=(10, 10, 200))
    cfg = settings(tmp_path / "subject", reg_dir=str(tmp_path / "reg"))
    index = scan_dataset(cfg)
    assert [(item.caption, item.is_class) for item in index.items] == [("sks dog", False)] * 2 + [("dog", True)] * 5
    data = TrainData(index, cfg, batch_size=2, seed=0)
    kinds = Counter(c for batch in data.epoch_batches(0) for c in batch.is_class)
    assert kinds == {False: 6, True: 6}  # 2 images x 3 repeats, paired one to one with reg images
    job = parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": str(subject)},
                     "dreambooth": {"prior_loss_weight": 0.25}})
    batch = next(data.epoch_batches(0))
    weights = TrainingMethod(job).example_weights(batch, "cpu")
    assert weights.tolist() == [0.25 if is_class else 1.0 for is_class in batch.is_class]


def test_more_reg_images_than_subject_samples_use_a_fixed_subset_as_kohya_does(tmp_path: Path) -> None:
    images(tmp_path / "subject", 2)
    images(tmp_path / "reg", 5, color=(10, 10, 200))
    cfg = settings(tmp_path / "subject", reg_dir=str(tmp_path / "reg"))
    data = TrainData(scan_dataset(cfg), cfg, batch_size=2, seed=0)
    epochs = [Counter(p for b in data.epoch_batches(e) for p, c in zip(b.paths, b.is_class) if c) for e in range(3)]
    assert sum(epochs[0].values()) == 2 and epochs[0] == epochs[1] == epochs[2]  # the epoch is the subject's
    with pytest.raises(DatasetError, match="only regularisation images"):
        scan_dataset(settings("", concepts=[concept(tmp_path / "reg", is_regularization=True)]))
    # A concept may be the reg images of a dataset.dir folder: the roles can be swapped.
    swapped = settings(tmp_path / "reg", concepts=[concept(tmp_path / "subject", is_regularization=True)])
    assert scan_dataset(swapped).num_class_images == 2


def test_dreambooth_refuses_reg_dir(tmp_path: Path) -> None:
    from trainer.dreambooth.dataset import instance_index

    cfg = parse_job({"method": "dreambooth", "model": {"base": "builtin:tiny-sd15"},
                     "dataset": {"dir": str(images(tmp_path / "s", 1)), "reg_dir": str(tmp_path / "r")},
                     "dreambooth": {"instance_prompt": "sks", "class_prompt": "dog"}})
    with pytest.raises(DatasetError, match="dreambooth.class_dir"):
        instance_index(cfg)


# --- masked training -----------------------------------------------------------------------------------------

def half_mask_dataset(root: Path) -> Path:
    """One 64x64 image whose mask file (masks/img0.png) is white on the left half."""
    images(root, 1)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    (root / "masks").mkdir()
    mask.save(root / "masks" / "img0.png")
    return root


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_changing_the_unmasked_half_changes_the_loss_by_exactly_its_weight(tmp_path: Path, weight: float) -> None:
    cfg = settings(half_mask_dataset(tmp_path / "ds"), masked_training=True, unmasked_weight=weight)
    index = scan_dataset(cfg)
    assert [item.path.name for item in index.items] == ["img0.png"]  # the masks/ folder is not trained on
    pixel_weights = TrainData(index, cfg, batch_size=1, seed=0).batch_at(0).pixel_weights
    assert pixel_weights.shape == (1, 1, 8, 8)
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    changed = target.clone()
    changed[..., 4:] += torch.randn(1, 4, 8, 4, generator=torch.Generator().manual_seed(1))  # the right half
    prediction = torch.zeros_like(target)
    masked = example_losses(prediction, changed, pixel_weights=pixel_weights) - example_losses(prediction, target, pixel_weights=pixel_weights)
    unmasked = example_losses(prediction, changed) - example_losses(prediction, target)
    if weight == 0.0:
        assert masked.item() == 0.0
    assert torch.allclose(masked, weight * unmasked, rtol=1e-5, atol=1e-7) and unmasked.abs().item() > 0.1


def test_alpha_mask_follows_crop_flip_and_bucket_resize(tmp_path: Path) -> None:
    """Red where the alpha mask is opaque, transparent (white once composited) elsewhere: the batch's pixels
    show where the mask went, so the weights must match them after any crop, flip and resize."""
    root = tmp_path / "ds"
    root.mkdir()
    rng = random.Random(0)
    for n in range(3):
        image = Image.new("RGBA", (120, 72), (0, 0, 0, 0))
        for _ in range(4):
            x, y = rng.randrange(0, 100), rng.randrange(0, 56)
            image.paste((255, 0, 0, 255), (x, y, x + 24, y + 16))
        image.save(root / f"shape{n}.png")
    cfg = settings(root, masked_training=True, unmasked_weight=0.0, random_crop=True, flip=True)
    data = TrainData(scan_dataset(cfg), cfg, batch_size=1, seed=5)
    flips = set()
    for index in range(12):
        batch = data.batch_at(index)
        flips.add(batch.flipped[0])
        red = (1.0 - (batch.pixels[0, 1] + 1) / 2)  # green is 0 on red pixels, 1 on white ones
        height, width = red.shape
        expected = red.reshape(height // 8, 8, width // 8, 8).mean(dim=(1, 3))
        assert batch.pixels.shape[2:] != (72, 120)  # resized into a bucket
        assert torch.allclose(batch.pixel_weights[0, 0], expected, atol=0.03)
    assert flips == {False, True}


def test_masked_training_runs_end_to_end_and_weight_one_equals_no_mask(tmp_path: Path, tiny_sd15_dir) -> None:
    from trainer.loop import default_paths, train

    data = make_dataset(tmp_path / "data", n=2)
    for number in range(2):  # the left half of each image is masked
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (0, 0, 32, 64))
        (data / "masks").mkdir(exist_ok=True)
        mask.save(data / "masks" / f"img_{number}.png")

    def trained(name: str, dataset: dict) -> dict:
        job = write_job(tmp_path / f"{name}.toml", tiny_sd15_dir, data, tmp_path / name,
                        sections={"dataset": dataset, "training": {"max_steps": 2}})
        cfg = load_job(job)
        result = train(cfg, default_paths(cfg))
        assert result.status == "done" and result.step == 2
        return {k: v.clone() for k, v in result.model.unet.state_dict().items() if "lora" in k}

    unmasked_scan = scan_dataset(settings(data))
    assert len(unmasked_scan.items) == 2 and any("set dataset.masked_training" in w for w in unmasked_scan.warnings)
    plain = trained("plain", {})
    all_ones = trained("ones", {"masked_training": True, "unmasked_weight": 1.0})
    masked = trained("masked", {"masked_training": True, "unmasked_weight": 0.0})
    assert all(torch.equal(plain[k], all_ones[k]) for k in plain)
    assert any(not torch.equal(plain[k], masked[k]) for k in plain)


# --- caption options -------------------------------------------------------------------------------------------

def test_wildcards_pick_one_option_per_sample() -> None:
    seen = Counter(process_caption("a {red|green|blue} ball, {big|small}", False, 0, 0.0, random.Random(seed),
                                   wildcards=True) for seed in range(300))
    assert set(seen) == {f"a {c} ball, {s}" for c in ("red", "green", "blue") for s in ("big", "small")}
    assert process_caption("a {red|green} ball", False, 0, 0.0, random.Random(0)) == "a {red|green} ball"
    assert process_caption("a {single} word", False, 0, 0.0, random.Random(0), wildcards=True) == "a {single} word"


def test_keep_tokens_separator_keeps_the_head_and_shuffles_the_rest() -> None:
    caption = "sks, dog ||| grass, sky, tree, ball"
    results = {process_caption(caption, True, 0, 0.0, random.Random(seed), keep_tokens_separator="|||")
               for seed in range(50)}
    assert all(r.startswith("sks, dog, ") and "|||" not in r for r in results) and len(results) > 5
    assert all(sorted(r.split(", ")[2:]) == ["ball", "grass", "sky", "tree"] for r in results)
    unshuffled = process_caption(caption, False, 0, 0.0, random.Random(0), keep_tokens_separator="|||")
    assert unshuffled == "sks, dog, grass, sky, tree, ball"


def test_tag_dropout_drops_only_movable_tags_at_its_rate() -> None:
    caption = "sks, " + ", ".join(f"tag{i}" for i in range(20))
    kept = [process_caption(caption, False, 1, 0.0, random.Random(seed), tag_dropout_rate=0.25).split(", ")
            for seed in range(200)]
    assert all(tags[0] == "sks" for tags in kept)
    share = sum(len(tags) - 1 for tags in kept) / (200 * 20)
    assert 0.7 < share < 0.8
    assert process_caption(caption, False, 1, 0.0, random.Random(0), tag_dropout_rate=1.0) == "sks"


def test_caption_options_replay_from_seed_and_batch_index(tmp_path: Path) -> None:
    root = images(tmp_path / "ds", 2)
    for i in range(2):
        (root / f"img{i}.txt").write_text("sks ||| {red|green|blue} ball, grass, sky, tree")
    cfg = settings(root, wildcards=True, keep_tokens_separator="|||", caption_tag_dropout_rate=0.3,
                   shuffle_caption=True)
    first = TrainData(scan_dataset(cfg), cfg, batch_size=1, seed=4)
    stream = [first.batch_at(i).captions for i in range(30)]
    resumed = TrainData(scan_dataset(cfg), cfg, batch_size=1, seed=4)  # a fresh process after a resume
    assert [resumed.batch_at(i).captions for i in range(29, 9, -1)] == stream[10:][::-1]
    assert len({caption for captions in stream for caption in captions}) > 5
    assert all(caption[0].startswith("sks") and "{" not in caption[0] for caption in stream)


def test_a_job_with_concepts_and_reg_images_runs_the_steps_check_promised(tmp_path: Path, tiny_sd15_dir) -> None:
    from trainer.loop import default_paths, train
    from trainer.preflight import preflight_report

    data = make_dataset(tmp_path / "data", n=2)
    extra = images(tmp_path / "extra", 3, size=(96, 64))
    reg = images(tmp_path / "reg" / "1_shape", 2, color=(20, 20, 20))
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out", sections={
        "dataset": {"reg_dir": str(reg.parent), "concepts": [{"dir": str(extra), "repeats": 1.5, "loss_weight": 0.5}]},
        "training": {"max_steps": 0, "epochs": 2}})
    cfg = load_job(job)
    report = preflight_report(load_job(job))
    promised = int(report.split("total steps: ")[1].split()[0])
    result = train(cfg, default_paths(cfg))
    assert result.status == "done" and result.step == result.total_steps == promised
    # 2 images + 3 x 1.5 (4.5, rounded half up: 5) samples, paired with as many reg samples: 14 samples in the
    # one 64x64 bucket, 7 batches of 2 per epoch, 2 epochs.
    assert promised == 2 * 7
    assert (tmp_path / "out" / "test-lora.safetensors").is_file()


def test_captions_vary_says_when_a_text_encoder_cache_would_grow(tmp_path: Path) -> None:
    root = images(tmp_path / "ds", 1, caption="a {red|blue} ball")

    def varies(**changes) -> bool:
        cfg = settings(root, **changes)
        return TrainData(scan_dataset(cfg), cfg, batch_size=1, seed=0).captions_vary

    assert not varies() and not varies(keep_tokens_separator="|||")
    assert varies(wildcards=True) and varies(shuffle_caption=True) and varies(caption_tag_dropout_rate=0.1)
    assert varies(caption_dropout_rate=0.1)
    assert varies(concepts=[concept(images(tmp_path / "c", 1), shuffle_caption=True)])
