"""Captioning: basic, BLIP and WD14 end to end on generated images with tiny models built here; the safety rules
(existing captions kept, atomic writes, failures named); find-and-replace at scale; the tag report; jobs."""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.caption import CaptionError, CaptionOptions, caption_job_toml, run_caption_job
from trainer.caption.cli import add_caption_parser, cmd_caption
from trainer.caption.methods import make_captioner
from trainer.caption.report import dataset_tag_frequency, format_tag_frequency
from trainer.caption.runner import caption_dataset
from trainer.caption.text import caption_from_name, clean_tags, combine, edit
from trainer.caption.wd14 import preprocess, resolve_model_files
from trainer.jobs import JobManager, read_events, read_status

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


# --- material -------------------------------------------------------------------------------------------------
def save_image(path: Path, color=RED, size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def save_corrupt_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return path


def image_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def run(options: CaptionOptions, **kwargs):
    options.validate()
    return caption_dataset(options, make_captioner(options), **kwargs)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file()]


@pytest.fixture(scope="module")
def thousand_captions(tmp_path_factory) -> Path:
    """1,000 small images with varied captions; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("thousand") / "data"
    root.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buffer, format="PNG")
    words = ["dog", "a dog", "hotdog", "cat", "dogdog", "Dog", "sks"]
    for i in range(1000):
        (root / f"img{i:04d}.png").write_bytes(buffer.getvalue())
        caption = ", ".join(words[(i + k) % len(words)] for k in range(i % 5 + 1))
        (root / f"img{i:04d}.txt").write_text(caption + ("\n" if i % 2 else ""), encoding="utf-8")
    return root


# --- text operations ------------------------------------------------------------------------------------------
def test_caption_from_names():
    assert caption_from_name(Path("ds/red_car_01.png"), "file") == "red car"
    assert caption_from_name(Path("ds/0001.png"), "file") == "0001"
    assert caption_from_name(Path("ds/10_sks dog/x.png"), "folder") == "sks dog"
    assert caption_from_name(Path("ds/plain/x.png"), "folder") == "plain"


def test_combine_modes():
    assert combine("old, a", "a, b", "skip-existing") == "old, a"
    assert combine("old, a", "a, b", "overwrite") == "a, b"
    assert combine("old, a", "a, b", "append") == "old, a, b"
    assert combine("old, a", "a", "append") == "old, a"
    assert combine(None, "new", "skip-existing") == "new"
    assert combine("old", None, "overwrite") == "old"


def test_edits_are_idempotent_and_clean_up_tags():
    options = CaptionOptions(dir=".", prefix="sks", suffix="photo", find="doggo", replace="dog", clean=True,
                             replace_underscores=True)
    once = edit("doggo,  long_hair , ^_^, , long hair, sks", options)
    assert once == "sks, dog, long hair, ^_^, photo"
    assert edit(once, options) == once
    assert clean_tags("a,a , b,,c", dedupe=False) == "a, a, b, c"


# --- basic ----------------------------------------------------------------------------------------------------
def test_basic_from_file_name_keeps_existing_captions_and_reports_a_corrupt_image(tmp_path):
    folder = tmp_path / "10_sks dog"
    save_image(folder / "red_car_01.png")
    save_image(folder / "blue_bike.png", BLUE)
    (folder / "blue_bike.txt").write_text("my own words\n", encoding="utf-8")
    save_corrupt_image(folder / "broken.png")
    before = image_hashes(tmp_path)

    report = run(CaptionOptions(dir=str(tmp_path), method="basic", from_name="file"))

    assert (folder / "red_car_01.txt").read_text(encoding="utf-8") == "red car\n"
    assert (folder / "blue_bike.txt").read_text(encoding="utf-8") == "my own words\n"
    assert not (folder / "broken.txt").exists()
    assert report.counts() == {"captioned": 1, "skipped": 1, "failed": 1}
    assert [path.name for path, _ in report.failed] == ["broken.png"]
    assert "broken.png" in report.summary()
    assert image_hashes(tmp_path) == before  # images are only read
    assert temp_files(tmp_path) == []


def test_basic_overwrite_and_append(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("old, sks", encoding="utf-8")
    run(CaptionOptions(dir=str(tmp_path), method="basic", text="sks, new", mode="append"))
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "old, sks, new\n"
    run(CaptionOptions(dir=str(tmp_path), method="basic", text="fresh", mode="overwrite"))
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "fresh\n"


def test_find_and_replace_over_a_thousand_files_is_exact(tmp_path, thousand_captions):
    root = shutil.copytree(thousand_captions, tmp_path / "data")
    old = {p.name: p.read_text(encoding="utf-8") for p in root.glob("*.txt")}

    report = run(CaptionOptions(dir=str(root), method="basic", find="dog", replace="wolf"))

    for name, text in old.items():
        expected = text.strip().replace("dog", "wolf")
        assert (root / name).read_text(encoding="utf-8") == (expected + "\n" if expected != text.strip() else text)
    changed = {p.with_suffix(".txt").name for p in report.captioned}
    assert changed == {name for name, text in old.items() if "dog" in text}
    assert len(report.captioned) + len(report.skipped) == 1000 and not report.failed


def test_a_write_failure_half_way_leaves_each_file_old_or_new_and_names_what_was_done(
        tmp_path, thousand_captions, monkeypatch):
    root = shutil.copytree(thousand_captions, tmp_path / "data")
    old = {p.name: p.read_text(encoding="utf-8") for p in root.glob("*.txt")}
    real_replace = os.replace
    renames = []

    def replace_then_fail(src, dst):  # the disk fills up after 300 captions
        if len(renames) >= 300:
            raise OSError(28, "No space left on device")
        renames.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_fail)
    report = run(CaptionOptions(dir=str(root), method="basic", prefix="sks"))
    monkeypatch.undo()

    done = {p.with_suffix(".txt").name for p in report.captioned}
    assert len(done) == 300 and {Path(p).name for p in renames} == done
    for name, text in old.items():
        now = (root / name).read_text(encoding="utf-8")
        assert now == ("sks, " + text.strip() + "\n" if name in done else text)
    assert all(old[p.with_suffix(".txt").name].startswith("sks") for p in report.skipped)  # nothing to add
    assert len(report.failed) == 700 - len(report.skipped) > 0
    assert all("disk full while saving" in reason for _, reason in report.failed)  # trainer.atomic's words
    assert temp_files(root) == []


def test_a_stop_ends_the_run_between_files_and_keeps_what_is_done(tmp_path):
    for i in range(6):
        save_image(tmp_path / f"img_{i}.png")
    asked = []

    def stop_after_three() -> bool:
        asked.append(True)
        return len(asked) > 3

    report = run(CaptionOptions(dir=str(tmp_path), method="basic", text="x"), should_stop=stop_after_three)
    assert report.stopped and len(report.captioned) == 3
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["img_0.txt", "img_1.txt", "img_2.txt"]
    assert "not reached" in report.summary()


def test_bad_options_are_named():
    with pytest.raises(CaptionError, match="--replace"):
        CaptionOptions(dir=".", method="basic", replace="x").validate()
    with pytest.raises(CaptionError, match="--general-threshold"):
        CaptionOptions(dir=".", method="wd14", general_threshold=2.0).validate()
    with pytest.raises(CaptionError, match="needs something to do"):
        CaptionOptions(dir=".", method="basic").validate()
    with pytest.raises(CaptionError, match="does not exist"):
        CaptionOptions(dir="/no/such/folder", method="basic").validate()


# --- tag report -----------------------------------------------------------------------------------------------
def test_tag_frequency_report_counts_images_per_tag(tmp_path):
    folder = tmp_path / "3_sks dog"
    for name, caption in [("a", "sks dog, red, red"), ("b", "sks dog, blue"), ("c", None)]:
        save_image(folder / f"{name}.png")
        if caption:
            (folder / f"{name}.txt").write_text(caption, encoding="utf-8")
    frequency = dataset_tag_frequency(str(tmp_path))
    assert frequency == {"3_sks dog": {"blue": 1, "red": 1, "sks dog": 3}}  # c takes the folder's caption
    assert format_tag_frequency(frequency).splitlines()[1].split() == ["3", "sks", "dog"]


# --- WD14 -----------------------------------------------------------------------------------------------------
# The tiny tagger scores each tag from the mean of one input channel, so a test image's colour decides its tags:
# channel order (BGR) and scale (0..255) are checked by what comes out.
WD14_TAGS = [  # (name, category, input channel index in BGR order or None, scale)
    ("general", 9, 1, 1.0), ("sensitive", 9, 2, 0.6), ("questionable", 9, None, 0.1), ("explicit", 9, None, 0.0),
    ("red_thing", 0, 2, 1.0), ("blue_thing", 0, 0, 1.0), ("green_thing", 0, 1, 1.0),
    ("warm_tone", 0, 2, 0.5), ("char_red", 4, 2, 0.9), ("char_faint", 4, 2, 0.8),
]


def build_tiny_tagger(folder: Path) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)

    class TinyTagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scores = torch.nn.Linear(3, len(WD14_TAGS))
            with torch.no_grad():
                self.scores.weight.zero_()
                self.scores.bias.zero_()
                for row, (_, _, channel, scale) in enumerate(WD14_TAGS):
                    if channel is None:
                        self.scores.bias[row] = scale
                    else:
                        self.scores.weight[row, channel] = scale

        def forward(self, pixels):  # NHWC, float 0..255
            return torch.clamp(self.scores(pixels.mean(dim=(1, 2)) / 255.0), 0.0, 1.0)

    # The default (dynamo) exporter needs onnxscript, which is not installed; the TorchScript one works offline.
    torch.onnx.export(TinyTagger().eval(), (torch.zeros(1, 24, 24, 3),), str(folder / "model.onnx"),
                      input_names=["input_1:0"], output_names=["predictions_sigmoid"],
                      dynamic_axes={"input_1:0": {0: "batch"}}, dynamo=False)
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{category},{100 - i}"
                                            for i, (name, category, _, _) in enumerate(WD14_TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("wd14") / "tagger")


def test_wd14_preprocessing_pads_on_white_and_swaps_to_bgr():
    image = Image.new("RGB", (40, 20), RED)
    pixels = preprocess(image, 24)
    assert pixels.shape == (24, 24, 3) and pixels.dtype == np.float32
    assert pixels[12, 12].tolist() == [0.0, 0.0, 255.0]  # red in BGR order, not rescaled
    assert pixels[0, 12].tolist() == [255.0, 255.0, 255.0]  # the padding above is white


def test_wd14_tags_files_by_confidence_with_thresholds_exclusions_and_rating(tmp_path, tiny_tagger):
    save_image(tmp_path / "red.png", RED, (30, 30))
    save_image(tmp_path / "blue.png", BLUE, (30, 30))
    (tmp_path / "blue.txt").write_text("hand written", encoding="utf-8")
    save_corrupt_image(tmp_path / "broken.png")
    before = image_hashes(tmp_path)

    options = CaptionOptions(dir=str(tmp_path), method="wd14", model=str(tiny_tagger), batch_size=2,
                             general_threshold=0.35, character_threshold=0.85, replace_underscores=True)
    report = run(options)
    # red scores: red_thing 1.0, char_red 0.9, char_faint 0.8 (< 0.85), warm_tone 0.5; blue_thing 0.0
    assert (tmp_path / "red.txt").read_text(encoding="utf-8") == "red thing, char red, warm tone\n"
    assert (tmp_path / "blue.txt").read_text(encoding="utf-8") == "hand written"
    assert [path.name for path, _ in report.failed] == ["broken.png"]
    assert image_hashes(tmp_path) == before

    options.mode, options.rating, options.exclude_tags = "overwrite", True, "warm tone, CHAR_RED"
    run(options)
    assert (tmp_path / "red.txt").read_text(encoding="utf-8") == "sensitive, red thing\n"
    assert (tmp_path / "blue.txt").read_text(encoding="utf-8") == "questionable, blue thing\n"  # ratings: 0, 0, 0.1, 0


def test_wd14_append_adds_only_new_tags(tmp_path, tiny_tagger):
    save_image(tmp_path / "green.png", GREEN)
    (tmp_path / "green.txt").write_text("green_thing, mine", encoding="utf-8")
    run(CaptionOptions(dir=str(tmp_path), method="wd14", model=str(tiny_tagger), mode="append"))
    assert (tmp_path / "green.txt").read_text(encoding="utf-8") == "green_thing, mine"  # nothing new: untouched
    (tmp_path / "green.txt").write_text("mine", encoding="utf-8")
    run(CaptionOptions(dir=str(tmp_path), method="wd14", model=str(tiny_tagger), mode="append"))
    assert (tmp_path / "green.txt").read_text(encoding="utf-8") == "mine, green_thing\n"


def test_wd14_model_that_cannot_be_found_is_named(tmp_path):
    with pytest.raises(CaptionError, match="selected_tags.csv"):
        resolve_model_files(str(build_tiny_tagger(tmp_path / "t").parent / "missing-folder/x/y"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes(b"")
    with pytest.raises(CaptionError, match="lacks selected_tags.csv"):
        resolve_model_files(str(tmp_path / "half"))
    with pytest.raises(CaptionError, match="--model FOLDER"):  # tests run offline (conftest)
        resolve_model_files("nobody/no-such-tagger")


# --- BLIP -----------------------------------------------------------------------------------------------------
BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "red", "blue", "green", "shape",
              "on", "the", "table", "dog", "cat", "small", "big", "round", "square", "with", "and", "in"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A tiny random BLIP captioner saved like a hub model: weights, configs, BERT vocab, PIL image processor."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    folder = tmp_path_factory.mktemp("blip") / "tiny-blip"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(BLIP_WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(folder)  # BertTokenizer(vocab_file=...) ignores the file here
    assert len(tokenizer) == len(BLIP_WORDS)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    config = BlipConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(BLIP_WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.cls_token_id,
                         sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        projection_dim=16)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_blip_captions_in_batches_like_one_by_one_and_keeps_existing(tmp_path, tiny_blip):
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    colors = {"red": RED, "green": GREEN, "blue": BLUE}
    for name, color in colors.items():
        save_image(tmp_path / f"{name}.png", color, (48, 40))
    (tmp_path / "blue.txt").write_text("my blue caption", encoding="utf-8")
    save_corrupt_image(tmp_path / "zz_broken.png")
    before = image_hashes(tmp_path)

    report = run(CaptionOptions(dir=str(tmp_path), method="blip", model=str(tiny_blip), batch_size=2, beams=2,
                                min_length=4, max_length=9))

    model = BlipForConditionalGeneration.from_pretrained(tiny_blip).eval()
    processor = BlipProcessor.from_pretrained(tiny_blip)
    for name in ("red", "green"):
        pixels = processor(images=Image.open(tmp_path / f"{name}.png").convert("RGB"),
                           return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            ids = model.generate(pixel_values=pixels, num_beams=2, min_length=4, max_length=9)
        expected = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
        assert expected  # the tiny model says something, so a file is due
        assert (tmp_path / f"{name}.txt").read_text(encoding="utf-8") == expected + "\n"
    assert (tmp_path / "blue.txt").read_text(encoding="utf-8") == "my blue caption"
    assert report.counts() == {"captioned": 2, "skipped": 1, "failed": 1}
    assert report.failed[0][0].name == "zz_broken.png"
    assert image_hashes(tmp_path) == before


def test_blip_model_that_cannot_be_loaded_is_named(tmp_path):
    with pytest.raises(CaptionError, match="could not load the BLIP model"):
        make_captioner(CaptionOptions(dir=str(tmp_path), method="blip", model=str(tmp_path / "nothing")))


# --- command line and jobs ------------------------------------------------------------------------------------
def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_caption_parser(parser.add_subparsers(dest="verb"))
    return parser.parse_args(["caption", *argv])


def test_command_line_runs_and_ends_with_counts(tmp_path, capsys):
    save_image(tmp_path / "one_cat.png")
    save_corrupt_image(tmp_path / "broken.png")
    code = cmd_caption(parse([str(tmp_path), "--method", "basic", "--from-name", "file", "--suffix", "photo"]))
    assert code == 1  # one image failed
    assert (tmp_path / "one_cat.txt").read_text(encoding="utf-8") == "one cat, photo\n"
    err = capsys.readouterr().err
    assert "captioned 1, skipped 0, failed 1" in err and "broken.png" in err
    assert cmd_caption(parse([str(tmp_path), "--report"])) == 0
    assert "one cat" in capsys.readouterr().out
    assert cmd_caption(parse([str(tmp_path), "--method", "basic", "--replace", "x"])) == 2


def test_job_file_options_are_read_and_flags_win(tmp_path):
    save_image(tmp_path / "data" / "a.png")
    job = tmp_path / "job.toml"
    job.write_text(caption_job_toml(CaptionOptions(dir="data", method="basic", text="from job")), encoding="utf-8")
    assert cmd_caption(parse(["--job", str(job), "--text", "from flag"])) == 0
    assert (tmp_path / "data" / "a.txt").read_text(encoding="utf-8") == "from flag\n"
    job.write_text('task = "caption"\n[caption]\ndir = "data"\nmethod = "basic"\nbeems = 3\n', encoding="utf-8")
    assert cmd_caption(parse(["--job", str(job)])) == 2


def test_job_manager_runs_a_caption_job_and_stops_it(tmp_path):
    worker = [sys.executable, "-m", "trainer.caption", "--job", "{job_toml}", "--job-dir", "{job_dir}"]
    manager = JobManager(tmp_path / "jobs", worker_cmd=worker)
    data = tmp_path / "data"
    for i in range(5):
        save_image(data / f"img_{i}.png")
    save_corrupt_image(data / "broken.png")
    toml_text = caption_job_toml(CaptionOptions(dir=str(data), method="basic", text="sks"))

    stopped = manager.create(toml_text, "caption stopped")
    assert manager.start_pending() == [stopped]
    manager.stop(stopped)  # arrives while the worker is still starting: nothing is captioned
    status = manager.wait(stopped, timeout_s=60)
    assert status["state"] == "stopped", manager.log_tail(stopped)
    assert status["captioned"] == 0 and not list(data.glob("*.txt"))

    finished = manager.create(toml_text, "caption all")
    manager.start_pending()
    status = manager.wait(finished, timeout_s=60)
    assert status["state"] == "done", manager.log_tail(finished)
    assert (status["captioned"], status["skipped"], status["failed"]) == (5, 0, 1)
    assert status["step"] == status["total_steps"] == 6
    assert status["failures"][0]["path"].endswith("broken.png")
    assert read_status(manager.job_dir(finished))["phase"] == "captioning"
    events, _ = read_events(manager.job_dir(finished))
    kinds = [event["kind"] for event in events]
    assert "progress" in kinds and kinds[-1] == "state"
    assert sorted(p.read_text(encoding="utf-8") for p in data.glob("*.txt")) == ["sks\n"] * 5


def test_pause_waits_for_resume_and_save_is_answered(tmp_path):
    from trainer.caption.job import CaptionWatcher
    from trainer.jobs import send

    watcher = CaptionWatcher(tmp_path, console=False)
    for command in ("pause", "save", "resume"):
        send(tmp_path, command)
    assert watcher.should_stop() is False
    events, _ = read_events(tmp_path)
    assert [(e["kind"], e.get("state")) for e in events] == [("state", "paused"), ("warning", None),
                                                             ("state", "running")]
    send(tmp_path, "pause")
    send(tmp_path, "stop")
    assert watcher.should_stop() is True
    assert read_status(tmp_path)["state"] == "stopping"


def test_run_caption_job_in_process_writes_status(tmp_path):
    save_image(tmp_path / "data" / "a.png")
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    code = run_caption_job(CaptionOptions(dir=str(tmp_path / "data"), method="basic", text="x"), job_dir,
                           console=False)
    status = read_status(job_dir)
    assert code == 0 and status["state"] == "done" and status["captioned"] == 1
    assert status["finished_at"] is not None
