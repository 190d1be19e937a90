"""trainer.jobs: job folders, the queue, detached workers, status files and controls, with a fake worker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from trainer.jobs import ControlChannel, JobFileError, JobManager, StatusWriter, read_events, read_status, send
from trainer.jobs.launch import default_worker_command
from trainer.jobs.manager import UNEXPECTED_STOP, read_pid_file, worker_pids
from trainer.jobs.process import kill_worker
from trainer.jobs.status import load_status, patch_status

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for `python -m trainer run`: steps with StatusWriter, obeys ControlChannel, crashes on request.
FAKE_WORKER = textwrap.dedent(f"""
    import sys, time, tomllib
    sys.path.insert(0, {str(ROOT)!r})
    from trainer.jobs import ControlChannel, StatusWriter

    job_toml, job_dir = sys.argv[1], sys.argv[2]
    with open(job_toml, "rb") as f:
        fake = tomllib.load(f)["fake"]
    status, control = StatusWriter(job_dir), ControlChannel(job_dir)
    control.install_signal_handlers()
    status.update(state="running", phase="training", step=0, total_steps=fake["steps"])
    print("fake worker started", flush=True)
    step, paused = 0, False
    while step < fake["steps"]:
        for command in control.poll():
            print("got", command, flush=True)
            if command == "stop" and not fake.get("ignore_stop"):
                status.update(state="stopping", phase="saving")
                status.event("save", step=step, path="output/fake.safetensors")
                status.update(state="stopped", outputs=["output/fake.safetensors"])
                sys.exit(0)
            elif command in ("pause", "resume"):
                paused = command == "pause"
                status.update(state="paused" if paused else "running")
            elif command in ("save", "sample"):
                status.event(command, step=step)
        if paused:
            time.sleep(0.01)
            continue
        time.sleep(fake["step_s"])
        step += 1
        status.update(step=step, loss=1.0 / step)
        status.event("progress", step=step)
        if step == fake.get("crash_at"):
            raise RuntimeError(f"boom at step {{step}}")
    status.update(state="done", outputs=["output/fake.safetensors"])
""")


def fake_job(steps: int = 1000, step_s: float = 0.02, **extra) -> str:
    options = "".join(f"{key} = {json.dumps(value)}\n" for key, value in extra.items())
    return f'method = "lora"\n[training]\nmax_steps = {steps}\n[fake]\nsteps = {steps}\nstep_s = {step_s}\n{options}'





@pytest.fixture
def jobs_dir(tmp_path):
    """The jobs folder; every worker started under it is killed at the end, whatever the test did."""
    folder = tmp_path / "jobs"
    folder.mkdir()
    yield folder
    for job_dir in folder.iterdir():
        if job_dir.is_dir() and not job_dir.name.startswith("."):
            kill_worker(worker_pids(job_dir, read_status(job_dir)), job_dir)


@pytest.fixture
def make_manager(jobs_dir, tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)

    def make(**options) -> JobManager:
        return JobManager(jobs_dir, worker_cmd=[sys.executable, str(script), "{job_toml}", "{job_dir}"], **options)
    return make


def test_importing_trainer_jobs_leaves_torch_out():
    code = "import sys, trainer.jobs; print(sorted({'torch', 'diffusers', 'gradio'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_create_start_progress_then_stop(make_manager, jobs_dir):
    manager = make_manager()
    job_id = manager.create(fake_job(), "My LoRA / v2!")
    job_dir = jobs_dir / job_id
    assert job_id.endswith("-my-lora-v2")
    assert (job_dir / "job.toml").read_text() == fake_job()
    assert all((job_dir / sub).is_dir() for sub in ("samples", "output", "state", "control"))
    job = manager.get(job_id)
    assert (job["state"], job["name"]) == ("queued", "My LoRA / v2!")

    assert manager.start_pending() == [job_id]
    assert manager.get(job_id)["state"] == "running"
    assert read_pid_file(job_dir) is not None
    first = wait_for(lambda: manager.get(job_id).get("step", 0) >= 2 and manager.get(job_id)["step"], what="steps")
    wait_for(lambda: manager.get(job_id)["step"] > first, what="more steps")
    events, next_line = read_events(job_dir)
    assert (events[0]["kind"], events[0]["state"], events[0]["by"]) == ("state", "running", "job manager")
    assert next_line == len(events) and [e["step"] for e in events[1:3]] == [1, 2]
    assert all(e["kind"] == "progress" and e["time"] > 0 for e in events[1:])

    manager.stop(job_id)
    job = manager.wait(job_id, timeout_s=10)
    assert job["state"] == "stopped" and job["error"] is None
    assert job["outputs"] == ["output/fake.safetensors"] and job["finished_at"] >= job["started_at"]
    assert "got stop" in manager.log_tail(job_id, 5)
    assert not any((job_dir / "control").iterdir())  # the worker consumed the command


def test_pause_unpause_save_and_sample(make_manager, jobs_dir):
    manager = make_manager()
    job_id = manager.create(fake_job(), "controls")
    manager.start_pending()
    wait_for(lambda: manager.get(job_id).get("step", 0) >= 1, what="first step")
    manager.pause(job_id)
    wait_for(lambda: manager.get(job_id)["state"] == "paused", what="paused")
    paused_at = manager.get(job_id)["step"]
    time.sleep(0.2)
    assert manager.get(job_id)["step"] == paused_at
    manager.save_now(job_id)
    manager.sample_now(job_id)
    manager.unpause(job_id)
    wait_for(lambda: manager.get(job_id)["step"] > paused_at, what="steps after resume")
    kinds = [e["kind"] for e in read_events(jobs_dir / job_id)[0] if e["kind"] != "progress"]
    assert kinds == ["state", "save", "sample"]  # the manager records the start
    manager.stop(job_id)
    manager.wait(job_id, timeout_s=10)


def test_queue_runs_one_job_at_a_time_oldest_first(make_manager):
    manager = make_manager(max_running=1)
    long_job = manager.create(fake_job(), "long")
    second = manager.create(fake_job(steps=3), "second")
    third = manager.create(fake_job(steps=3), "third")
    assert [job["id"] for job in manager.list_jobs()] == [third, second, long_job]  # newest first

    assert manager.start_pending() == [long_job]
    assert manager.start_pending() == []
    assert manager.get(second)["state"] == "queued"

    manager.stop(third)  # a queued job is cancelled without ever running
    assert manager.get(third)["state"] == "stopped"
    manager.stop(long_job)
    manager.wait(long_job, timeout_s=10)
    assert manager.start_pending() == [second]
    job = manager.wait(second, timeout_s=10)
    assert (job["state"], job["step"]) == ("done", 3)
    assert manager.start_pending() == []
    assert read_pid_file(manager.job_dir(third)) is None


def test_restarted_manager_sees_running_job_and_stops_it(make_manager, jobs_dir, tmp_path):
    # The first manager lives in another process, killed with its whole process group like a UI whose
    # terminal was closed: the worker, in its own session, must live on.
    ui = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from trainer.jobs import JobManager
        manager = JobManager({str(jobs_dir)!r}, worker_cmd=[sys.executable, {str(tmp_path / 'fake_worker.py')!r},
                                                          "{{job_toml}}", "{{job_dir}}"])
        job_id = manager.create({fake_job()!r}, "survivor")
        manager.start_pending()
        print(job_id, flush=True)
        time.sleep(60)
    """)
    make_manager()  # writes the fake worker script
    first_ui = subprocess.Popen([sys.executable, "-c", ui], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        job_id = first_ui.stdout.readline().strip()
    finally:
        os.killpg(first_ui.pid, signal.SIGKILL)
        first_ui.wait()
    assert job_id

    manager = make_manager()
    step = wait_for(lambda: manager.get(job_id).get("step"), what="progress after the UI died")
    wait_for(lambda: manager.get(job_id)["step"] > step, what="progress seen by the new manager")
    assert [job["state"] for job in manager.list_jobs()] == ["running"]
    assert manager.start_pending() == []  # the running job holds the only slot
    manager.stop(job_id)
    assert manager.wait(job_id, timeout_s=10)["state"] == "stopped"
    assert "got stop" in manager.log_tail(job_id)


def test_crashing_worker_is_failed_with_the_end_of_its_log(make_manager):
    manager = make_manager()
    job_id = manager.create(fake_job(crash_at=2), "crash")
    manager.start_pending()
    job = manager.wait(job_id, timeout_s=10)
    assert job["state"] == "failed"
    assert job["error"].startswith("worker exited with code 1")
    assert "RuntimeError: boom at step 2" in job["error"]
    assert read_status(manager.job_dir(job_id))["error"] == job["error"]  # written back


def test_sigkilled_worker_is_failed_after_restart(make_manager, jobs_dir):
    manager = make_manager()
    job_id = manager.create(fake_job(), "killed")
    manager.start_pending()
    wait_for(lambda: manager.get(job_id).get("step", 0) >= 1, what="first step")
    job_dir = jobs_dir / job_id
    assert kill_worker([read_pid_file(job_dir)], job_dir)

    restarted = make_manager()
    job = restarted.get(job_id)
    assert (job["state"], job["error"]) == ("failed", UNEXPECTED_STOP)
    assert read_status(job_dir)["state"] == "failed"
    assert read_events(job_dir)[0][-1]["kind"] == "state"


def test_liveness_rules_without_a_live_worker(make_manager, jobs_dir):
    manager = make_manager(heartbeat_timeout_s=5)
    reused, fresh, stale = (manager.create(fake_job(), name) for name in ("reused", "fresh", "stale"))
    now = time.time()
    # A live pid that runs something else (here: this test) is not the worker: the pid was reused.
    patch_status(jobs_dir / reused, state="running", pid=os.getpid(), heartbeat_at=now)
    # No pid known yet (a manager died while starting the worker): the heartbeat decides.
    patch_status(jobs_dir / fresh, state="running", heartbeat_at=now)
    patch_status(jobs_dir / stale, state="running", heartbeat_at=now - 60)
    assert manager.get(reused)["state"] == "failed"
    assert manager.get(fresh)["state"] == "running"
    assert (manager.get(stale)["state"], manager.get(stale)["error"]) == ("failed", UNEXPECTED_STOP)


def test_stop_kills_a_worker_that_ignores_it_after_the_grace_period(make_manager, jobs_dir):
    manager = make_manager(stop_grace_s=0.5)
    job_id = manager.create(fake_job(ignore_stop=True), "stubborn")
    manager.start_pending()
    wait_for(lambda: manager.get(job_id).get("step", 0) >= 1, what="first step")
    pid = read_pid_file(jobs_dir / job_id)
    manager.stop(job_id)
    job = manager.wait(job_id, timeout_s=10)
    assert job["state"] == "stopped" and "did not stop within" in job["error"]
    assert "got stop" in manager.log_tail(job_id)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_status_writes_are_atomic_for_a_polling_reader(tmp_path):
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from trainer.jobs import StatusWriter
        status = StatusWriter({str(tmp_path)!r})
        for step in range(1500):
            status.update(step=step, outputs=[f"output/file-{{i}}-{{step}}.safetensors" for i in range(300)])
    """)
    process = subprocess.Popen([sys.executable, "-c", writer])
    reads = bad = 0
    steps = []
    try:
        while process.poll() is None:
            try:
                text = (tmp_path / "status.json").read_text()
            except FileNotFoundError:
                continue
            reads += 1
            try:
                steps.append(json.loads(text)["step"])
            except json.JSONDecodeError:
                bad += 1
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert bad == 0 and reads > 50 and len(set(steps)) > 10
    assert steps == sorted(steps)
    assert read_status(tmp_path)["step"] == 1499


def test_status_writer_merges_stamps_and_can_be_disabled(tmp_path):
    patch_status(tmp_path, id="x", name="kept", state="running")
    writer = StatusWriter(tmp_path)
    writer.update(phase="training", step=3)
    writer.update(state="done")
    status = read_status(tmp_path)
    assert (status["name"], status["phase"], status["step"], status["pid"]) == ("kept", "training", 3, os.getpid())
    assert status["heartbeat_at"] == status["updated_at"] and status["finished_at"] >= status["started_at"]
    with pytest.raises(ValueError):
        writer.update(state="exploded")
    with pytest.raises(ValueError):
        writer.event("gossip")

    other_rank = tmp_path / "rank1"
    other_rank.mkdir()
    silent = StatusWriter(other_rank, enabled=False)
    silent.update(step=1)
    silent.event("progress", step=1)
    silent.heartbeat()
    assert list(other_rank.iterdir()) == []


def test_read_events_leaves_a_partial_last_line(tmp_path):
    writer = StatusWriter(tmp_path)
    writer.event("phase", phase="caching")
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('{"kind": "progress", "st')  # a write in flight
    events, next_line = read_events(tmp_path)
    assert [e["kind"] for e in events] == ["phase"] and next_line == 1
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('ep": 5}\n')
    writer.event("save", path="a.safetensors")
    events, next_line = read_events(tmp_path, since_line=next_line)
    assert [(e["kind"], e.get("step")) for e in events] == [("progress", 5), ("save", None)] and next_line == 3
    assert read_events(tmp_path, since_line=3) == ([], 3)


def test_control_files_arrive_in_order_once(tmp_path):
    for command in ("pause", "save", "resume", "stop"):
        send(tmp_path, command)
    assert ControlChannel(tmp_path, enabled=False).poll() == []  # other ranks leave the files to rank 0
    channel = ControlChannel(tmp_path)
    assert channel.poll() == ["pause", "save", "resume", "stop"]
    assert channel.poll() == []
    with pytest.raises(ValueError):
        send(tmp_path, "explode")


def test_signals_become_commands_and_a_second_ctrl_c_interrupts(tmp_path):
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    channel = ControlChannel(tmp_path)
    try:
        channel.install_signal_handlers()
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), sig)
            time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert channel.poll() == ["save", "stop", "stop"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_log_tail_shows_the_last_state_of_progress_bars(make_manager, jobs_dir):
    manager = make_manager()
    job_id = manager.create(fake_job(), "log")
    (jobs_dir / job_id / "log.txt").write_text("line 1\nline 2\rsteps 10%\rsteps 20%\nline 3\n")
    assert manager.log_tail(job_id, 2) == "steps 20%\nline 3"
    assert manager.log_tail(job_id, 10) == "line 1\nsteps 20%\nline 3"


def test_bad_job_files_are_refused(make_manager):
    manager = make_manager()
    with pytest.raises(JobFileError, match="not valid TOML"):
        manager.create("method = [", "broken")
    with pytest.raises(JobFileError, match="training.num_processes"):
        manager.create("[training]\nnum_processes = 0\n", "zero")
    assert manager.list_jobs() == []


def test_worker_commands_for_one_and_several_processes(tmp_path):
    job_toml = tmp_path / "job.toml"
    job_toml.write_text('[training]\nmixed_precision = "bf16"\n')
    assert default_worker_command(job_toml, tmp_path) == [
        sys.executable, "-m", "trainer", "run", str(job_toml), "--job-dir", str(tmp_path)]

    job_toml.write_text('[training]\nnum_processes = 2\nmixed_precision = "bf16"\n')
    command = default_worker_command(job_toml, tmp_path)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    from accelerate.commands.launch import launch_command_parser  # the real launcher must accept the flags
    args = launch_command_parser().parse_args(command[3:])
    assert (args.multi_gpu, args.num_processes, args.num_machines, args.mixed_precision) == (True, 2, 1, "bf16")
    assert args.main_process_port == 0  # a free port: another distributed run may hold the default 29500
    assert args.module and args.training_script == "trainer"
    assert args.training_script_args == ["run", str(job_toml), "--job-dir", str(tmp_path)]


# --- damaged job files: every reader tolerates them, the damage is shown and repaired -----------------------
def write_raw(path: Path, text: str) -> None:
    path.write_text(text)


def test_damaged_status_files_show_as_damaged_are_rewritten_and_the_queue_goes_on(make_manager, jobs_dir):
    manager = make_manager()
    not_json, wrong_types, not_object, fine = (manager.create(fake_job(steps=3, step_s=0.01), name)
                                               for name in ("not json", "wrong types", "not object", "fine"))
    write_raw(jobs_dir / not_json / "status.json", '{"state": "runn')
    with open(jobs_dir / not_json / "events.jsonl", "a") as f:  # its history says it was stopped at step 4
        f.write(json.dumps({"kind": "progress", "time": 1.0, "step": 4}) + "\n")
        f.write(json.dumps({"kind": "state", "time": 2.0, "state": "cancelled"}) + "\n")  # the old word
    status = json.loads((jobs_dir / wrong_types / "status.json").read_text())
    write_raw(jobs_dir / wrong_types / "status.json",
              json.dumps({**status, "state": "done", "step": "5", "error": 5, "created_at": "yesterday"}))
    write_raw(jobs_dir / not_object / "status.json", "[1, 2, 3]")
    with open(jobs_dir / not_object / "events.jsonl", "a") as f:
        f.write(json.dumps({"kind": "state", "time": 2.0, "state": "done", "step": 7}) + "\n")

    jobs = {job["id"]: job for job in manager.list_jobs()}  # does not raise, lists all four
    assert len(jobs) == 4 and "damaged" not in jobs[fine]
    assert "status.json cannot be read" in jobs[not_json]["damaged"]
    assert (jobs[not_json]["state"], jobs[not_json]["step"]) == ("stopped", 4)  # rebuilt from events.jsonl
    assert "step = '5' is not a whole number" in jobs[wrong_types]["damaged"]
    assert "error = 5 is not text" in jobs[wrong_types]["damaged"]
    assert (jobs[wrong_types]["state"], jobs[wrong_types]["step"], jobs[wrong_types]["error"]) == ("done", 0, None)
    assert isinstance(jobs[wrong_types]["created_at"], float)  # from the id, so sorting still works
    assert "holds list, not an object" in jobs[not_object]["damaged"]
    assert (jobs[not_object]["state"], jobs[not_object]["step"]) == ("done", 7)

    # no worker writes these jobs, so the manager rewrote each status from what it knew, and said so
    for job_id in (not_json, wrong_types, not_object):
        assert isinstance(json.loads((jobs_dir / job_id / "status.json").read_text()), dict)
        assert load_status(jobs_dir / job_id)[1] == []  # a good file now ...
        assert manager.get(job_id)["damaged"].endswith("(rewritten by the job manager)")  # ... that says why
        warnings = [e for e in read_events(jobs_dir / job_id)[0] if e["kind"] == "warning"]
        assert warnings and "status.json was damaged" in warnings[-1]["message"]
    # the one queued job still starts and finishes
    assert manager.start_pending() == [fine]
    assert manager.wait(fine, timeout_s=20)["state"] == "done"


def test_a_corrupt_status_while_the_worker_runs_is_rewritten_by_the_worker(make_manager, jobs_dir):
    manager = make_manager()
    job_id = manager.create(fake_job(step_s=0.05), "runs")
    manager.start_pending()
    job_dir = jobs_dir / job_id
    wait_for(lambda: (manager.get(job_id).get("step") or 0) >= 2, what="steps")
    write_raw(job_dir / "status.json", "garbage {")
    with open(job_dir / "events.jsonl", "a") as events:
        events.write('[1]\n"not an event"\n')
    seen = manager.get(job_id)  # does not raise, and does not settle the running job
    assert seen["state"] in ("running", "stopping") or "damaged" not in seen
    repaired = wait_for(lambda: (s := read_status(job_dir)) and "damaged" not in s and s, what="the rewrite")
    assert repaired["state"] == "running" and repaired["name"] == "runs"  # the worker kept what it knew
    before = repaired["step"]
    wait_for(lambda: manager.get(job_id)["step"] > before, what="more steps")
    assert all(isinstance(e, dict) for e in read_events(job_dir)[0])
    manager.stop(job_id)
    assert manager.wait(job_id, timeout_s=10)["state"] == "stopped"


def test_bad_event_lines_are_skipped_and_the_feed_reads_only_what_was_appended(tmp_path):
    from trainer.jobs import EventFeed

    writer = StatusWriter(tmp_path)
    writer.event("progress", step=1, loss=0.5)
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('[1, 2]\n"text"\n5\n{"kind": 5}\nnot json\n' + "[" * 50000 + "\n")
    writer.event("progress", step=2, loss=0.4)
    events, next_line = read_events(tmp_path)
    assert [e["step"] for e in events] == [1, 2] and next_line == 8

    feed = EventFeed(tmp_path)
    assert [e["step"] for e in feed.new_events()] == [1, 2] and not feed.restarted
    assert feed.new_events() == []
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('{"kind": "progress", "step": 3')  # being written
    assert feed.new_events() == []
    offset = feed.offset
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write("}\n")
    assert [e["step"] for e in feed.new_events()] == [3] and feed.offset > offset
    (tmp_path / "events.jsonl").unlink()  # replaced by a new file: start again, and say so
    StatusWriter(tmp_path).event("progress", step=9)
    assert [e["step"] for e in feed.new_events()] == [9] and feed.restarted


def test_a_worker_survives_odd_control_entries_and_a_garbled_stop_request(make_manager, jobs_dir):
    manager = make_manager(stop_grace_s=60)
    job_id = manager.create(fake_job(step_s=0.05), "odd control")
    job_dir = jobs_dir / job_id
    manager.start_pending()
    wait_for(lambda: (manager.get(job_id).get("step") or 0) >= 1, what="steps")
    (job_dir / "control" / f"{0:020d}-1-000000-stop.cmd").mkdir()  # a folder named like a command
    (job_dir / "control" / "junk-without-command.cmd").write_text("?")
    before = manager.get(job_id)["step"]
    wait_for(lambda: manager.get(job_id)["step"] > before + 2, what="steps after the odd entries")
    assert manager.get(job_id)["state"] == "running"  # the folder was not taken for a stop, nor fatal
    write_raw(job_dir / "stop_requested", "not a number")
    assert manager.get(job_id)["state"] == "running"  # polling still works
    manager.pause(job_id)  # and commands still arrive
    wait_for(lambda: manager.get(job_id)["state"] == "paused", what="pause")
    manager.stop(job_id)
    assert manager.wait(job_id, timeout_s=10)["state"] == "stopped"
    assert (job_dir / "control" / f"{0:020d}-1-000000-stop.cmd").is_dir()  # left alone


def test_long_ids_and_unreadable_job_files_do_not_break_the_others(make_manager, jobs_dir):
    from trainer.jobs import UnknownJobError

    manager = make_manager()
    with pytest.raises(UnknownJobError, match="job id 'aaaa.*is too long"):
        manager.get("a" * 300)
    with pytest.raises(UnknownJobError, match="must not contain '/'"):
        manager.get("../x")
    odd = jobs_dir / ("b" * 230)  # the file system holds it; Kiln never makes such ids
    odd.mkdir()
    (odd / "job.toml").write_text(fake_job())
    bad_toml, bad_table, good = (manager.create(fake_job(steps=2, step_s=0.01), name)
                                 for name in ("bad bytes", "bad table", "good"))
    (jobs_dir / bad_toml / "job.toml").write_bytes(b"method = \"\xff\xfe\"\n")
    (jobs_dir / bad_table / "job.toml").write_text("training = 5\n")
    listed = {job["id"]: job for job in manager.list_jobs()}
    assert "too long" in listed[odd.name]["damaged"] and listed[odd.name]["state"] is None
    manager = make_manager()  # another app on the same folder: it reads each job.toml when it starts the job
    assert manager.start_pending() == [good]  # the two broken ones failed alone; the good one took its turn
    assert "cannot be read" in manager.get(bad_toml)["error"]
    assert "training = 5 must be a table" in manager.get(bad_table)["error"]


def test_continue_only_where_there_is_something_to_continue(make_manager, jobs_dir):
    from trainer.jobs import JobError

    manager = make_manager()
    done, stopped_saved, stopped_unsaved = (manager.create(fake_job(), name) for name in ("d", "s", "u"))
    patch_status(jobs_dir / done, state="done", step=10, total_steps=10)
    for job_id in (stopped_saved, stopped_unsaved):
        patch_status(jobs_dir / job_id, state="cancelled", step=4)  # an old status file's word for "stopped"
    (jobs_dir / stopped_saved / "state" / "step00000004").mkdir()
    (jobs_dir / stopped_saved / "state" / "step00000004" / "state.pt").write_bytes(b"x")

    assert manager.get(stopped_saved)["state"] == "stopped"
    before = (jobs_dir / done / "status.json").read_bytes()
    allowed, reason = manager.can_continue(manager.get(done))
    assert not allowed and "is done" in reason
    with pytest.raises(JobError, match="is done"):
        manager.continue_job(done)
    assert (jobs_dir / done / "status.json").read_bytes() == before  # a done job never changes
    assert not (jobs_dir / done / "resume_requested").exists()
    assert manager.can_continue(stopped_unsaved) == (
        False, f"job {stopped_unsaved} saved no training state to continue from; start a new job instead")
    assert manager.can_continue(stopped_saved)[0]
    manager.continue_job(stopped_saved)
    assert manager.get(stopped_saved)["state"] == "queued"
    assert (jobs_dir / stopped_saved / "resume_requested").exists()
    assert not manager.can_continue(stopped_saved)[0]  # queued now


def test_the_queue_runs_by_itself_for_jobs_queued_anywhere_never_two_at_once(make_manager, jobs_dir):
    from trainer.jobs import QueueScheduler

    app_manager, other_app, cli = make_manager(), make_manager(), make_manager()
    first = app_manager.create(fake_job(steps=8, step_s=0.02), "first")
    second = cli.create(fake_job(steps=8, step_s=0.02), "second")  # queued by someone else
    schedulers = [QueueScheduler(app_manager, interval_s=0.05).start(),
                  QueueScheduler(other_app, interval_s=0.05).start()]
    try:
        third = cli.create(fake_job(steps=8, step_s=0.02), "third")
        for job_id in (first, second, third):
            assert cli.wait(job_id, timeout_s=30)["state"] == "done"
    finally:
        for scheduler in schedulers:
            scheduler.stop()
    runs = sorted((read_status(jobs_dir / j)["started_at"], read_status(jobs_dir / j)["finished_at"])
                  for j in (first, second, third))
    assert all(end <= next_start for (_, end), (next_start, _) in zip(runs, runs[1:])), runs
    starts = [line for j in (first, second, third) for line in (jobs_dir / j / "log.txt").read_text().splitlines()
              if line.startswith("=== kiln worker started")]
    assert len(starts) == 3  # each started once, by one of the two schedulers


def test_a_job_is_parsed_once_in_the_process_that_creates_and_starts_it(make_manager, jobs_dir, monkeypatch):
    import tomllib

    from trainer.jobs import launch

    text = fake_job(steps=2, step_s=0.01)
    parses = []
    real_loads = tomllib.loads
    monkeypatch.setattr(launch.tomllib, "loads", lambda s: parses.append(s) or real_loads(s))
    manager = make_manager()
    mine = manager.create(text, "validated by the caller", parsed=real_loads(text))
    assert manager.start_pending() == [mine] and parses == []  # the caller's parse is the only one
    manager.wait(mine, timeout_s=20)
    queued_elsewhere = make_manager().create(text, "queued by another process")
    assert len(parses) == 1  # that process checked it
    assert manager.start_pending() == [queued_elsewhere] and len(parses) == 2  # read once where it starts
    with pytest.raises(JobFileError, match="training.num_processes"):
        manager.create("", "bad", parsed={"training": {"num_processes": 0}})  # still checked, once
    manager.wait(queued_elsewhere, timeout_s=20)
