"""Job folders damaged under a live worker (issue 25): a link in jobs/ pointing at a running job, and a running
job whose job.toml was deleted. The worker is a real detached process (the fake worker of test_jobs.py, which
writes status and events and obeys Stop as `trainer run` does)."""
from __future__ import annotations

import time

import pytest

from tests.helpers import wait_for
from tests.test_jobs import fake_job, jobs_dir, make_manager  # noqa: F401  (fixtures)
from trainer.jobs import JobError, QueueScheduler, read_events, read_status


def running_job(manager, name: str = "live") -> str:
    job_id = manager.create(fake_job(steps=100_000, step_s=0.02), name)
    assert manager.start_pending() == [job_id]
    wait_for(lambda: manager.get(job_id).get("step", 0) >= 2, timeout_s=60, what="the worker's first steps")
    return job_id


def test_a_link_to_a_running_job_is_listed_as_damaged_and_never_acted_on(make_manager, jobs_dir):
    manager = make_manager()
    live = running_job(manager)
    link = jobs_dir / "zz-link"
    link.symlink_to(jobs_dir / live)
    events_before = len(read_events(jobs_dir / live)[0])
    scheduler = QueueScheduler(make_manager(), interval_s=0.05).start()  # the app's queue thread, fresh manager
    try:
        time.sleep(1.0)  # twenty ticks
        for viewer in (manager, make_manager()):  # the manager that started it, and one after an app restart
            listed = {job["id"]: job for job in viewer.list_jobs()}
            assert "link" in listed["zz-link"]["damaged"] and listed["zz-link"]["state"] is None
            assert listed[live]["state"] == "running" and "damaged" not in listed[live]
            for act in (viewer.stop, viewer.continue_job, viewer.pause, viewer.save_now, viewer.delete,
                        lambda job_id: viewer.rename(job_id, "renamed")):
                with pytest.raises(JobError, match="is a link"):
                    act("zz-link")
    finally:
        scheduler.stop()
    status = read_status(jobs_dir / live)
    assert status["state"] == "running" and status["error"] is None, status
    new_events = read_events(jobs_dir / live)[0][events_before:]
    assert not [e for e in new_events if e["kind"] != "progress"], new_events  # nothing but the worker's steps
    assert link.is_symlink() and not (jobs_dir / live / "title.txt").exists()
    assert not (jobs_dir / live / "stop_requested").exists() and not list((jobs_dir / live / "control").iterdir())
    manager.stop(live)
    assert manager.wait(live, timeout_s=30)["state"] == "stopped"


def test_a_running_job_whose_job_toml_was_deleted_stays_visible_stoppable_and_counted(make_manager, jobs_dir):
    manager = make_manager()
    live = running_job(manager)
    (jobs_dir / live / "job.toml").unlink()
    waiting = manager.create(fake_job(steps=2, step_s=0.01), "waiting")
    for queue in (manager, make_manager()):  # its own workers, and a restarted app that knows only the pids
        assert queue.start_pending() == [], "a second worker started beside the running one"
        listed = {job["id"]: job for job in queue.list_jobs()}
        assert listed[live]["state"] == "running" and "job.toml is missing" in listed[live]["damaged"]
        assert listed[waiting]["state"] == "queued"
    assert make_manager().stop(live)["state"] in ("running", "stopping", "stopped")
    stopped = wait_for(lambda: (job := manager.get(live))["state"] in ("stopped", "failed") and job,
                       timeout_s=30, what="the worker to stop")
    assert stopped["state"] == "stopped" and "got stop" in manager.log_tail(live, 5)
    assert not manager.can_continue(live)[0]  # nothing to start it from
    assert manager.start_pending() == [waiting]  # now the queue moves on
    assert manager.wait(waiting, timeout_s=30)["state"] == "done"


def test_the_queue_counts_worker_processes_not_what_the_files_say(make_manager, jobs_dir):
    """A restarted app's manager (it started no worker itself) handed statuses that cannot be read still counts
    the live worker, by its pid."""
    manager = make_manager()
    live = running_job(manager)
    restarted = make_manager()
    files_say = [{**job, "state": None, "damaged": "cannot be read"} for job in restarted.list_jobs()]
    assert restarted._live_workers(files_say) == {live}
    manager.stop(live)
    manager.wait(live, timeout_s=30)
    assert restarted._live_workers(files_say) == set()


def test_the_real_worker_behind_a_link_and_without_its_job_toml(tmp_path):
    """The same two cases with `python -m trainer run` training the tiny model: a link to it changes nothing,
    and with its job.toml gone it is listed, holds the queue, and stops (saving first) when asked."""
    from tests.test_worker import job_text
    from trainer.jobs import JobManager

    manager = JobManager(tmp_path / "jobs", stop_grace_s=120)
    live = manager.create(job_text(tmp_path, training={"max_steps": 100_000}), "real worker")
    assert manager.start_pending() == [live]
    try:
        wait_for(lambda: (manager.get(live).get("step") or 0) >= 2, what="training steps")
        (tmp_path / "jobs" / "zz-link").symlink_to(tmp_path / "jobs" / live)
        restarted = JobManager(tmp_path / "jobs")
        for viewer in (manager, restarted):
            listed = {job["id"]: job for job in viewer.list_jobs()}
            assert "is a link" in listed["zz-link"]["damaged"] and listed[live]["state"] == "running"
            with pytest.raises(JobError, match="is a link"):
                viewer.continue_job("zz-link")
        (tmp_path / "jobs" / live / "job.toml").unlink()
        waiting = manager.create(job_text(tmp_path, training={"max_steps": 2}), "waiting")
        assert manager.start_pending() == [] and restarted.start_pending() == []
        assert read_status(tmp_path / "jobs" / live)["state"] == "running"
        restarted.stop(live)
        stopped = wait_for(lambda: (job := manager.get(live))["state"] in ("stopped", "failed") and job,
                           what="the worker to stop")
        assert stopped["state"] == "stopped", stopped
        assert manager.get(waiting)["state"] == "queued"
    finally:
        for job in manager.list_jobs():
            if job["state"] in ("running", "paused", "stopping"):
                manager.stop(job["id"])


def test_a_log_or_title_that_links_outside_the_job_is_not_shown(make_manager, jobs_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("a private key\n")
    manager = make_manager()
    job_id = manager.create(fake_job(steps=1), "linked files")
    manager.stop(job_id)
    (jobs_dir / job_id / "log.txt").symlink_to(secret)
    (jobs_dir / job_id / "title.txt").symlink_to(secret)
    assert "private" not in manager.log_tail(job_id) and "leads outside" in manager.log_tail(job_id)
    assert manager.get(job_id)["title"] == ""


def test_an_evaluation_table_that_links_outside_the_job_is_not_shown(tmp_path):
    from ui.evaluation_panel import evaluation_view

    secret = tmp_path / "secret.md"
    secret.write_text("| a private table |\n")
    job_dir = tmp_path / "job"
    (job_dir / "evaluation").mkdir(parents=True)
    (job_dir / "evaluation" / "metrics.md").symlink_to(secret)
    text, charts = evaluation_view(job_dir)
    assert "private" not in text and "No evaluation yet" in text and charts == []
    (job_dir / "evaluation" / "metrics.md").unlink()
    (job_dir / "evaluation" / "metrics.md").write_text("| step | FID |\n")
    assert evaluation_view(job_dir)[0] == "| step | FID |\n"
