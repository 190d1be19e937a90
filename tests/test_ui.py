"""The web UI, driven end to end through gradio_client against a real server on a free port, plus the
pieces it is built from (schema-generated forms, upload sanitising, presets, job views)."""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import make_dataset

ROOT = Path(__file__).resolve().parents[1]
# /job_view returns: table, progress, loss chart, LR chart, samples, log, outputs
JOB_VIEW_TABLE, JOB_VIEW_PROGRESS, JOB_VIEW_LOSS, JOB_VIEW_LR, JOB_VIEW_SAMPLES, JOB_VIEW_LOG, \
    JOB_VIEW_OUTPUTS = range(7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_workers(jobs_dir: Path) -> None:
    """Kill the process group of every worker the app started (they run detached, so they would outlive us)."""
    for pid_file in jobs_dir.glob("*/worker.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on a free port with a fresh workspace; yields (client, workspace root). Always shut down."""
    from gradio_client import Client

    from ui import launch_app

    root = tmp_path_factory.mktemp("workspace")
    app = launch_app(root / "jobs", port=free_port(), block=False)
    try:
        yield Client(app.local_url, verbose=False, download_files=str(root / "downloads")), root
    finally:
        app.kiln_scheduler.stop()
        stop_workers(root / "jobs")
        app.close()


def form_index(method: str, name: str) -> int:
    from ui.forms import form_fields

    return [f.name for f in form_fields(method)].index(name)


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"pic_{i}.png"
        Image.new("RGB", (64 + 8 * i, 64), (40 * i, 120, 200 - 20 * i)).save(path)
        paths.append(path)
    return paths


# --- pieces ---------------------------------------------------------------------------------------------------
def test_importing_and_building_the_ui_leaves_torch_out(tmp_path):
    code = ("import sys; from ui import build_app; build_app(sys.argv[1]); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "jobs")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_new_schema_field_appears_in_the_form_without_a_ui_change(monkeypatch):
    import gradio as gr

    from trainer.config import schema
    from ui.forms import build_form, form_fields

    extra = schema.Field("training", "brand_new_knob", schema.INT, 3, "Brand-new knob", "Only in this test.",
                         min=0, max=9, advanced=True)
    monkeypatch.setattr(schema, "FIELDS", schema.FIELDS + (extra,))
    assert extra in form_fields("lora")
    with gr.Blocks():
        components = build_form("lora", {}).components
    knob = components[form_fields("lora").index(extra)]
    # numbers are text boxes read as typed (ui.numbers), with the schema's range in the info line
    assert isinstance(knob, gr.Textbox) and knob.label == "Brand-new knob"
    assert knob.value == "3" and "between 0 and 9" in knob.info
    # every visible schema field of the method is in the form, in schema order; no other method's fields
    names = [f.name for f in form_fields("textual_inversion")]
    assert "textual_inversion.token" in names and "lora.rank" not in names and "method" not in names


def test_form_values_round_trip_through_a_job_config():
    from trainer.config import load_job
    from ui.forms import job_from_values, values_from_job

    cfg = load_job(ROOT / "presets" / "demo-lora.toml", complete=False)
    values = values_from_job("lora", cfg)
    values[form_index("lora", "lora.rank")] = 8.0  # browsers send whole numbers as floats
    again = job_from_values("lora", values, base_dir=str(ROOT))
    assert again.lora.rank == 8 and isinstance(again.lora.rank, int)
    assert again.dataset.dir == cfg.dataset.dir and again.training.max_steps == cfg.training.max_steps


@pytest.mark.parametrize("uploaded, kept", [("../../x.png", "x.png"), ("/etc/evil.png", "evil.png"),
                                            ("..\\..\\win.png", "win.png"), ("a b/$(rm -rf).png", "$(rm -rf).png"),
                                            ("....png", "png")])
def test_uploaded_names_cannot_leave_the_folder(uploaded, kept):
    from ui.datasets import safe_file_name

    assert safe_file_name(uploaded) == kept


def test_job_toml_points_an_empty_output_folder_at_the_job_folder(tmp_path):
    from trainer.config import load_job
    from ui.forms import job_from_values, values_from_job
    from ui.job_files import job_toml

    cfg = load_job(ROOT / "presets" / "demo-lora.toml")
    values = values_from_job("lora", cfg)
    values[form_index("lora", "output.dir")] = ""
    job_file = tmp_path / "some-job" / "job.toml"
    job_file.parent.mkdir()
    job_file.write_text(job_toml(job_from_values("lora", values, base_dir=str(tmp_path))))
    loaded = load_job(job_file)
    assert loaded.output.dir == str(job_file.parent / "output")
    assert loaded.dataset.dir == str(ROOT / "presets" / "demo-dataset")  # absolute, not relative to the job


def test_app_refuses_listening_beyond_loopback_without_auth(monkeypatch, capsys):
    import app
    import ui

    launched = {}
    monkeypatch.setattr(ui, "launch_app", lambda jobs_dir, **kw: launched.update(kw))
    for exposed in (["--host", "0.0.0.0"], ["--share"]):
        with pytest.raises(SystemExit):
            app.main([*exposed, "--port", "1"])
        assert "without --auth is refused" in capsys.readouterr().err and not launched
    app.main(["--host", "0.0.0.0", "--port", "1", "--insecure-no-auth"])
    assert "WARNING" in capsys.readouterr().err and launched["auth"] is None and launched["share"] is False
    app.main(["--host", "0.0.0.0", "--port", "1", "--auth", "me:secret", "--max-upload-mb", "5"])
    assert "WARNING" not in capsys.readouterr().err and launched["auth"] == ("me", "secret")
    assert launched["max_upload_mb"] == 5 and app.parse_args([]).max_upload_mb == 200
    app.main(["--port", "1"])  # this machine only: no login needed
    assert launched["auth"] is None and launched["host"] == "127.0.0.1"
    for bad in (["--auth", "nopassword"], ["--max-upload-mb", "0"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)


# --- through the served app -----------------------------------------------------------------------------------
def test_upload_refuses_non_images_and_escaping_names(served, tmp_path):
    import httpx
    from gradio_client import handle_file

    client, root = served
    good = write_images(tmp_path / "in", 1)[0]
    (tmp_path / "notes.png").write_text("I am text, not a picture")
    (tmp_path / "script.sh").write_text("echo hi")
    # Upload one file under a hostile name straight through Gradio's upload route, as a browser could.
    response = httpx.post(f"{client.src.rstrip('/')}/gradio_api/upload",
                          files=[("files", ("../../x.png", good.read_bytes(), "image/png"))])
    response.raise_for_status()
    hostile = response.json()[0]
    result = client.predict("escape-test", "sks", "thing", 1,
                            [handle_file(str(tmp_path / "notes.png")), handle_file(str(tmp_path / "script.sh")),
                             {"path": hostile, "meta": {"_type": "gradio.FileData"}, "orig_name": "../../x.png"}],
                            [], api_name="/dataset_add")
    message = result[0]
    assert "refused notes.png: cannot be read as an image" in message
    assert "refused script.sh: not an image file" in message
    dataset = root / "datasets" / "escape-test"
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png") if "downloads" not in p.parts)
    assert written == ["datasets/escape-test/1_sks thing/x.png"]
    assert not list(dataset.rglob("notes*")) and not list(dataset.rglob("script*"))
    # bad dataset names are refused, not silently changed
    refused = client.predict("../up", "sks", "thing", 1, [handle_file(str(good))], [], api_name="/dataset_add")
    assert "dataset name '../up' is not usable" in refused[0]
    assert not (root / "up").exists()


def test_captions_edit_and_tag_frequency(served, tmp_path):
    from gradio_client import handle_file

    client, root = served
    images = write_images(tmp_path / "cap", 2)
    result = client.predict("captions-test", "zqx", "cat", 3, [handle_file(str(p)) for p in images], [],
                            api_name="/dataset_add")
    table = result[4]
    assert [row[3] for row in table["data"]] == ["zqx cat", "zqx cat"]
    table["data"][0][2] = "zqx cat, red, sitting"
    after = client.predict("captions-test", table, api_name="/dataset_save_captions")
    assert after[0] == "Saved 1 caption(s)."
    caption_file = root / "datasets" / "captions-test" / "3_zqx cat" / "pic_0.txt"
    assert caption_file.read_text() == "zqx cat, red, sitting\n"
    tags = {row[0]: row[1] for row in after[4]["data"]}
    assert tags == {"zqx cat": 2, "red": 1, "sitting": 1}
    table["data"][0][0] = "../../../etc/passwd"
    bad = client.predict("captions-test", table, api_name="/dataset_save_captions")
    assert "is not an image of dataset captions-test" in bad[0]


def test_broken_presets_say_which_field_and_why(served):
    client, root = served
    user = root / "presets-user"
    (user / "typo.toml").write_text('method = "lora"\n[training]\nlearnin_rate = 1e-4\n')
    (user / "bad-value.toml").write_text('method = "lora"\n[lora]\nrank = 0\n')
    message = client.predict("user:typo", api_name="/lora_load_preset")[0]
    assert "training.learnin_rate" in message and "did you mean `training.learning_rate`" in message
    message = client.predict("user:bad-value", api_name="/lora_load_preset")[0]
    assert "lora.rank = 0 is out of range (must be between 1 and 1024)" in message


def test_presets_save_save_as_delete_and_shipped_ones_stay(served):
    client, root = served
    shipped = ROOT / "presets" / "demo-lora.toml"
    before = shipped.read_bytes()
    loaded = client.predict("shipped:demo-lora", api_name="/lora_load_preset")
    values = list(loaded[1:])
    values[form_index("lora", "lora.rank")] = 12
    refused = client.predict("shipped:demo-lora", *values, api_name="/lora_save_preset")[0]
    assert "never overwritten" in refused and shipped.read_bytes() == before
    saved = client.predict("my demo", *values, api_name="/lora_save_preset_as")[0]
    assert saved == "Saved new preset `my demo`: the form holds its settings."
    again = client.predict("my demo", *values, api_name="/lora_save_preset_as")[0]
    assert "already have a preset called 'my demo'" in again
    reloaded = client.predict("user:my demo", api_name="/lora_load_preset")
    assert reloaded[1 + form_index("lora", "lora.rank")] == "12"
    assert reloaded[1 + form_index("lora", "output.dir")] == ""  # the job's own folder, not beside the preset
    client.predict("user:my demo", api_name="/lora_delete_preset")
    assert not (root / "presets-user" / "my demo.toml").exists()
    wrong_tab = client.predict("shipped:demo-lora", api_name="/dreambooth_load_preset")[0]
    assert "is a LoRA preset" in wrong_tab


def test_kohya_json_import_maps_fields_and_lists_ignored_ones(served, tmp_path):
    from gradio_client import handle_file

    client, _ = served
    kohya = tmp_path / "kohya.json"
    kohya.write_text(json.dumps({"pretrained_model_name_or_path": "org/model", "network_dim": 24,
                                 "network_alpha": 12, "learning_rate": 2e-4, "LoRA_type": "Standard",
                                 "train_data_dir": str(tmp_path), "output_name": "from-kohya", "vae": ""}))
    result = client.predict(handle_file(str(kohya)), api_name="/lora_import")
    assert "Kohya network_dim = 24 -> lora.rank = 24" in result[0] and "LoRA_type" in result[0]
    assert result[1 + form_index("lora", "lora.rank")] == "24"
    assert result[1 + form_index("lora", "model.base")] == "org/model"


STEPS = 400  # of the demo job the UI test trains, pauses, stops and continues


def test_train_demo_job_progress_pause_stop_resume_download(served, tmp_path):
    """Upload a dataset, load the demo preset, train the tiny model, watch progress, pause, stop (saves),
    continue from the saved state, and download the .safetensors."""
    from gradio_client import handle_file

    client, root = served
    source = make_dataset(tmp_path / "shapes", n=4)
    uploads = [handle_file(str(p)) for p in sorted(source.iterdir())]
    added = client.predict("shapes", "kiln", "shape", 2, uploads, [], api_name="/dataset_add")
    assert added[0].startswith("Added 4 image(s)")
    dataset_dir = root / "datasets" / "shapes"

    values = list(client.predict("shipped:demo-lora", api_name="/lora_load_preset")[1:])
    values[form_index("lora", "dataset.dir")] = str(dataset_dir)
    # long enough that a pause lands mid-run on a fast, idle machine too (the tiny model trains ~50 steps/s)
    values[form_index("lora", "training.max_steps")] = STEPS
    values[form_index("lora", "output.save_every_n_steps")] = 0
    ok, report, card = client.predict(*values, api_name="/lora_check")
    assert ok.startswith("✅") and f"total steps: {STEPS}" in report and "4 images" in report
    assert card.index(f"{STEPS} steps") < card.index("Memory")  # the summary card leads with the step count

    message, job_id = client.predict(*values, api_name="/lora_start")
    assert job_id and "created" in message
    job_dir = root / "jobs" / job_id
    assert '[output]\ndir = "output"' in (job_dir / "job.toml").read_text()  # relative: the job's own folder

    def view() -> dict:
        html = client.predict(job_id, api_name="/job_view")[1]
        return json.loads((job_dir / "status.json").read_text()) | {"html": html}

    def wait_for(condition, what: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = view()
            if condition(status):
                return status
            assert status["state"] not in ("failed",), status.get("error")
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; log:\n{(job_dir / 'log.txt').read_text()[-3000:]}")

    first = wait_for(lambda s: s["state"] == "running" and (s.get("step") or 0) > 0, "progress")
    later = wait_for(lambda s: (s.get("step") or 0) > first["step"], "progress to advance")
    assert f'data-step="{later["step"]}"' in later["html"] or "kiln-progress" in later["html"]
    assert client.predict(job_id, api_name="/job_pause").startswith("Sent")
    paused = wait_for(lambda s: s["state"] == "paused", "pause")
    time.sleep(1.5)
    assert view()["step"] == paused["step"]  # paused really holds
    client.predict(job_id, api_name="/job_stop")
    stopped = wait_for(lambda s: s["state"] == "stopped", "stop", timeout=60)
    assert stopped["step"] < STEPS and list((job_dir / "state").iterdir()), "stop must save a resumable state"

    assert client.predict(job_id, api_name="/job_requeue").startswith("Sent")  # the "Continue" button
    wait_for(lambda s: s["state"] == "done", "the continued job to finish", timeout=240)
    assert "resumed from" in (job_dir / "log.txt").read_text()
    result = client.predict(job_id, api_name="/job_view")
    assert 'data-state="done"' in result[1] and f'data-step="{STEPS}"' in result[1]
    downloaded = [Path(p) for p in (result[JOB_VIEW_OUTPUTS] or [])]
    final = [p for p in downloaded if p.name == "kiln-demo-lora.safetensors"]
    assert final, downloaded
    header_len = struct.unpack("<Q", final[0].read_bytes()[:8])[0]
    header = json.loads(final[0].read_bytes()[8:8 + header_len])
    assert any(key.startswith("lora_unet_") for key in header)


# --- captioning from the Dataset tab ----------------------------------------------------------------------------
def caption_values(**chosen) -> list:
    """The /dataset_caption inputs after the dataset: every caption field's default, with `chosen` ones set."""
    from ui.caption_panel import caption_fields

    fields = caption_fields()
    unknown = set(chosen) - {f.name for f in fields}
    assert not unknown, unknown
    return [chosen.get(f.name, f.default) for f in fields]


def test_caption_panel_inputs_are_generated_from_caption_options():
    import dataclasses

    import gradio as gr

    from trainer.caption import CaptionOptions
    from ui.caption_panel import build_caption_panel, caption_fields

    fields = {f.name: f for f in caption_fields()}
    expected = [f.name for f in dataclasses.fields(CaptionOptions) if f.name not in ("dir", "report", "only")]
    assert list(fields) == expected
    assert fields["general_threshold"].type is float and fields["general_threshold"].default == 0.35
    assert fields["beams"].type is int and fields["rating"].type is bool
    assert fields["mode"].choices == ("skip-existing", "overwrite", "append")
    assert fields["method"].choices == ("basic", "blip", "wd14", "florence2", "joycaption", "qwen-vl")
    assert fields["method"].default == "basic"
    assert fields["from_name"].choices == ("none", "file", "folder")
    # per-method groups and help text come from the `trainer caption` parser
    assert fields["beams"].methods == ("blip",)
    assert fields["model"].methods == ("blip", "wd14", "florence2", "joycaption", "qwen-vl")
    assert fields["length"].methods == ("florence2", "joycaption", "qwen-vl")
    assert fields["template"].methods == ("joycaption", "qwen-vl") and fields["template"].choices[0] == "describe"
    assert fields["trigger"].methods is None  # an edit: every method
    assert fields["exclude_tags"].methods == ("wd14",) and fields["prefix"].methods is None
    assert "beam search" in fields["beams"].help.lower() and "overwrite:" in fields["mode"].help

    # a field added to CaptionOptions appears in the panel with its type and default
    @dataclasses.dataclass
    class MoreOptions(CaptionOptions):
        brand_new_knob: int = 7

    knob = [f for f in caption_fields(MoreOptions) if f.name == "brand_new_knob"]
    assert knob and knob[0].type is int and knob[0].default == 7 and knob[0].methods is None

    with gr.Blocks() as page:
        dataset = gr.Dropdown()
        views = [gr.Markdown(), gr.Gallery(), gr.Dataframe(), gr.Dataframe()]
        build_caption_panel(None, dataset, lambda c: None, lambda c: ("", [], [], []), views)
    made = {b.elem_id: b for b in page.blocks.values() if (b.elem_id or "").startswith("caption-")}
    for name in expected:  # one input per option, with the option's default
        component = made[f"caption-{name.replace('_', '-')}"]
        assert component.value == fields[name].default, name
    assert isinstance(made["caption-mode"], gr.Radio) and isinstance(made["caption-rating"], gr.Checkbox)
    assert made["caption-general-threshold"].maximum == 1.0 and made["caption-beams"].precision == 0


def test_caption_form_writes_the_right_job_toml_for_wd14_and_blip(tmp_path):
    import tomllib

    from trainer.caption import CaptionError, caption_job_toml
    from ui.caption_panel import caption_fields, options_from_values

    (tmp_path / "data").mkdir()
    fields = caption_fields()
    wd14 = options_from_values(tmp_path / "data", fields, caption_values(
        method="wd14", mode="append", model=str(tmp_path / "tagger"), general_threshold=0.5,
        character_threshold=0.9, exclude_tags="lowres, text", rating=True, batch_size=2.0, replace_underscores=True,
        beams=9, text="hidden basic text"))
    job = tomllib.loads(caption_job_toml(wd14))
    assert job["task"] == "caption"
    table = job["caption"]
    assert table["dir"] == str(tmp_path / "data") and table["method"] == "wd14" and table["mode"] == "append"
    assert table["model"] == str(tmp_path / "tagger") and table["batch_size"] == 2  # whole float -> int
    assert (table["general_threshold"], table["character_threshold"]) == (0.5, 0.9)
    assert table["exclude_tags"] == "lowres, text" and table["rating"] is True and table["replace_underscores"]
    assert table["beams"] == 3 and table["text"] == ""  # other methods' (hidden) inputs keep their defaults
    assert table["report"] is False

    blip = tomllib.loads(caption_job_toml(options_from_values(tmp_path / "data", fields, caption_values(
        method="blip", mode="overwrite", beams=5, min_length=2, max_length=40, general_threshold=0.1))))["caption"]
    assert (blip["method"], blip["mode"], blip["beams"], blip["min_length"], blip["max_length"]) == \
        ("blip", "overwrite", 5, 2, 40)
    assert blip["general_threshold"] == 0.35 and blip["model"] == ""  # "" = the method's default model

    with pytest.raises(CaptionError, match="'General threshold' = 1.5 is not allowed"):
        options_from_values(tmp_path / "data", fields, caption_values(method="wd14", general_threshold=1.5))
    with pytest.raises(CaptionError, match="the basic method needs something to do"):
        options_from_values(tmp_path / "data", fields, caption_values(method="basic"))


def test_caption_job_from_the_dataset_tab(served, tmp_path):
    """Upload images (one with a caption), caption them from file names with a prefix as a job, watch it in the
    Jobs tab, and see the new captions in the refreshed Dataset tab; the existing caption is kept."""
    from gradio_client import handle_file

    client, root = served
    source = tmp_path / "cap-in"
    source.mkdir()
    for i, name in enumerate(("red_car_01", "blue_bike_02", "green_tree")):
        Image.new("RGB", (64, 48 + 8 * i), (60 * i, 100, 150)).save(source / f"{name}.png")
    (source / "blue_bike_02.txt").write_text("my own words, bike\n")
    uploads = [handle_file(str(p)) for p in sorted(source.iterdir())]
    added = client.predict("caption-job", "zqx", "thing", 2, uploads, [], api_name="/dataset_add")
    assert added[0].startswith("Added 3 image(s)"), added[0]
    folder = root / "datasets" / "caption-job" / "2_zqx thing"

    # a bad request is refused with the reason and makes no job
    jobs_before = set(os.listdir(root / "jobs"))
    refused = client.predict("caption-job", *caption_values(method="basic"), api_name="/dataset_caption")
    assert refused[0].startswith("❌ Not started: the basic method needs something to do")
    nowhere = client.predict("../jobs", *caption_values(from_name="file"), api_name="/dataset_caption")
    assert nowhere[0].startswith("❌ Choose a dataset of the workspace")
    assert set(os.listdir(root / "jobs")) == jobs_before

    message, job_id, *_progress_and_timer = client.predict(
        "caption-job", *caption_values(method="basic", mode="skip-existing", from_name="file", prefix="sks"),
        api_name="/dataset_caption")
    assert job_id and f"Created caption job `{job_id}`" in message and "(basic, skip-existing)" in message
    job_dir = root / "jobs" / job_id
    job_text = (job_dir / "job.toml").read_text()
    assert 'task = "caption"' in job_text and f'dir = "{root / "datasets" / "caption-job"}"' in job_text

    deadline = time.monotonic() + 60
    while True:  # the Jobs tab shows the caption job like a training job
        html = client.predict(job_id, api_name="/job_view")[1]
        if 'data-state="done"' in html:
            break
        assert 'data-state="failed"' not in html, (job_dir / "log.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, f"caption job did not finish; log:\n{(job_dir / 'log.txt').read_text()}"
        time.sleep(0.5)
    assert 'data-step="3"' in html and 'data-total="3"' in html and "phase done" in html  # ended: says so

    assert (folder / "red_car_01.txt").read_text().strip() == "sks, red car"
    assert (folder / "green_tree.txt").read_text().strip() == "sks, green tree"
    # skip mode: the existing caption is kept exactly as it is (editing kept captions is a separate choice)
    assert (folder / "blue_bike_02.txt").read_text().strip() == "my own words, bike"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["red_car_01.png", "blue_bike_02.png", "green_tree.png", "red_car_01.txt", "blue_bike_02.txt",
         "green_tree.txt"]), "no temporary files left behind"

    # the panel reports the end and refreshes the dataset view with the new captions
    status_message, progress, *_timer_and_views = client.predict(job_id, "caption-job",
                                                                 api_name="/dataset_caption_status")
    assert status_message.startswith(f"✅ Caption job `{job_id}` done") and "failed 0" in status_message
    assert 'data-state="done"' in progress
    table = client.predict("caption-job", api_name="/dataset_refresh")[2]
    captions = {row[0]: row[2] for row in table["data"]}
    assert captions == {"2_zqx thing/blue_bike_02.png": "my own words, bike",
                        "2_zqx thing/green_tree.png": "sks, green tree",
                        "2_zqx thing/red_car_01.png": "sks, red car"}
