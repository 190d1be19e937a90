"""Florence-2, JoyCaption (LLaVA) and Qwen-VL captioning end to end on tiny random models built in code: the real
processor -> generate -> decode path, the prompt built from the options, trigger placement, phrases dropped, the
files written, the offline message, and a caption job through the job manager. The captions are noise."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.caption import CaptionError, CaptionOptions, caption_job_toml
from trainer.caption.methods import make_captioner
from trainer.caption.prompts import TEMPLATES, florence_task, instruction
from trainer.caption.runner import caption_dataset
from trainer.caption.text import drop_phrases, edit, one_line, place_trigger
from trainer.caption.tiny_vlm import save_tiny_florence2, save_tiny_llava, save_tiny_qwen_vl
from trainer.jobs import JobManager, read_events

SIZES = {"red": ((255, 0, 0), (48, 40)), "green": ((0, 200, 0), (30, 50)), "blue": ((0, 0, 255), (64, 64))}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm")
    return {"florence2": save_tiny_florence2(root / "florence2"), "joycaption": save_tiny_llava(root / "llava"),
            "qwen-vl": save_tiny_qwen_vl(root / "qwen"), "qwen3-vl": save_tiny_qwen_vl(root / "qwen3", version="3")}


def make_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (color, size) in SIZES.items():
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", size, color).save(paths[name])
    return paths


def direct_captions(captioner, images: list[Image.Image]) -> list[str]:
    """What the model says for each image alone, through the processor and generate called here."""
    said = []
    for image in images:
        inputs = captioner.inputs([image])
        with torch.inference_mode():
            beams = {"num_beams": 3} if hasattr(captioner, "task") else {}  # Florence-2 searches 3 beams
            ids = captioner.model.generate(**inputs, max_new_tokens=captioner.max_new_tokens, do_sample=False,
                                           **beams)
        if not hasattr(captioner, "task"):  # chat models: the answer follows the prompt
            ids = ids[:, inputs["input_ids"].shape[1]:]
        said.append(one_line(captioner.processor.batch_decode(ids, skip_special_tokens=True)[0]))
    return said


# --- prompts and text ------------------------------------------------------------------------------------------
def test_instruction_is_built_from_length_style_and_template():
    assert florence_task("short") == "<CAPTION>" and florence_task("long") == "<MORE_DETAILED_CAPTION>"
    outfit = instruction("natural", "long", "outfit-not-face")
    assert outfit.startswith("Write a long descriptive caption") and outfit.endswith(TEMPLATES["outfit-not-face"])
    tags = instruction("tags", "short", "describe")
    assert "Booru-like tags" in tags and "at most 10 tags" in tags and "descriptive caption" not in tags
    both = instruction("both", "medium", "style-not-subject")
    assert "descriptive caption" in both and "Booru-like tags" in both and "art style" in both
    assert instruction("tags", "long", "outfit-not-face", prompt="  Just the hair colour. ") == "Just the hair colour."


def test_phrases_are_dropped_with_their_joiners_and_the_capital_comes_back():
    assert drop_phrases("The image shows a cat on a mat.", ["the image shows"]) == "A cat on a mat."
    assert drop_phrases("A photo of a dog. The image shows: grass.", ["a photo of", "The image shows"]) == \
        "A dog. Grass."
    assert drop_phrases("a photograph of x", ["a photo of"]) == "a photograph of x"  # whole words only
    assert one_line("two\nlines\x07  here\t") == "two lines here"


def test_trigger_goes_first_or_replaces_a_phrase_once():
    assert place_trigger("a woman in red", "ohwx", []) == "ohwx, a woman in red"
    assert place_trigger("A woman in red. The woman smiles.", "ohwx woman", ["the woman", "a woman"]) == \
        "ohwx woman in red. The woman smiles."  # the first mention, whichever phrase it is
    assert place_trigger("ohwx, a woman", "ohwx", ["a woman"]) == "ohwx, a woman"  # already there
    options = CaptionOptions(dir=".", trigger="sks", drop="The image shows")
    once = edit("The image shows a dog.", options)
    assert once == "sks, A dog." and edit(once, options) == once


# --- end to end on tiny models ---------------------------------------------------------------------------------
def test_florence2_captions_files_with_trigger_first_and_keeps_existing(tmp_path, models):
    images = make_images(tmp_path / "data")
    (tmp_path / "data" / "blue.txt").write_text("my own words", encoding="utf-8")
    options = CaptionOptions(dir=str(tmp_path / "data"), method="florence2", model=str(models["florence2"]),
                             length="long", batch_size=2, max_tokens=8, trigger="sks")
    options.validate()
    captioner = make_captioner(options)
    assert captioner.task == "<MORE_DETAILED_CAPTION>"
    prompt_ids = captioner.inputs([Image.open(images["red"]).convert("RGB")])["input_ids"][0]
    prompt = captioner.processor.tokenizer.decode(prompt_ids, skip_special_tokens=True)
    assert prompt == "Describe with a paragraph what is shown in the image."  # the task token's question

    report = caption_dataset(options, captioner)

    expected = direct_captions(captioner, [Image.open(images[name]).convert("RGB") for name in ("green", "red")])
    for name, said in zip(("green", "red"), expected):
        text = (tmp_path / "data" / f"{name}.txt").read_text(encoding="utf-8")
        assert text == f"sks, {said}\n" if said else text == "sks\n"
    assert (tmp_path / "data" / "blue.txt").read_text(encoding="utf-8") == "my own words"
    assert report.counts() == {"captioned": 2, "skipped": 1, "failed": 0}


def test_joycaption_prompt_from_template_and_batches_like_one_by_one(tmp_path, models):
    images = make_images(tmp_path / "data")
    options = CaptionOptions(dir=str(tmp_path / "data"), method="joycaption", model=str(models["joycaption"]),
                             template="outfit-not-face", length="short", batch_size=3, max_tokens=6,
                             mode="overwrite")
    captioner = make_captioner(options)
    assert captioner.prompt.startswith("<|system|>You are a helpful image captioner.<|end|><|user|><image>")
    assert TEMPLATES["outfit-not-face"] in captioner.prompt
    inputs = captioner.inputs([Image.open(images["red"]).convert("RGB")])
    seen = captioner.processor.tokenizer.decode(inputs["input_ids"][0])
    assert "Write a short descriptive caption" in seen and "but do not describe their face" in seen
    assert seen.count("<image>") > 1  # the processor expanded the placeholder to the image's tokens

    caption_dataset(options, captioner)

    names = sorted(SIZES)
    expected = direct_captions(captioner, [Image.open(images[n]).convert("RGB") for n in names])
    for name, said in zip(names, expected):
        assert (tmp_path / "data" / f"{name}.txt").read_text(encoding="utf-8") == f"{said}\n"


@pytest.mark.parametrize("family", ["qwen-vl", "qwen3-vl"])  # Qwen2.5-VL and Qwen3-VL
def test_qwen_vl_runs_without_torchvision_and_replaces_a_phrase_with_the_trigger(tmp_path, models, monkeypatch,
                                                                                 family):
    import trainer.caption.chat_vlm as chat_vlm

    images = make_images(tmp_path / "data")
    options = CaptionOptions(dir=str(tmp_path / "data"), method="qwen-vl", model=str(models[family]),
                             style="tags", batch_size=2, max_tokens=6)
    captioner = make_captioner(options)
    assert type(captioner.model).__name__ == ("Qwen3VL" if family == "qwen3-vl" else "Qwen2_5_VL") + \
        "ForConditionalGeneration"
    try:
        import torchvision  # noqa: F401
    except ImportError:  # the processor was built from its parts, with no video half
        assert type(captioner.processor).__name__ == "ImagesOnly"
    assert "<|vision_start|><|image_pad|><|vision_end|>Write a list of Booru-like tags" in captioner.prompt
    sizes = [Image.open(images[n]).convert("RGB") for n in ("blue", "green")]
    rows = captioner.inputs(sizes)["attention_mask"]
    assert rows[0].sum() != rows[1].sum() and rows[:, 0].tolist().count(0) == 1  # padded on the left
    # Batched (padded) generation gives what each image gives alone.
    assert captioner.caption_batch([], sizes) == direct_captions(captioner, sizes)

    # Whatever noise comes out, its first word is replaced by the trigger when listed in trigger_replaces.
    noise = captioner.caption_batch([], [Image.open(images["red"]).convert("RGB")])[0]
    monkeypatch.setattr(chat_vlm.ChatCaptioner, "caption_batch",
                        lambda self, paths, imgs: ["A woman with a hat, red" for _ in imgs])
    trigger_options = CaptionOptions(dir=str(tmp_path / "data"), method="qwen-vl", mode="overwrite",
                                     trigger="ohwx woman", trigger_replaces="the woman, a woman",
                                     drop="with a hat")
    caption_dataset(trigger_options, captioner)
    assert (tmp_path / "data" / "red.txt").read_text(encoding="utf-8") == "ohwx woman, red\n"
    assert isinstance(noise, str)


# --- failures named early ---------------------------------------------------------------------------------------
def test_missing_weights_offline_is_one_line_before_any_model_is_built(tmp_path, monkeypatch):
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the source was checked")

    monkeypatch.setattr(transformers.Florence2ForConditionalGeneration, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", never)
    for method in ("florence2", "joycaption", "qwen-vl"):
        with pytest.raises(CaptionError) as caught:
            make_captioner(CaptionOptions(dir=str(tmp_path), method=method))  # default hub ids; tests run offline
        message = str(caught.value)
        assert "\n" not in message and "not downloaded" in message and "--model FOLDER" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionError, match="has no config.json"):
        make_captioner(CaptionOptions(dir=str(tmp_path), method="florence2", model=str(tmp_path / "empty")))


def test_quantized_loading_needs_a_gpu_and_builds_the_bitsandbytes_config(tmp_path, models):
    from trainer.caption.vlm import quantization_config

    with pytest.raises(CaptionError, match="--quantize 4bit needs a CUDA GPU"):
        make_captioner(CaptionOptions(dir=str(tmp_path), method="qwen-vl", model=str(models["qwen-vl"]),
                                      quantize="4bit"))
    four = quantization_config("4bit", torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("8bit", torch.float16).load_in_8bit and quantization_config("none", None) is None


def test_options_that_do_not_fit_the_method_are_named(tmp_path):
    with pytest.raises(CaptionError, match="florence2 writes natural language"):
        CaptionOptions(dir=str(tmp_path), method="florence2", style="tags").validate()
    with pytest.raises(CaptionError, match="--length = 'huge'"):
        CaptionOptions(dir=str(tmp_path), method="joycaption", length="huge").validate()
    with pytest.raises(CaptionError, match="--trigger-replaces .* needs --trigger"):
        CaptionOptions(dir=str(tmp_path), method="qwen-vl", trigger_replaces="a man").validate()


# --- as a job --------------------------------------------------------------------------------------------------
def test_florence2_caption_job_runs_in_the_worker_with_progress(tmp_path, models):
    worker = [sys.executable, "-m", "trainer.caption", "--job", "{job_toml}", "--job-dir", "{job_dir}"]
    manager = JobManager(tmp_path / "jobs", worker_cmd=worker)
    make_images(tmp_path / "data")
    toml_text = caption_job_toml(CaptionOptions(dir=str(tmp_path / "data"), method="florence2",
                                                model=str(models["florence2"]), length="short", max_tokens=4,
                                                batch_size=2, trigger="sks"))
    job_id = manager.create(toml_text, "caption florence2")
    manager.start_pending()
    status = manager.wait(job_id, timeout_s=180)
    assert status["state"] == "done", manager.log_tail(job_id)
    assert (status["captioned"], status["failed"], status["step"]) == (3, 0, 3)
    events, _ = read_events(manager.job_dir(job_id))
    assert any(event["kind"] == "progress" for event in events)
    assert all(p.read_text(encoding="utf-8").startswith("sks") for p in (tmp_path / "data").glob("*.txt"))


def test_command_line_flags_reach_the_options_and_only_captions_one_image(tmp_path, capsys):
    import argparse

    from trainer.caption.cli import add_caption_parser, cmd_caption, options_from_args

    parser = argparse.ArgumentParser()
    add_caption_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["caption", str(tmp_path), "--method", "qwen-vl", "--length", "long", "--style", "both",
                              "--template", "style-not-subject", "--trigger", "ohwx", "--trigger-replaces",
                              "a man, the man", "--drop", "a photo of", "--max-tokens", "90", "--quantize", "4bit",
                              "--precision", "fp16", "--only", "a.png"])
    options = options_from_args(args)
    assert (options.length, options.style, options.template, options.trigger, options.trigger_replaces,
            options.drop, options.max_tokens, options.quantize, options.precision, options.only) == \
        ("long", "both", "style-not-subject", "ohwx", "a man, the man", "a photo of", 90, "4bit", "fp16", "a.png")
    images = make_images(tmp_path / "data")
    code = cmd_caption(parser.parse_args(["caption", str(tmp_path / "data"), "--method", "basic", "--from-name",
                                          "file", "--only", "green.png"]))
    assert code == 0 and sorted(p.name for p in (tmp_path / "data").glob("*.txt")) == ["green.txt"]
    assert cmd_caption(parser.parse_args(["caption", str(tmp_path / "data"), "--method", "basic", "--text", "x",
                                          "--only", "nope.png"])) == 2
    assert "--only 'nope.png' is not an image of" in capsys.readouterr().err
    assert images


def test_a_stop_between_batches_keeps_what_the_model_wrote(tmp_path, models):
    make_images(tmp_path / "data")
    options = CaptionOptions(dir=str(tmp_path / "data"), method="florence2", model=str(models["florence2"]),
                             batch_size=2, max_tokens=4, trigger="sks")
    asked = []

    def stop_after_first_batch() -> bool:
        asked.append(True)
        return len(asked) > 1

    report = caption_dataset(options, make_captioner(options), should_stop=stop_after_first_batch)
    assert report.stopped and len(report.captioned) == 2
    assert sorted(p.stem for p in (tmp_path / "data").glob("*.txt")) == ["blue", "green"]  # the first batch


def test_report_adds_words_and_phrases_for_natural_language_captions(tmp_path, capsys):
    import argparse

    from trainer.caption.cli import add_caption_parser, cmd_caption

    make_images(tmp_path / "data")
    captions = {"red": "The image shows a wooden toy on a table.", "green": "A wooden toy in the grass.",
                "blue": "1girl, red dress, smile"}
    for name, caption in captions.items():
        (tmp_path / "data" / f"{name}.txt").write_text(caption, encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_caption_parser(parser.add_subparsers(dest="verb"))
    assert cmd_caption(parser.parse_args(["caption", str(tmp_path / "data"), "--report"])) == 0
    out = capsys.readouterr().out
    phrases = out.split("words and phrases of natural-language captions:", 1)[1]
    assert "2  wooden toy" in phrases and "smile" not in phrases  # the tag list is the tag report's
    assert "1girl" in out.split("words and phrases", 1)[0]  # ... which still counts every caption's tags
