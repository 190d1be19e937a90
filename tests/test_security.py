"""Hostile input through the served app (gradio_client against a real server, as test_ui.py does): names that
try to be paths at every endpoint that takes one, job files outside the workspace, the login rate limit, the
upload limit, and the queue running with no page open. Plus trainer.names itself."""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_ui import caption_values, free_port, served, write_images  # noqa: F401  (served: the running app)
from trainer.atomic import write_text_atomic
from trainer.jobs import JobManager, read_status
from trainer.jobs.status import patch_status

SHIPPED = {"lora": "demo-lora", "dreambooth": "sd15-dreambooth", "finetune": "sd15-finetune",
           "textual_inversion": "sd15-textual-inversion"}
JOB_APIS = ("job_stop", "job_pause", "job_resume", "job_save_now", "job_sample_now", "job_requeue")


def ended_job(root: Path, toml_text: str, name: str) -> str:
    """A job that is not waiting in the queue (so the app's queue thread never starts a worker for it)."""
    manager = JobManager(root / "jobs")
    job_id = manager.create(toml_text, name)
    manager.stop(job_id)
    return job_id


# --- trainer.names ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mon chat été", "my dog v2 (final)", "猫", "zkx 🐱", "a..b", "x" * 100])
def test_names_keep_unicode_letters(name, tmp_path):
    from trainer.names import check_name, path_inside

    assert check_name(name, "dataset name") == name
    assert path_inside(tmp_path, name, "dataset name", ".toml") == tmp_path.resolve() / f"{name}.toml"


@pytest.mark.parametrize("name, why", [
    ("../x", "'/'"), ("/tmp/x", "'/'"), ("a\\b", "'/'"), ("..", "dot"), (".hidden", "dot"), ("", "empty"),
    (" padded", "space"), ("a\x00b", "U+0000"), ("tab\there", "U+0009"), ("bidi\u202eevil", "U+202E"),
    ("x" * 101, "too long"), ("é" * 101, "too long"), (5, "text")])
def test_names_that_are_paths_or_unprintable_are_refused_with_the_reason(name, why):
    from trainer.names import BadName, check_name

    with pytest.raises(BadName, match="preset name .* is not usable: .*" + re.escape(why)):
        check_name(name, "preset name")


def test_a_symlink_inside_the_folder_cannot_lead_a_write_outside(tmp_path):
    from trainer.names import BadName, path_inside

    (tmp_path / "outside").mkdir()
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "link.toml").symlink_to(tmp_path / "outside" / "target.toml")
    with pytest.raises(BadName, match="leads outside"):
        path_inside(tmp_path / "inside", "link", "preset name", ".toml")


def test_failed_logins_are_limited_per_client_within_a_window():
    from ui.login_limit import LoginRateLimit

    now = [1000.0]
    limit = LoginRateLimit(app=None, max_failures=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert limit.wait_s("10.0.0.1") == 0
        limit.record_failure("10.0.0.1")
    assert limit.wait_s("10.0.0.1") == 60 and limit.wait_s("10.0.0.2") == 0  # per client
    now[0] += 59
    assert limit.wait_s("10.0.0.1") == pytest.approx(1)
    now[0] += 1
    assert limit.wait_s("10.0.0.1") == 0  # the window has passed


# --- every endpoint that takes a name ---------------------------------------------------------------------------
def test_preset_names_cannot_escape_through_any_tab(served):
    client, root = served
    target = ended_job(root, 'method = "lora"\n', "target")
    job_toml = root / "jobs" / target / "job.toml"
    before = job_toml.read_bytes()
    user_dir = root / "presets-user"
    (user_dir / "linked.toml").symlink_to(job_toml)  # planted link: saving over it would rewrite the job
    outside_tmp = f"/tmp/kiln-escape-{root.name}"
    keys = ["user:../x", f"user:{outside_tmp}", f"user:../jobs/{target}/job", "user:..", "user:.hidden",
            "user:a\x00b", "user:" + "x" * 300, "user:linked"]
    names = ["../x", outside_tmp, f"../jobs/{target}/job", "..", ".hidden", "a\x00b", "x" * 300, "a\\b"]
    for method, preset in SHIPPED.items():
        values = client.predict(f"shipped:{preset}", api_name=f"/{method}_load_preset")[1:]
        for key in keys:
            message = client.predict(key, *values, api_name=f"/{method}_save_preset")[0]
            assert message.startswith("Not saved") and "is not usable" in message, (method, key, message)
            if key != "user:linked":  # the link itself is a file of presets-user: loading or deleting it is fine
                loaded = client.predict(key, api_name=f"/{method}_load_preset")[0]
                assert loaded.startswith("Could not load") and "is not usable" in loaded, (method, key, loaded)
                deleted = client.predict(key, api_name=f"/{method}_delete_preset")[0]
                assert deleted.startswith("Not deleted") and "is not usable" in deleted, (method, key, deleted)
        for name in names:
            message = client.predict(name, *values, api_name=f"/{method}_save_preset_as")[0]
            assert message.startswith("Not saved") and "is not usable" in message, (method, name, message)
    assert job_toml.read_bytes() == before
    assert not Path(outside_tmp + ".toml").exists() and not (root / "x.toml").exists()
    assert sorted(p.name for p in user_dir.iterdir()) == ["linked.toml"]
    # Unicode letters are fine
    values = client.predict("shipped:demo-lora", api_name="/lora_load_preset")[1:]
    assert client.predict("mon préréglage été", *values, api_name="/lora_save_preset_as")[0] == \
        "Saved new preset `mon préréglage été`: the form holds its settings."
    assert (user_dir / "mon préréglage été.toml").is_file()


def test_dataset_names_cannot_escape_through_any_dataset_endpoint(served, tmp_path):
    from gradio_client import handle_file

    client, root = served
    image = handle_file(str(write_images(tmp_path / "in", 1)[0]))
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "datasets" / "linked").symlink_to(outside)
    table = {"headers": ["image", "size", "caption (.txt)", "folder caption"], "data": [["x.png", "", "x", ""]]}
    for name in ["../up", str(tmp_path / "abs"), "..", ".hidden", "a/b", "a\\b", "linked", "x" * 300, "bad\x01"]:
        message = client.predict(name, "sks", "thing", 1, [image], [], api_name="/dataset_add")[0]
        assert message.startswith("❌") and "is not usable" in message, (name, message)
        assert client.predict(name, api_name="/dataset_show")[0] == "Choose a dataset."
        assert client.predict(name, api_name="/dataset_refresh")[0] == "Choose a dataset."
        assert client.predict(name, table, api_name="/dataset_save_captions")[0] == "Choose a dataset first."
        started = client.predict(name, *caption_values(from_name="file"), api_name="/dataset_caption")[0]
        assert started.startswith("❌ Choose a dataset of the workspace"), (name, started)
    for token in ("../..", "a/b"):  # the subset folder is a name too
        message = client.predict("fine", token, "thing", 1, [image], [], api_name="/dataset_add")[0]
        assert "instance token + class" in message and "is not usable" in message, message
    assert list(outside.iterdir()) == [] and not (root / "up").exists() and not (tmp_path / "abs").exists()
    added = client.predict("mon chat été", "zkx", "chat", 2, [image], [], api_name="/dataset_add")[0]
    assert added.startswith("Added 1 image(s)"), added
    assert (root / "datasets" / "mon chat été" / "2_zkx chat").is_dir()


def test_job_ids_cannot_escape_through_any_job_endpoint(served):
    client, root = served
    for job_id in ["../x", "a" * 300, "/etc", "..", "../datasets", ".queue.lock"]:
        for api in JOB_APIS:
            message = client.predict(job_id, api_name=f"/{api}")
            assert message.startswith("❌") and ("is not usable" in message or "no job" in message), (api, message)
        view = client.predict(job_id, api_name="/job_view")[1]
        assert "is not usable" in view or "no job" in view, view
        for message in (client.predict(job_id, "any", api_name="/dataset_caption_status")[0],
                        client.predict(job_id, api_name="/dataset_caption_stop")):  # the caption panel's
            assert message.startswith("❌") and ("is not usable" in message or "no job" in message), message


def test_continue_on_a_done_job_is_refused_and_changes_nothing(served):
    client, root = served
    job_id = ended_job(root, 'method = "lora"\n', "finished")
    job_dir = root / "jobs" / job_id
    patch_status(job_dir, state="done", step=10, total_steps=10)
    before = (job_dir / "status.json").read_bytes()
    message = client.predict(job_id, api_name="/job_requeue")
    assert message.startswith("❌") and "is done" in message and "start a new job" in message
    assert (job_dir / "status.json").read_bytes() == before


def test_a_job_whose_output_folder_is_outside_the_workspace_can_be_viewed_and_downloaded(served):
    client, root = served
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here")
    out = Path(tempfile.mkdtemp(prefix="kiln-outside-", dir=shm))
    try:
        weights = out / "kiln-outside.safetensors"
        weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        job_id = ended_job(root, f'method = "lora"\n[output]\ndir = "{out}"\n', "outside")
        # /etc/hostname stands for a path a damaged status might list: not the job's, never handed out
        patch_status(root / "jobs" / job_id, state="done", outputs=[str(weights), "/etc/hostname"])
        result = client.predict(job_id, api_name="/job_view")
        assert 'data-state="done"' in result[1]
        downloaded = [Path(p) for p in result[6] or []]  # the job view's outputs (files)
        assert [p.name for p in downloaded] == ["kiln-outside.safetensors"]
        assert downloaded[0].read_bytes() == weights.read_bytes()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_a_damaged_job_shows_as_damaged_and_the_others_keep_working(served):
    client, root = served
    broken = ended_job(root, 'method = "lora"\n', "broken")
    fine = ended_job(root, 'method = "lora"\n', "fine")
    write_text_atomic(root / "jobs" / broken / "status.json", '{"state": "done", "step": "5"}')  # the queue
    # thread may read it first: it then rewrites the file, and the job keeps saying what was wrong
    with open(root / "jobs" / fine / "events.jsonl", "a") as events:  # valid JSON that is not an event
        events.write('[1, 2]\n"text"\n{"kind": "progress", "step": "x", "loss": 1}\n')
    table, html = client.predict(broken, api_name="/job_view")[:2]
    assert "damaged" in html and "step = &#x27;5&#x27; is not a whole number" in html
    assert {row[0] for row in table["data"]} >= {broken, fine}
    assert 'data-state="stopped"' in client.predict(fine, api_name="/job_view")[1]


# --- the server ---------------------------------------------------------------------------------------------------
def test_logins_are_rate_limited_and_uploads_have_a_size_limit(tmp_path):
    import httpx

    from ui import launch_app

    app = launch_app(tmp_path / "jobs", port=free_port(), auth=("me", "secret"), block=False, max_upload_mb=0.01)
    try:
        with httpx.Client(base_url=app.local_url, timeout=30) as http:
            assert http.post("/login", data={"username": "me", "password": "secret"}).status_code == 200
            small = http.post("/gradio_api/upload", files=[("files", ("a.txt", b"x" * 1000, "text/plain"))])
            assert small.status_code == 200, small.text
            big = http.post("/gradio_api/upload", files=[("files", ("b.txt", b"x" * 50_000, "text/plain"))])
            assert big.status_code == 413, big.text
            for _ in range(5):
                assert http.post("/login", data={"username": "me", "password": "guess"}).status_code == 400
            blocked = http.post("/login", data={"username": "me", "password": "secret"})
            assert blocked.status_code == 429 and "too many failed logins" in blocked.text
            assert 50 <= int(blocked.headers["retry-after"]) <= 60
    finally:
        app.kiln_scheduler.stop()
        app.close()


def test_queued_jobs_start_with_no_page_open(served, tmp_path):
    """Two caption jobs queued from outside the app (as the CLI or another app would); no client connects,
    and the app's own queue thread runs them one after the other."""
    from trainer.caption import CaptionOptions, caption_job_toml

    _, root = served
    cli = JobManager(root / "jobs")
    ids = []
    for name in ("one", "two"):
        folder = root / "datasets" / f"queue-{name}"
        write_images(folder, 2)
        ids.append(cli.create(caption_job_toml(CaptionOptions(dir=str(folder), method="basic", from_name="file")),
                              f"caption {name}"))
    deadline = time.monotonic() + 180
    while not all(read_status(root / "jobs" / job_id)["state"] in ("done", "failed") for job_id in ids):
        assert time.monotonic() < deadline, [read_status(root / "jobs" / job_id) for job_id in ids]
        time.sleep(0.5)
    first, second = (read_status(root / "jobs" / job_id) for job_id in ids)
    assert first["state"] == second["state"] == "done", (first, second)
    assert second["started_at"] >= first["finished_at"]  # one at a time
    assert (root / "datasets" / "queue-two" / "pic_0.txt").read_text().strip() == "pic"  # from the file name


def test_an_output_name_that_is_a_path_is_refused_by_toml_check_and_start(served):
    from tests.test_ui import form_index

    client, root = served
    jobs_before = sorted(p.name for p in (root / "jobs").iterdir())
    for method, preset in SHIPPED.items():
        values = list(client.predict(f"shipped:{preset}", api_name=f"/{method}_load_preset")[1:])
        values[form_index(method, "output.name")] = "../../escaped"
        message, _, download = client.predict(*values, api_name=f"/{method}_toml")
        assert "“Output name”" in message and download is None, message  # the UI says the label
        assert "“Output name”" in client.predict(*values, api_name=f"/{method}_check")[0]
        assert client.predict(*values, api_name=f"/{method}_start")[0].startswith("Not started")
    assert not list(root.parent.glob("escaped*")) and not list(root.glob("escaped*"))
    assert sorted(p.name for p in (root / "jobs").iterdir()) == jobs_before
