"""What an artist meets in the web UI (issue 13 and the UI items of issue 11): numbers read as typed and errors
named by the field's label, readable charts, the Jobs tab (row choice, Continue only where it means something,
rename, delete), uploads that keep names and never duplicate, and clear messages for odd files. Driven through
gradio_client against the served app where the API reaches; the pieces directly where it does not."""
from __future__ import annotations

import re

import json
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.test_ui import (JOB_VIEW_LOSS, JOB_VIEW_LR, JOB_VIEW_PROGRESS, JOB_VIEW_TABLE, ROOT, form_index, served,
                           write_images)

__all__ = ["served"]  # the served app fixture, shared with tests/test_ui.py


# --- numbers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("typed, whole, expected", [
    ("1e-4", False, 1e-4), ("0.0001", False, 1e-4), ("0,0001", False, 1e-4), (" 0.5 ", False, 0.5),
    ("2 000", True, 2000), ("1,000", True, 1000), ("8.0", True, 8), (8.0, True, 8), (3, False, 3.0)])
def test_numbers_are_read_as_a_person_types_them(typed, whole, expected):
    from ui.numbers import read_number

    value = read_number("Learning rate", typed, whole)
    assert value == pytest.approx(expected) and type(value) is (int if whole else float)


@pytest.mark.parametrize("typed, whole, says", [
    ("", False, "Learning rate: empty"), ("abc", False, "'abc' is not a number"),
    ("1,000", False, "ambiguous"), ("1.2.3", False, "not a number"), ("0,5", True, "must be a whole number"),
    ("nan", False, "not a number"), ("1e999", False, "not a finite number")])
def test_unreadable_numbers_name_the_field_and_never_become_a_default(typed, whole, says):
    from ui.numbers import NumberInputError, read_number

    with pytest.raises(NumberInputError, match="^Learning rate: ") as caught:
        read_number("Learning rate", typed, whole)
    assert says in str(caught.value)


def _demo_values(client) -> list:
    return list(client.predict("shipped:demo-lora", api_name="/lora_load_preset")[1:])


def test_typed_numbers_reach_the_job_and_bad_ones_are_named_by_label(served, capfd):
    client, root = served
    values = _demo_values(client)
    values[form_index("lora", "training.learning_rate")] = "0,0001"
    values[form_index("lora", "lora.alpha")] = "1e-1"
    _, toml_text, _ = client.predict(*values, api_name="/lora_toml")
    assert "learning_rate = 0.0001\n" in toml_text and "alpha = 0.1\n" in toml_text

    values[form_index("lora", "training.learning_rate")] = "abc"
    values[form_index("lora", "training.batch_size")] = ""
    values[form_index("lora", "lora.rank")] = "99999"
    values[form_index("lora", "output.name")] = "no/folders"
    message, report, _ = client.predict(*values, api_name="/lora_check")
    assert "Learning rate: 'abc' is not a number" in message
    assert "Batch size: empty; type a number" in message
    assert "Rank: 99999 is not allowed (must be between 1 and 1024)" in message
    assert report == ""
    # a problem found by the config (not by the number reader) is named by its label too
    values[form_index("lora", "training.learning_rate")] = "1e-4"
    values[form_index("lora", "training.batch_size")] = "2"
    values[form_index("lora", "lora.rank")] = "8"
    message, _, _ = client.predict(*values, api_name="/lora_check")
    assert "“Output name” = \"no/folders\" is not valid (must be a safe file name" in message
    assert "output.name" not in message  # the UI names fields by their labels; the CLI keeps the keys
    jobs_before = sorted((root / "jobs").iterdir())
    started = client.predict(*values, api_name="/lora_start")
    assert started[0].startswith("Not started") and "“Output name”" in started[0]
    assert sorted((root / "jobs").iterdir()) == jobs_before
    assert "Traceback" not in capfd.readouterr().err  # user errors are messages, not server tracebacks


def test_a_value_far_outside_the_usual_range_is_asked_about_before_start(served):
    client, root = served
    values = _demo_values(client)
    values[form_index("lora", "training.learning_rate")] = "1"  # allowed (> 0), but never what anyone means
    values[form_index("lora", "training.max_steps")] = "1"
    values[form_index("lora", "sample.every_n_steps")] = "0"
    jobs_before = set((root / "jobs").iterdir())
    first = client.predict(*values, api_name="/lora_start")
    assert first[0].startswith("Not started yet") and "Learning rate: 1 is far outside the usual range" in first[0]
    assert set((root / "jobs").iterdir()) == jobs_before
    second = client.predict(*values, api_name="/lora_start")  # asked once; the second press goes ahead
    assert "created" in second[0] and second[1]
    client.predict(second[1], api_name="/job_stop")


def test_sensible_ranges_name_real_fields_inside_their_allowed_range():
    from trainer.config import find_field
    from trainer.config.schema import SENSIBLE_RANGES

    for name, (low, high) in SENSIBLE_RANGES.items():
        f = find_field(name)
        assert f is not None, name
        assert low <= high and (f.min is None or low >= f.min) and (f.max is None or high <= f.max), name


def test_no_shipped_preset_is_flagged_as_unusual():
    from trainer.config import list_presets, load_job
    from ui.forms import unusual_values, values_from_job

    shipped = list_presets(None)
    assert len(shipped) >= 7
    for name, path in shipped.items():
        cfg = load_job(path, complete=False)
        assert unusual_values(cfg.method, values_from_job(cfg.method, cfg)) == {}, name


# --- charts -------------------------------------------------------------------------------------------------
def _fake_job(root: Path, state: str = "cancelled", steps: int = 0) -> tuple[str, Path]:
    """A job folder as a worker leaves it (no worker runs): `steps` progress events, then `state`."""
    from trainer.jobs import JobManager
    from trainer.jobs.status import append_event, patch_status

    manager = JobManager(root / "jobs")
    job_id = manager.create((ROOT / "presets" / "demo-lora.toml").read_text(), name="fake")
    job_dir = root / "jobs" / job_id
    patch_status(job_dir, state=state, step=steps, total_steps=100)  # before anything can start it
    for step in range(1, steps + 1):
        append_event(job_dir, "progress", step=step, loss=1.0 / step + (0.3 if step % 2 else 0.0),
                     lr=1e-4 * min(1.0, step / 10))
    return job_id, job_dir


def test_loss_chart_is_numeric_steps_on_x_with_a_smoothed_line(served):
    client, root = served
    job_id, job_dir = _fake_job(root, steps=40)
    result = client.predict(job_id, api_name="/job_view")
    # the step axis spans the whole run in whole steps (no 0.5 ticks while the first points arrive)
    assert result[JOB_VIEW_LOSS]["x_lim"] == result[JOB_VIEW_LR]["x_lim"] == [0, 100]
    loss, lr = result[JOB_VIEW_LOSS]["value"], result[JOB_VIEW_LR]["value"]
    assert loss["datatypes"] == {"step": "quantitative", "value": "quantitative", "series": "nominal"}
    assert lr["datatypes"] == {"step": "quantitative", "lr": "quantitative"}
    rows = [dict(zip(loss["columns"], row)) for row in loss["data"]]
    raw = [r for r in rows if r["series"] == "loss"]
    smooth = [r for r in rows if r["series"] == "smoothed"]
    assert [r["step"] for r in raw] == list(range(1, 41)) == [r["step"] for r in smooth]
    assert raw[1]["value"] == pytest.approx(0.5) and smooth[0]["value"] == pytest.approx(1.3)
    wobble = lambda series: sum(abs(a["value"] - b["value"]) for a, b in zip(series, series[1:]))  # noqa: E731
    assert wobble(smooth) < wobble(raw) / 3  # the smoothed line really is smoother
    assert [row[1] for row in lr["data"]][:3] == pytest.approx([1e-5, 2e-5, 3e-5])
    # a reload (a fresh view of the same job) draws the same chart
    assert client.predict(job_id, api_name="/job_view")[JOB_VIEW_LOSS]["value"] == loss


def test_an_empty_chart_still_has_numeric_axes(tmp_path):
    from ui.job_view import loss_frame, lr_frame

    (tmp_path / "events.jsonl").write_text('{"kind": "progress", "step": 1, "loss": "bad"}\n[1, 2]\n')
    assert [str(t) for t in loss_frame(tmp_path).dtypes] == ["float64", "float64", "string"]
    assert [str(t) for t in lr_frame(tmp_path).dtypes] == ["float64", "float64"]


def test_validation_losses_are_a_series_of_the_loss_chart(tmp_path):
    from ui.job_view import loss_frame

    events = [{"kind": "progress", "step": s, "loss": 1.0 / s, "lr": 1e-4} for s in range(1, 5)]
    events += [{"kind": "validation", "step": 2, "loss": 0.7}, {"kind": "validation", "step": 4, "loss": 0.6}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    frame = loss_frame(tmp_path)
    validation = frame[frame["series"] == "validation"]
    assert validation[["step", "value"]].values.tolist() == [[2.0, 0.7], [4.0, 0.6]]
    assert len(frame[frame["series"] == "loss"]) == 4


# --- the Jobs tab ---------------------------------------------------------------------------------------------
def test_continue_only_where_a_saved_state_is_and_never_on_a_done_job(served):
    client, root = served
    done_id, _ = _fake_job(root, state="done", steps=3)
    stopped_id, stopped_dir = _fake_job(root, state="cancelled", steps=3)
    bare_id, _ = _fake_job(root, state="cancelled", steps=1)
    (stopped_dir / "state" / "step00000030").mkdir(parents=True)
    (stopped_dir / "state" / "step00000030" / "state.pt").write_bytes(b"x")
    offered = 'data-can-continue="true"'  # the Continue button is enabled exactly then
    assert offered not in client.predict(done_id, api_name="/job_view")[JOB_VIEW_PROGRESS]
    assert offered not in client.predict(bare_id, api_name="/job_view")[JOB_VIEW_PROGRESS]
    stopped = client.predict(stopped_id, api_name="/job_view")[JOB_VIEW_PROGRESS]
    assert offered in stopped and "stopped — saved at step 30" in stopped
    refused = client.predict(done_id, api_name="/job_requeue")
    assert refused.startswith("❌") and "nothing to continue" in refused
    assert '"state": "done"' in (root / "jobs" / done_id / "status.json").read_text()
    table = {row[0]: row for row in client.predict(stopped_id, api_name="/job_view")[JOB_VIEW_TABLE]["data"]}
    assert table[stopped_id][2] == "stopped" and table[done_id][2] == "done"


def test_job_controls_follow_the_state_and_done_jobs_say_done():
    from ui.job_view import job_table
    from ui.jobs_tab import CONTROLS, allowed_controls

    def enabled(state, phase="training"):
        return {name for name, on in zip(CONTROLS, allowed_controls({"state": state, "phase": phase})) if on}

    assert CONTROLS == ("stop", "pause", "resume", "save_now", "sample_now")
    assert enabled("running") == {"stop", "pause", "save_now", "sample_now"}
    assert enabled("paused") == {"stop", "resume"}
    assert enabled("queued") == {"stop"}
    assert enabled("done") == enabled("stopped") == enabled("failed") == enabled("stopping") == set()
    assert enabled("running", phase="captioning") == {"stop", "pause"}  # nothing to save or sample
    rows = job_table([{"id": "a", "state": "done", "phase": "saving", "created_at": 0.0},
                      {"id": "b", "state": "failed", "phase": "loading"},
                      {"id": "c", "state": "running", "phase": "training"}])
    assert [row[3] for row in rows] == ["done", "failed while loading", "training"]


def test_rename_and_delete_jobs_but_never_a_running_one(served):
    from trainer.jobs.status import patch_status

    client, root = served
    job_id, job_dir = _fake_job(root, state="cancelled", steps=2)
    assert client.predict(job_id, "Chat été — try 2", api_name="/job_rename") == \
        f"Renamed `{job_id}` to “Chat été — try 2”."
    view = client.predict(job_id, api_name="/job_view")
    # the title carries the time the job was made: two jobs of one name stay apart
    assert re.fullmatch(r"Chat été — try 2 · [A-Z][a-z]{2} \d\d \d\d:\d\d",
                        {row[0]: row[1] for row in view[JOB_VIEW_TABLE]["data"]}[job_id])
    assert "Chat été — try 2" in view[JOB_VIEW_PROGRESS]
    assert client.predict(job_id, "", api_name="/job_rename").startswith("❌ a job title must be")

    patch_status(job_dir, state="running", heartbeat_at=time.time(), pid=None)  # alive as far as anyone knows
    refused = client.predict(job_id, api_name="/job_delete")
    assert refused[0].startswith("❌ Not deleted") and "stop it before deleting it" in refused[0]
    assert job_dir.is_dir()
    patch_status(job_dir, state="cancelled")
    deleted = client.predict(job_id, api_name="/job_delete")
    assert deleted[0] == f"Deleted job `{job_id}` and its files."
    assert not job_dir.exists() and not [p for p in (root / "jobs").iterdir() if p.name.startswith(".deleting")]
    assert job_id not in [row[0] for row in client.predict("", api_name="/job_view")[JOB_VIEW_TABLE]["data"]]


def test_outputs_list_the_final_file_first_and_samples_newest_first_with_step_and_prompt(tmp_path):
    from trainer.jobs.status import append_event
    from ui.job_view import output_files, sample_images

    job_dir = tmp_path / "job"
    (job_dir / "output").mkdir(parents=True)
    (job_dir / "samples").mkdir()
    for name in ("me-step00000010", "me", "me-step00000020"):
        (job_dir / "output" / f"{name}.safetensors").write_bytes(b"x")
    assert [Path(p).name for p in output_files({"job_dir": str(job_dir)})] == \
        ["me.safetensors", "me-step00000020.safetensors", "me-step00000010.safetensors"]
    for step in (40, 20):  # written out of order on purpose: the order comes from the steps
        path = job_dir / "samples" / f"s{step}.png"
        Image.new("RGB", (8, 8)).save(path)
        append_event(job_dir, "sample", path=str(path), step=step, prompt="kiln shape, red --s 8 --d 1")
    shown = sample_images({"job_dir": str(job_dir)})
    assert [caption for _, caption in shown] == ["step 40: kiln shape, red", "step 20: kiln shape, red"]


# --- uploads --------------------------------------------------------------------------------------------------
def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_uploads_keep_unicode_names_shorten_long_ones_and_add_nothing_twice(served, tmp_path):
    from gradio_client import handle_file

    client, root = served
    source = tmp_path / "in"
    source.mkdir()
    unicode_name = source / "mon chat été 🐱 (final) v2.png"
    long_name = source / (("very long name " * 10).strip() + ".png")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(unicode_name)
    Image.new("RGB", (64, 64), (10, 200, 10)).save(long_name)
    plain = write_images(source, 1)[0]
    uploads = [handle_file(str(p)) for p in (unicode_name, long_name, plain)]
    first = client.predict("uploads", "zkx", "cat", 3, uploads, [], api_name="/dataset_add")[0]
    folder = root / "datasets" / "uploads" / "3_zkx cat"
    names = sorted(p.name for p in folder.iterdir())
    assert first.startswith("Added 3 image(s)") and "mon chat été 🐱 (final) v2.png" in names
    shortened = [n for n in names if n.startswith("very long")]
    assert len(shortened) == 1 and len(shortened[0]) == 120 and shortened[0].endswith(".png")
    assert f"renamed {long_name.name} -> {shortened[0]}" in first

    again = client.predict("uploads", "zkx", "cat", 3, uploads, [], api_name="/dataset_add")[0]
    assert again.startswith("Added 0 image(s)") and "Skipped 3 image(s) already in the dataset" in again
    # the same picture under another name and into another subset of the same dataset is not added either
    copy = tmp_path / "copy.png"
    copy.write_bytes(plain.read_bytes())
    other = client.predict("uploads", "zkx", "dog", 2, [handle_file(str(copy))], [], api_name="/dataset_add")[0]
    assert "copy.png (already there as 3_zkx cat/pic_0.png)" in other
    assert sorted(p.name for p in folder.iterdir()) == names
    assert not list((root / "datasets" / "uploads" / "2_zkx dog").glob("*.png"))


def test_a_decompression_bomb_header_is_refused_with_its_size(served, tmp_path):
    from gradio_client import handle_file

    client, root = served
    bomb = bomb_png(tmp_path / "huge.png")
    fine = write_images(tmp_path / "ok", 1)[0]
    message = client.predict("bombs", "zkx", "cat", 1, [handle_file(str(bomb)), handle_file(str(fine))], [],
                             api_name="/dataset_add")[0]
    assert message.startswith("Added 1 image(s)")
    assert "refused huge.png: claims" in message and "decompression bomb" in message
    assert not list((root / "datasets" / "bombs").rglob("huge*"))


def test_a_latin1_caption_is_never_rewritten_silently(served, tmp_path):
    from gradio_client import handle_file

    client, root = served
    image = write_images(tmp_path / "lat", 1)[0]
    result = client.predict("latin", "zkx", "cat", 1, [handle_file(str(image))], [], api_name="/dataset_add")
    caption = root / "datasets" / "latin" / "1_zkx cat" / "pic_0.txt"
    caption.write_bytes("un chat, été".encode("latin-1"))
    table = client.predict("latin", api_name="/dataset_refresh")[2]
    untouched = client.predict("latin", table, api_name="/dataset_save_captions")[0]
    assert untouched == "Saved 0 caption(s)." and caption.read_bytes() == "un chat, été".encode("latin-1")
    table["data"][0][2] = "un chat, hiver"
    refused = client.predict("latin", table, api_name="/dataset_save_captions")[0]
    assert "1_zkx cat/pic_0.txt is not UTF-8 text (byte 0xe9 at position 9; Latin-1?)" in refused
    assert caption.read_bytes() == "un chat, été".encode("latin-1")
    assert result[0].startswith("Added 1 image(s)")


# --- presets --------------------------------------------------------------------------------------------------
def test_presets_say_what_the_form_holds_and_odd_keys_get_a_clear_message(served, tmp_path):
    import json

    from gradio_client import handle_file

    client, _ = served
    loaded = client.predict("shipped:demo-lora", api_name="/lora_load_preset")[0]
    assert loaded.startswith("Loaded preset `demo-lora`: the form holds its settings")
    kohya = tmp_path / "my kohya.json"
    kohya.write_text(json.dumps({"pretrained_model_name_or_path": "org/model", "network_dim": 8}))
    imported = client.predict(handle_file(str(kohya)), api_name="/lora_import")
    assert "the settings imported from `my kohya.json`" in imported[0] and imported[-1]["value"] is None
    assert "no field in this form" not in imported[0]
    concepts = tmp_path / "concepts.toml"  # the concepts editor holds them: nothing to warn about
    concepts.write_text('method = "lora"\n[model]\nbase = "builtin:tiny-sd15"\n'
                        f'[[dataset.concepts]]\ndir = "{tmp_path}"\nrepeats = 2.5\n')
    imported = client.predict(handle_file(str(concepts)), api_name="/lora_import")
    assert "no field in this form" not in imported[0] and str(tmp_path) in imported[1:-1]
    assert "2.5" in imported[1:-1]
    for action in ("/lora_load_preset", "/lora_delete_preset"):
        message = client.predict("user:evil\x00name", api_name=action)
        message = message[0] if isinstance(message, (list, tuple)) else message
        assert "must not contain control" in message and "U+0000" in message, (action, message)
    values = _demo_values(client)
    saved = client.predict("user:evil\x00name", *values, api_name="/lora_save_preset")[0]
    assert saved.startswith("Not saved") and "must not contain control" in saved


# --- preflight card -------------------------------------------------------------------------------------------
def test_preflight_card_leads_with_the_steps_and_warns_about_the_hardware(served):
    client, _ = served
    values = _demo_values(client)
    values[form_index("lora", "training.mixed_precision")] = "fp16"
    values[form_index("lora", "training.optimizer")] = "adamw8bit"
    values[form_index("lora", "training.lr_warmup_steps")] = "500"
    message, report, card = client.predict(*values, api_name="/lora_check")
    assert message.startswith("✅") and "total steps: 200" in report
    assert 'data-steps="200"' in card
    assert card.index("200 steps") < card.index("Time:") < card.index("Memory") < card.index("⚠")
    # the demo sets Max steps = 200: that, not the Epochs field, decides the length
    assert "Max steps = 200 sets the length: 17 epochs (the last one partly) of 6 images × 4 repeats / batch 2" \
        in card
    assert "Warmup steps (500) are more than the whole run (200 steps)" in card
    assert "fp16 needs a CUDA GPU" in card and "8-bit optimizer adamw8bit" in card  # no GPU on test machines


def test_start_on_an_empty_folder_is_refused_by_the_checks_gate_and_makes_no_job(served, tmp_path):
    from trainer.config import parse_job
    from ui.preflight_card import card_html

    client, root = served
    empty = tmp_path / "empty"
    empty.mkdir()
    values = _demo_values(client)
    values[form_index("lora", "dataset.dir")] = str(empty)
    jobs_before = sorted((root / "jobs").iterdir())
    message = client.predict(*values, api_name="/lora_start")[0]
    assert message.startswith("Not started: the check refused this job:") and f"{empty} is empty" in message
    assert sorted((root / "jobs").iterdir()) == jobs_before
    # the card's unknown step count gives the check's reason, not "see the report"
    _, report, card = client.predict(*values, api_name="/lora_check")
    assert f"? steps</b> — steps unknown: dataset folder {empty} is empty" in card
    cfg = parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": str(empty)}})
    assert "see the report" in card_html(cfg, False, "no error line here")


def test_the_demos_sample_prompt_on_another_dataset_gets_a_hint(tmp_path):
    from trainer.config import load_job
    from ui.preflight_card import demo_prompt_hint

    cfg = load_job(ROOT / "presets" / "demo-lora.toml")
    assert demo_prompt_hint(cfg) == []  # the demo on its own dataset
    cfg.dataset.dir = str(tmp_path)
    assert demo_prompt_hint(cfg)[0].startswith("The sample prompts are the demo's (\"kiln shape, red circle")
    cfg.sample.prompts = ["zkx dog on a beach"]
    assert demo_prompt_hint(cfg) == []


def test_preflight_card_compares_the_estimate_with_the_gpu():
    from trainer.config import load_job
    from ui.estimates import EarlierRun
    from ui.preflight_card import card_html

    cfg = load_job(ROOT / "presets" / "demo-lora.toml")
    report = ("images: 10   with repeats: 100\nsteps per epoch: 50\ntotal steps: 500   epochs: 10\n"
              "GPU at its peak: about 23.5 GiB, while training (one phase at a time)\n"
              "warning: 2 images are smaller than the resolution\n"
              "# memory (estimate for the full-size sd15 architecture; trainer/memory.py)\n")
    runs = [EarlierRun("earlier", "lora", "sd15", 64, cfg.training.batch_size, 2.0, None)]
    card = card_html(cfg, True, report, runs, gpu_gib=12.0)
    assert "500 steps" in card and "about 4m 10s at 2 steps/s, from job <code>earlier</code>" in card
    assert "The estimate (23.5 GiB) is more than this GPU's 12.0 GiB" in card
    assert "2 images are smaller than the resolution" in card and "needs a CUDA GPU" not in card


def test_time_comes_from_jobs_of_the_same_method_and_family_scaled_by_batch_and_size():
    from ui.estimates import EarlierRun, Estimate, training_estimate

    caption_like = EarlierRun("fast-other", "textual_inversion", "sd15", 512, 1, 72.0, None)
    sdxl = EarlierRun("sdxl-lora", "lora", "sdxl", 1024, 1, 1.0, None)
    assert training_estimate([caption_like, sdxl], "lora", "sd15", 512, 1, 100).startswith(
        "no basis: no earlier LoRA job on a sd15 model")  # another method or family is no basis
    assert training_estimate([caption_like], "lora", None, 512, 1, 100).startswith("no basis")
    same = EarlierRun("same", "lora", "sd15", 512, 2, 0.5, None)
    found = training_estimate([caption_like, same, sdxl], "lora", "sd15", 512, 2, 100)
    assert isinstance(found, Estimate) and found.seconds == pytest.approx(200) and "`same`" in found.text
    # twice the pixels per side and half the batch: 4 x 0.5 = twice as long a step
    scaled = training_estimate([same], "lora", "sd15", 1024, 1, 100)
    assert scaled.seconds == pytest.approx(400) and "scaled to 1024 px, batch 1" in scaled.text
    # the closest run wins: same size and batch before a scaled one
    exact = EarlierRun("exact", "lora", "sd15", 1024, 1, 0.2, None)
    assert "`exact`" in training_estimate([same, exact], "lora", "sd15", 1024, 1, 100).text


def test_earlier_runs_read_method_family_and_speed_from_the_job_folders(tmp_path):
    from trainer.jobs import JobManager
    from trainer.jobs.status import patch_status
    from ui.estimates import earlier_runs

    manager = JobManager(tmp_path / "jobs")
    lora = manager.create('method = "lora"\n[training]\nbatch_size = 2\n', name="lora")
    patch_status(manager.job_dir(lora), state="failed", step=50, it_per_s=1.5, arch="sd15", resolution=512,
                 images_per_s=0.25)
    caption = manager.create('task = "caption"\n[caption]\ndir = "x"\n', name="caption")
    patch_status(manager.job_dir(caption), state="done", step=9, it_per_s=72.0)
    runs = earlier_runs(manager.list_jobs())
    assert [(r.job_id, r.method, r.arch, r.resolution, r.batch, r.steps_per_s, r.images_per_s) for r in runs] == \
        [(lora, "lora", "sd15", 512, 2, 1.5, 0.25)]  # a failed job's measured speed counts; a caption job's never


def test_class_image_generation_is_in_the_estimate_and_the_card_says_where_they_go(tmp_path):
    from trainer.config import parse_job
    from ui.estimates import EarlierRun
    from ui.preflight_card import card_html

    cfg = parse_job({"method": "dreambooth", "model": {"base": "builtin:tiny-sd15"},
                     "dataset": {"dir": "/d/dog", "resolution": 512},
                     "dreambooth": {"instance_prompt": "zkx dog", "class_prompt": "dog"}}, complete=False)
    report = ("images: 9   with repeats: 9\nclass images: 1800 in <shared class-image cache>   class samples per "
              "epoch: 9 (paired with as many subject samples)\nwarning: 1800 class images will be generated before "
              "training\nsteps per epoch: 9\ntotal steps: 90   epochs: 10\n"
              "# memory (estimate for the full-size sd15 architecture; trainer/memory.py)\n")
    trained = EarlierRun("trained", "dreambooth", "sd15", 512, cfg.training.batch_size, 1.0, None)
    assumed = card_html(cfg, True, report, [trained], workspace_root=tmp_path)
    # no earlier generation: a stated assumption, counted into the total
    assert "Class images: 1800 to generate first, about 1h 00m, assuming 2 s an image" in assumed
    assert "Time: about 1m 30s at 1 steps/s" in assumed and "with the class images about 1h 01m in all" in assumed
    assert "shared cache" in assumed and "set Class image folder to " + str(tmp_path / "class-images" /
                                                                          cfg.output.name) in assumed
    assert "will be generated before training" not in assumed  # said once, in the time line
    # measured: 20 s an image, as an earlier job generated them
    measured = EarlierRun("generated", "dreambooth", "sd15", 512, 1, None, 0.05)
    card = card_html(cfg, True, report, [trained, measured], workspace_root=tmp_path)
    assert "about 10h 00m at 20 s an image, as job <code>generated</code> generated them" in card


# --- captioning -----------------------------------------------------------------------------------------------
def test_a_caption_job_with_nothing_to_do_or_no_weights_is_refused_before_any_model_loads(tmp_path):
    from trainer.caption import CaptionOptions
    from tests.test_ui import write_images
    from ui.caption_gate import caption_gate

    folder = tmp_path / "set"
    images = write_images(folder, 2)
    offline = lambda: False  # noqa: E731
    blip = CaptionOptions(dir=str(folder), method="blip", model="Kiln-test/not-cached-blip")
    refused = caption_gate(folder, blip, hub_reachable=offline)
    assert refused == ("The BLIP weights (Kiln-test/not-cached-blip) are not on this machine and the hub cannot be "
                       "reached: on a connected machine run `hf download Kiln-test/not-cached-blip --local-dir "
                       "blip-model`, copy that folder here and give its path as “Model (hub id or local folder)”.")
    assert caption_gate(folder, blip, hub_reachable=lambda: True) is None  # it can be fetched: the job may start
    for image in images:
        image.with_suffix(".txt").write_text("a caption")
    nothing = caption_gate(folder, blip, hub_reachable=offline)  # checked first: no model is needed at all
    assert nothing.startswith("Nothing to do: all 2 images in set already have a caption and “Existing captions” "
                              "keeps them")
    assert caption_gate(folder, CaptionOptions(dir=str(folder), method="blip", mode="overwrite",
                                               model=str(tmp_path)), hub_reachable=offline) is None  # a local folder
    wd14 = CaptionOptions(dir=str(folder), method="wd14", mode="overwrite", model=str(tmp_path))
    assert "lacks model.onnx and selected_tags.csv" in caption_gate(folder, wd14, hub_reachable=offline)


def test_ui_messages_name_fields_by_their_labels_and_the_cli_keeps_the_keys():
    from ui.forms import problems_by_field
    from ui.labels import in_ui_words

    assert in_ui_words("dataset.resolution = 64 is outside the bucket range dataset.min_bucket_reso = 256") == \
        "“Resolution” = 64 is outside the bucket range “Smallest bucket side” = 256"
    assert in_ui_words("use larger originals, or turn on dataset.bucket_no_upscale.") == \
        "use larger originals, or turn on “Never upscale into buckets”."
    assert in_ui_words("pass --model FOLDER, or tick --edit-kept") == \
        "pass “Model (hub id or local folder)” FOLDER, or tick “Edit kept captions”"
    assert in_ui_words("/data/dataset.dir.bak and dataset.dirs stay") == "/data/dataset.dir.bak and dataset.dirs stay"
    # a problem naming two fields is put by both (the folded one is outlined too), in the labels' words
    by_field, others = problems_by_field("lora", ["<LoRA form>: dataset.resolution = 64 is outside the bucket "
                                                  "range dataset.min_bucket_reso = 256"])
    assert set(by_field) == {"dataset.resolution", "dataset.min_bucket_reso"} and not others
    assert "dataset." not in by_field["dataset.min_bucket_reso"]


def test_a_prefix_typed_with_its_comma_is_not_doubled():
    from trainer.caption import CaptionOptions
    from trainer.caption.text import edit

    assert edit("toy", CaptionOptions(dir=".", prefix="zkx toy, ")) == "zkx toy, toy"
    assert edit("toy", CaptionOptions(dir=".", suffix=", photo")) == "toy, photo"
    assert edit("zkx toy, toy", CaptionOptions(dir=".", prefix="zkx toy, ")) == "zkx toy, toy"  # once only
    assert edit("", CaptionOptions(dir=".", prefix="zkx toy, ")) == "zkx toy"


def _caption_dataset_with_one_kept(root: Path) -> Path:
    root.mkdir()
    for name in ("red_car", "blue_bike"):
        Image.new("RGB", (64, 64), (90, 90, 90)).save(root / f"{name}.png")
    (root / "blue_bike.txt").write_text("my own words\n")
    return root


def test_skip_existing_leaves_a_kept_caption_alone_unless_asked(tmp_path):
    from trainer.caption import CaptionOptions
    from trainer.caption.methods import make_captioner
    from trainer.caption.runner import caption_dataset

    def run(folder: Path, **options) -> None:
        chosen = CaptionOptions(dir=str(folder), method="basic", from_name="file", prefix="zkx toy, ", **options)
        chosen.validate()
        caption_dataset(chosen, make_captioner(chosen))

    kept = _caption_dataset_with_one_kept(tmp_path / "a")
    run(kept)
    assert (kept / "blue_bike.txt").read_text() == "my own words\n"
    assert (kept / "red_car.txt").read_text() == "zkx toy, red car\n"
    edited = _caption_dataset_with_one_kept(tmp_path / "b")
    run(edited, edit_kept=True)
    assert (edited / "blue_bike.txt").read_text() == "zkx toy, my own words\n"
    backups = list((edited / ".kiln-caption-backup").rglob("*.txt"))
    assert [p.read_text() for p in backups] == ["my own words\n"]  # the replaced caption is kept


def test_overwrite_asks_first_and_keeps_a_backup(served, tmp_path):
    from gradio_client import handle_file

    from tests.test_ui import caption_values

    client, root = served
    source = _caption_dataset_with_one_kept(tmp_path / "cap")
    client.predict("overwrite-me", "zkx", "toy", 1, [handle_file(str(p)) for p in sorted(source.iterdir())], [],
                   api_name="/dataset_add")
    folder = root / "datasets" / "overwrite-me" / "1_zkx toy"
    values = caption_values(method="basic", mode="overwrite", from_name="file")
    jobs_before = set((root / "jobs").iterdir())
    asked = client.predict("overwrite-me", *values, api_name="/dataset_caption")[0]
    assert asked.startswith("⚠ Overwrite replaces the existing captions of 1 image(s)")
    assert set((root / "jobs").iterdir()) == jobs_before and (folder / "blue_bike.txt").read_text() == \
        "my own words\n"
    message, job_id, *_ = client.predict("overwrite-me", *values, api_name="/dataset_caption")
    assert f"Created caption job `{job_id}`" in message
    deadline = time.monotonic() + 90
    while 'data-state="done"' not in client.predict(job_id, api_name="/job_view")[JOB_VIEW_PROGRESS]:
        assert time.monotonic() < deadline, (root / "jobs" / job_id / "log.txt").read_text()[-2000:]
        time.sleep(0.5)
    assert (folder / "blue_bike.txt").read_text() == "blue bike\n"
    backups = list((root / "datasets" / "overwrite-me" / ".kiln-caption-backup").rglob("blue_bike.txt"))
    assert len(backups) == 1 and backups[0].read_text() == "my own words\n"


def test_refresh_does_not_drop_unsaved_caption_edits_silently(served, tmp_path):
    from gradio_client import handle_file

    client, root = served
    images = write_images(tmp_path / "edits", 2)
    table = client.predict("unsaved", "zkx", "cat", 1, [handle_file(str(p)) for p in images], [],
                           api_name="/dataset_add")[4]
    table["data"][0][2] = "zkx cat, typed but not saved"
    warned = client.predict("unsaved", table, api_name="/dataset_refresh")
    assert warned[4].startswith("⚠ 1 caption edit(s) are not saved yet (1_zkx cat/pic_0.png)")
    again = client.predict("unsaved", table, api_name="/dataset_refresh")  # the second press discards them
    assert again[4] == "" and again[2]["data"][0][2] == ""
    assert not list((root / "datasets" / "unsaved").rglob("*.txt"))


def test_an_uploaded_kohya_folder_keeps_its_repeats(served, tmp_path):
    import json

    from gradio_client import handle_file

    client, root = served
    source = tmp_path / "20_sks toy"
    images = write_images(source, 2)
    uploads = [handle_file(str(p)) for p in images]
    # the browser sends the files' paths relative to the chosen folder (the server sees only file names)
    paths = json.dumps([f"20_sks toy/{p.name}" for p in images])
    repeats, token, class_word, message = client.predict(uploads, paths, api_name="/dataset_folder_chosen")
    assert (repeats, token, class_word) == ("20", "sks", "toy")
    assert "`20_sks toy` is a Kohya folder: **20 repeats**" in message
    added = client.predict("kohya-upload", token, class_word, repeats, [], uploads, api_name="/dataset_add")[0]
    assert added.startswith("Added 2 image(s)")
    assert sorted(p.name for p in (root / "datasets" / "kohya-upload" / "20_sks toy").iterdir()) == \
        ["pic_0.png", "pic_1.png"]
    plain = client.predict(uploads, json.dumps(["holiday/a.png"]), api_name="/dataset_folder_chosen")
    assert "no Kohya `N_` name" in plain[3]
    bad = client.predict("kohya-upload", "sks", "toy", "twenty", [], uploads, api_name="/dataset_add")[0]
    assert bad == "❌ Repeats: 'twenty' is not a number (a whole number, like 10)"


def test_class_image_generation_shows_n_of_n_eta_the_folder_and_a_few_images(tmp_path):
    from ui.job_view import progress_html

    class_dir = tmp_path / "class images"
    class_dir.mkdir()
    for i in range(6):
        Image.new("RGB", (64, 64), (i * 40, 80, 120)).save(class_dir / f"class_{i}.png")
    job = {"id": "db", "state": "running", "phase": "generating class images", "step": 0, "total_steps": None,
           "done": 6, "total": 400, "eta_s": 190.0, "class_dir": str(class_dir)}
    shown = progress_html(job)
    assert "class images 6 of 400 · ETA 3m 10s · in " + str(class_dir) in shown
    assert "step 0/?" not in shown and shown.count("data:image/jpeg;base64,") == 4
    assert "width:1.5%" in shown  # the bar counts class images


def test_the_class_image_progress_names_its_folder(tmp_path):
    from trainer.dreambooth import ThrottledProgress

    seen = []

    class Reporter:
        def phase(self, name, **info):
            seen.append((name, info))

    progress = ThrottledProgress(Reporter(), "generating class images", folder=tmp_path)
    progress(0, 10)
    assert seen[0][1]["class_dir"] == str(tmp_path) and seen[0][1]["total"] == 10


def test_the_model_field_offers_the_models_folder(tmp_path):
    import gradio as gr

    from ui import build_app

    models = tmp_path / "my models"
    (models / "sd15").mkdir(parents=True)
    (models / "sd15" / "dreamy.safetensors").write_bytes(b"x")
    (models / "a-diffusers-model").mkdir()
    (models / "a-diffusers-model" / "model_index.json").write_text("{}")
    (models / "notes.txt").write_text("not a model")
    app = build_app(tmp_path / "jobs", models_dir=models)
    boxes = [b for b in app.blocks.values() if isinstance(b, gr.Dropdown) and b.elem_id == "field-model-base"]
    assert len(boxes) == 4  # one per method tab (LoRA, DreamBooth, Fine-tune, textual inversion)
    offered = [value for _, value in boxes[0].choices]
    assert offered == ["builtin:tiny-sd15", "builtin:tiny-sdxl", str(models / "a-diffusers-model"),
                       str(models / "sd15" / "dreamy.safetensors")]
    assert boxes[0].allow_custom_value  # typing any other path still works


def test_preflight_card_shows_the_planners_choice_and_where_its_costs_come_from():
    from trainer.config import load_job
    from ui.preflight_card import card_html

    cfg = load_job(ROOT / "presets" / "demo-lora.toml")
    report = ("total steps: 500   epochs: 10\n"
              "GPU at its peak: about 23.5 GiB, while training (one phase at a time)\n\n"
              '# fit to 12 GiB (trainer/planner.py; training.fit = "off": the run keeps the settings as written)\n'
              "to fit 12 GiB: gradient checkpointing, fp8 base, 4 blocks swapped; ~35 % slower (peak about 11.2 GiB, "
              "from 23.5)\n"
              "  training.gradient_checkpointing = true: gradient checkpointing, ~20 % slower (published: x)\n"
              '  training.base_quantization = "fp8": fp8 base, ~5 % slower (estimate: y)\n'
              "  training: about 11.2 GiB\n")
    card = card_html(cfg, True, report, gpu_gib=12.0)
    assert ("to fit 12 GiB: gradient checkpointing, fp8 base, 4 blocks swapped; ~35 % slower (peak about 11.2 GiB, "
            "from 23.5) — set Fit my GPU = auto to use them") in card
    assert "<li>training.base_quantization = &quot;fp8&quot;: fp8 base, ~5 % slower (estimate: y)</li>" in card
    assert "<li>training: about" not in card
    assert "trains the LoRA against rounded frozen weights" in card  # what quantization does to the result
