"""JobManager: the UI's side. Creates job folders, runs a queue of detached workers, watches them through
their files and pids, and sends them commands. Any number of managers (an app restart, a second window) can
look at the same jobs folder; nothing is kept only in memory."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from . import control
from .errors import JobError, JobFileError, UnknownJobError
from ..atomic import write_folder_atomically, write_text_atomic
from .files import tail_lines
from .launch import default_worker_command, num_processes, read_job_toml, worker_environment
from .process import kill_worker, pid_runs_job
from .status import FINAL_STATES, INITIAL_STATUS, LIVE_STATES, append_event, patch_status, read_status

JOB_FILE = "job.toml"
LOG_FILE = "log.txt"
PID_FILE = "worker.pid"
STOP_REQUEST_FILE = "stop_requested"  # when a stop was asked for: after the grace period the worker is killed
RESUME_FLAG_FILE = "resume_requested"  # the next start of this job continues from its newest saved state
JOB_SUBFOLDERS = ("samples", "output", "state", control.CONTROL_DIR)
QUEUE_LOCK_FILE = ".queue.lock"
UNEXPECTED_STOP = "worker stopped unexpectedly (see log.txt)"
ERROR_LOG_LINES = 15
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # `python -m trainer` must run from here


class JobManager:
    """`worker_cmd` replaces the default worker command line (tests use a fake worker); its items may hold
    the placeholders {job_toml} and {job_dir}, and it must name the job folder, which is how a restarted
    manager recognises the worker's process."""

    def __init__(self, jobs_dir: str | os.PathLike, worker_cmd: Sequence[str] | None = None,
                 max_running: int = 1, stop_grace_s: float = 120.0, heartbeat_timeout_s: float = 60.0):
        self.jobs_dir = Path(jobs_dir).resolve()
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.worker_cmd = list(worker_cmd) if worker_cmd is not None else None
        self.max_running = max_running
        self.stop_grace_s = stop_grace_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._children: dict[str, subprocess.Popen] = {}  # workers this instance started, to read exit codes

    # --- creating and listing ----------------------------------------------------------------------------
    def create(self, toml_text: str, name: str) -> str:
        """A new queued job holding `toml_text` as its job.toml; returns its id. The folder is built under a
        hidden name and renamed into place, so no reader sees a half-made job."""
        job = read_job_toml(toml_text, f"job {name!r}")
        num_processes(job, f"job {name!r}")
        now = time.time()
        stamp = datetime.fromtimestamp(now, timezone.utc)
        base = f"{stamp:%Y%m%d-%H%M%S}-{stamp.microsecond // 1000:03d}-{slugify(name)}"

        def write(folder: Path, job_id: str) -> None:
            for sub in JOB_SUBFOLDERS:
                (folder / sub).mkdir()
            write_text_atomic(folder / JOB_FILE, toml_text)
            patch_status(folder, **INITIAL_STATUS, id=job_id, name=name, created_at=now)

        for attempt in range(1, 1000):
            job_id = base if attempt == 1 else f"{base}-{attempt}"
            try:
                write_folder_atomically(self.jobs_dir / job_id, lambda folder: write(folder, job_id))
                return job_id
            except OSError:  # another job took the id: try the next
                if not (self.jobs_dir / job_id).exists():
                    raise
        raise JobError(f"could not find a free job id for {name!r} in {self.jobs_dir}")

    def list_jobs(self) -> list[dict]:
        """Every job's status plus id, name, created_at, job_dir, worker_pid and heartbeat_age_s, newest first."""
        jobs = [self.get(job_id) for job_id in self._job_ids()]
        return sorted(jobs, key=lambda job: (job.get("created_at") or 0, job["id"]), reverse=True)

    def get(self, job_id: str) -> dict:
        """One job's status, brought up to date: a worker that has gone is settled as done/failed/cancelled,
        and a stop past its grace period is enforced."""
        job_dir = self.job_dir(job_id)
        status = self._refresh(job_id, job_dir)
        heartbeat = status.get("heartbeat_at")
        return {**status, "id": job_id, "name": status.get("name", job_id), "job_dir": str(job_dir),
                "worker_pid": read_pid_file(job_dir),
                "heartbeat_age_s": time.time() - heartbeat if heartbeat else None}

    def job_dir(self, job_id: str) -> Path:
        if not job_id or job_id.startswith(".") or Path(job_id).name != job_id:
            raise UnknownJobError(f"not a job id: {job_id!r}")
        job_dir = self.jobs_dir / job_id
        if not (job_dir / JOB_FILE).is_file():
            raise UnknownJobError(f"no job {job_id!r} in {self.jobs_dir}")
        return job_dir

    def log_tail(self, job_id: str, n: int = 50) -> str:
        """The last `n` lines of the job's log.txt (the worker's stdout and stderr)."""
        return "\n".join(tail_lines(self.job_dir(job_id) / LOG_FILE, n))

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 0.1) -> dict:
        """Block until the job reaches done, failed or cancelled; JobError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.get(job_id)
            if status.get("state") in FINAL_STATES:
                return status
            if time.monotonic() > deadline:
                raise JobError(f"job {job_id} is still {status.get('state')} after {timeout_s:g} s")
            time.sleep(poll_s)

    # --- the queue ---------------------------------------------------------------------------------------
    def start_pending(self) -> list[str]:
        """Start the oldest queued jobs while fewer than max_running are live; returns the ids started.
        Call it on a timer and after every change. A lock file keeps two managers from both starting."""
        with self._queue_lock():
            jobs = [self.get(job_id) for job_id in self._job_ids()]
            live = sum(job.get("state") in LIVE_STATES for job in jobs)
            queued = sorted((job for job in jobs if job.get("state") == "queued"),
                            key=lambda job: (job.get("created_at") or 0, job["id"]))
            started = []
            for job in queued[: max(0, self.max_running - live)]:
                self._spawn(job["id"])
                started.append(job["id"])
            return started

    # --- controls ----------------------------------------------------------------------------------------
    def stop(self, job_id: str) -> dict:
        """A queued job is cancelled at once. A live one is asked to stop (finish its step, save, exit);
        if it is still running `stop_grace_s` later, the next look at it kills it."""
        job_dir = self.job_dir(job_id)
        with self._queue_lock():  # a queued job must not be started while it is being cancelled
            state = self._refresh(job_id, job_dir).get("state")
            if state == "queued":
                self._settle(job_dir, state="cancelled")
            elif state in LIVE_STATES:
                control.send(job_dir, "stop")
                if not (job_dir / STOP_REQUEST_FILE).exists():
                    write_text_atomic(job_dir / STOP_REQUEST_FILE, f"{time.time()}\n", durable=False)
        return self.get(job_id)

    def requeue(self, job_id: str) -> dict:
        """Queue a stopped, failed or finished training job again; its worker continues from the newest saved
        state (`trainer run --resume`), or starts over when none was saved."""
        job_dir = self.job_dir(job_id)
        status = self.get(job_id)
        if status.get("state") in LIVE_STATES:
            raise JobError(f"job {job_id} is {status.get('state')}; only an ended job can be continued")
        write_text_atomic(job_dir / RESUME_FLAG_FILE, "resume\n")
        status = patch_status(job_dir, state="queued", error=None)
        append_event(job_dir, "state", state="queued", by="job manager", resume=True)
        return status

    def pause(self, job_id: str) -> None:
        self._command(job_id, "pause")

    def resume(self, job_id: str) -> None:
        self._command(job_id, "resume")

    def save_now(self, job_id: str) -> None:
        self._command(job_id, "save")

    def sample_now(self, job_id: str) -> None:
        self._command(job_id, "sample")

    def _command(self, job_id: str, command: str) -> None:
        state = self.get(job_id).get("state")
        if state not in ("running", "paused"):
            raise JobError(f"job {job_id} is {state}; {command!r} needs a running or paused job")
        control.send(self.job_dir(job_id), command)

    # --- workers -----------------------------------------------------------------------------------------
    def _spawn(self, job_id: str) -> None:
        job_dir = self.jobs_dir / job_id
        job_toml = job_dir / JOB_FILE
        (job_dir / STOP_REQUEST_FILE).unlink(missing_ok=True)
        control.clear(job_dir)
        try:
            command = self._worker_command(job_toml, job_dir)
        except JobFileError as exc:
            self._settle(job_dir, state="failed", error=str(exc))
            return
        if (job_dir / RESUME_FLAG_FILE).exists():
            command.append("--resume")
            (job_dir / RESUME_FLAG_FILE).unlink()
        # Written before the worker starts: afterwards only the worker writes status.json.
        patch_status(job_dir, state="running", phase="loading", heartbeat_at=time.time(), pid=None)
        with open(job_dir / LOG_FILE, "ab") as log:
            log.write(f"=== kiln worker started {datetime.now():%Y-%m-%d %H:%M:%S}: {' '.join(command)}\n"
                      .encode())
            log.flush()
            try:
                child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=PROJECT_ROOT, env=worker_environment(command),
                                         start_new_session=True)  # outlives the UI; Ctrl-C there misses it
            except OSError as exc:
                self._settle(job_dir, state="failed", error=f"could not start the worker: {exc}")
                return
        self._children[job_id] = child
        write_text_atomic(job_dir / PID_FILE, f"{child.pid}\n", durable=False)  # meaningless after a reboot

    def _worker_command(self, job_toml: Path, job_dir: Path) -> list[str]:
        if self.worker_cmd is None:
            return default_worker_command(job_toml, job_dir)
        return [part.format(job_toml=job_toml, job_dir=job_dir) for part in self.worker_cmd]

    def _refresh(self, job_id: str, job_dir: Path) -> dict:
        status = read_status(job_dir)
        if status.get("state") not in LIVE_STATES:
            return status
        child = self._children.get(job_id)
        if child is not None:
            exit_code = child.poll()
            if exit_code is None:
                return self._enforce_stop_deadline(job_dir, status)
            del self._children[job_id]
            return self._settle_exited(job_dir, exit_code)
        if self._worker_alive(job_dir, status):
            return self._enforce_stop_deadline(job_dir, status)
        return self._settle_exited(job_dir, exit_code=None)

    def _worker_alive(self, job_dir: Path, status: dict) -> bool:
        """The launcher's pid (worker.pid) or the status writer's pid (rank 0) still runs this job. With no
        pid known yet (a manager that died while starting the worker), a fresh heartbeat counts as alive."""
        pids = worker_pids(job_dir, status)
        if pids:
            return any(pid_runs_job(pid, job_dir) for pid in pids)
        heartbeat = status.get("heartbeat_at") or 0
        return time.time() - heartbeat < self.heartbeat_timeout_s

    def _enforce_stop_deadline(self, job_dir: Path, status: dict) -> dict:
        try:
            asked_at = float((job_dir / STOP_REQUEST_FILE).read_text())
        except FileNotFoundError:
            return status
        if time.time() - asked_at < self.stop_grace_s:
            return status
        kill_worker(worker_pids(job_dir, status), job_dir)
        child = self._children.pop(job_dir.name, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)  # reap it, so no zombie is left behind
        return self._settle(job_dir, state="cancelled",
                            error=f"the worker did not stop within {self.stop_grace_s:g} s and was killed; "
                                  "work since its last save is lost")

    def _settle_exited(self, job_dir: Path, exit_code: int | None) -> dict:
        """Give a job whose worker has gone a final state, unless the worker wrote one on its way out."""
        status = read_status(job_dir)  # read again: the final write may have landed just before the exit
        if status.get("state") not in LIVE_STATES:
            return status
        stop_asked = (job_dir / STOP_REQUEST_FILE).exists()
        if exit_code == 0:
            return self._settle(job_dir, state="cancelled" if stop_asked else "done")
        if exit_code is None:
            return self._settle(job_dir, state="failed", error=UNEXPECTED_STOP)
        if exit_code < 0:
            cause = f"worker was killed by {signal.Signals(-exit_code).name}"
        else:
            cause = f"worker exited with code {exit_code}"
        tail = tail_lines(job_dir / LOG_FILE, ERROR_LOG_LINES)
        error = f"{cause}; last lines of log.txt:\n" + "\n".join(tail) if tail else cause
        return self._settle(job_dir, state="failed", error=error)

    def _settle(self, job_dir: Path, state: str, error: str | None = None) -> dict:
        status = patch_status(job_dir, state=state, error=error)
        append_event(job_dir, "state", state=state, error=error, by="job manager")
        return status

    def _job_ids(self) -> list[str]:
        return sorted(p.name for p in self.jobs_dir.iterdir()
                      if not p.name.startswith(".") and (p / JOB_FILE).is_file())

    @contextlib.contextmanager
    def _queue_lock(self) -> Iterator[None]:
        with open(self.jobs_dir / QUEUE_LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def read_pid_file(job_dir: Path) -> int | None:
    try:
        return int((job_dir / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def worker_pids(job_dir: Path, status: dict) -> list[int]:
    return [pid for pid in (read_pid_file(job_dir), status.get("pid")) if pid]


def slugify(name: str, max_len: int = 40) -> str:
    """A folder-safe form of a job name: lower-case letters, digits and dashes ("job" when nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:max_len].strip("-")
    return slug or "job"
