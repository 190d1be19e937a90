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
        components = build_form("lora", {})
    knob = components[form_fields("lora").index(extra)]
    assert isinstance(knob, gr.Number) and knob.label == "Brand-new knob"
    assert (knob.minimum, knob.maximum, knob.value, knob.precision) == (0, 9, 3, 0)
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
                                            ("..\\..\\win.png", "win.png"), ("a b/$(rm -rf).png", "_rm -rf_.png"),
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


def test_app_warns_when_listening_beyond_loopback_without_auth(monkeypatch, capsys):
    import app
    import ui

    launched = {}
    monkeypatch.setattr(ui, "launch_app", lambda jobs_dir, **kw: launched.update(kw))
    app.main(["--host", "0.0.0.0", "--port", "1"])
    assert "WARNING" in capsys.readouterr().err and launched["share"] is False and launched["auth"] is None
    app.main(["--host", "0.0.0.0", "--port", "1", "--auth", "me:secret"])
    assert "WARNING" not in capsys.readouterr().err and launched["auth"] == ("me", "secret")
    with pytest.raises(SystemExit):
        app.parse_args(["--auth", "nopassword"])


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
    assert saved == "Saved new preset `my demo`."
    again = client.predict("my demo", *values, api_name="/lora_save_preset_as")[0]
    assert "already have a preset called 'my demo'" in again
    reloaded = client.predict("user:my demo", api_name="/lora_load_preset")
    assert reloaded[1 + form_index("lora", "lora.rank")] == 12
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
    assert result[1 + form_index("lora", "lora.rank")] == 24
    assert result[1 + form_index("lora", "model.base")] == "org/model"


def test_train_demo_job_progress_pause_stop_resume_download(served, tmp_path):
    """Upload a dataset, load the demo preset, train the tiny model, watch progress, pause, stop (saves),
    continue with --resume, and download the .safetensors."""
    from gradio_client import handle_file

    client, root = served
    source = make_dataset(tmp_path / "shapes", n=4)
    uploads = [handle_file(str(p)) for p in sorted(source.iterdir())]
    added = client.predict("shapes", "kiln", "shape", 2, uploads, [], api_name="/dataset_add")
    assert added[0].startswith("Added 4 image(s)")
    dataset_dir = root / "datasets" / "shapes"

    values = list(client.predict("shipped:demo-lora", api_name="/lora_load_preset")[1:])
    values[form_index("lora", "dataset.dir")] = str(dataset_dir)
    values[form_index("lora", "training.max_steps")] = 80
    values[form_index("lora", "output.save_every_n_steps")] = 0
    ok, report = client.predict(*values, api_name="/lora_check")
    assert ok.startswith("✅") and "total steps: 80" in report and "4 images" in report

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
    stopped = wait_for(lambda s: s["state"] == "cancelled", "stop", timeout=60)
    assert stopped["step"] < 80 and list((job_dir / "state").iterdir()), "stop must save a resumable state"

    resumed = subprocess.run([sys.executable, "-m", "trainer", "run", str(job_dir / "job.toml"), "--resume",
                              "--job-dir", str(job_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = client.predict(job_id, api_name="/job_view")
    assert 'data-state="done"' in result[1] and 'data-step="80"' in result[1]
    downloaded = [Path(p) for p in (result[5] or [])]
    final = [p for p in downloaded if p.name == "kiln-demo-lora.safetensors"]
    assert final, downloaded
    header_len = struct.unpack("<Q", final[0].read_bytes()[:8])[0]
    header = json.loads(final[0].read_bytes()[8:8 + header_len])
    assert any(key.startswith("lora_unet_") for key in header)
