"""JobManager: the UI's side. Creates job folders, runs a queue of detached workers, watches them through
their files and pids, and sends them commands. Any number of managers (an app restart, a second window) can
look at the same jobs folder; nothing is kept only in memory."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from . import control
from ..names import BadName, path_inside
from .errors import JobError, JobFileError, LinkedJobError, UnknownJobError
from ..atomic import write_folder_atomically, write_text_atomic
from .files import tail_lines
from .own_paths import JOB_FILE, JobFolders, inside_job, only_own_paths
from .launch import LaunchPlan, launch_plan, read_job_toml, read_launch_plan, worker_command, worker_environment
from .process import kill_worker, pid_runs_job
from .status import (FINAL_STATES, INITIAL_STATUS, LIVE_STATES, STATUS_FILE, append_event, load_status,
                     patch_status, read_status)

LOG_FILE = "log.txt"
PID_FILE = "worker.pid"
STOP_REQUEST_FILE = "stop_requested"  # when a stop was asked for: after the grace period the worker is killed
RESUME_FLAG_FILE = "resume_requested"  # the next start of this job continues from its newest saved state
JOB_SUBFOLDERS = ("samples", "output", "state", control.CONTROL_DIR)
QUEUE_LOCK_FILE = ".queue.lock"
UNEXPECTED_STOP = "worker stopped unexpectedly (see log.txt)"
MISSING_JOB_FILE = "job.toml is missing: the job cannot be started or continued again"
ERROR_LOG_LINES = 15
WORKER_START_GRACE_S = 10.0  # a worker gets this long to write its first status before its pid must be its own
TITLE_FILE = "title.txt"  # a display title the user gave the job
MAX_TITLE_CHARS = 120
SAVED_STATE = re.compile(r"step(\d{8})")  # state/step00000040/state.pt, as trainer.checkpoint writes them
SAVED_STATE_FILE = "state.pt"
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
        self._lock = threading.RLock()
        self._plans: dict[str, LaunchPlan] = {}  # jobs this instance created, checked already
        self._folders: dict[str, JobFolders] = {}

    # --- creating and listing ----------------------------------------------------------------------------
    def create(self, toml_text: str, name: str, parsed: dict | None = None) -> str:
        """A new queued job holding `toml_text` as its job.toml; returns its id. The folder is built under a
        hidden name and renamed into place, so no reader sees a half-made job. A caller that has already
        parsed the text (the UI's validated config, `.to_dict()`) passes it as `parsed`: it is not parsed
        again, here or when this manager starts the worker."""
        job = parsed if parsed is not None else read_job_toml(toml_text, f"job {name!r}")
        plan = launch_plan(job, f"job {name!r}")
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
                self._plans[job_id] = plan  # job.toml is written once: its plan holds until the start
                return job_id
            except OSError:  # another job took the id: try the next
                if not (self.jobs_dir / job_id).exists():
                    raise
        raise JobError(f"could not find a free job id for {name!r} in {self.jobs_dir}")

    def list_jobs(self) -> list[dict]:
        """Every job's status plus id, name, created_at, job_dir, worker_pid and heartbeat_age_s, newest first.
        A job that cannot be read is listed with `damaged` saying why; it never hides the others."""
        jobs = [self._get_or_damaged(job_id) for job_id in self._job_ids()]
        return sorted(jobs, key=lambda job: (job.get("created_at") or 0, job["id"]), reverse=True)

    def get(self, job_id: str) -> dict:
        """One job's status, brought up to date: a worker that has gone is settled as done/failed/stopped,
        a stop past its grace period is enforced, and a damaged status.json is rewritten from what is known
        (by the worker itself while it runs). `damaged` says what was wrong, while it still is."""
        job_dir = self.job_dir(job_id)
        with self._lock:  # the queue thread and the page's handlers look at the same jobs
            status = self._refresh(job_id, job_dir)
        status = only_own_paths(status, self.folders(job_id))  # a path in status.json is trusted nowhere
        heartbeat = status.get("heartbeat_at")
        if not _is_file(job_dir / JOB_FILE):  # shown, and stoppable while its worker runs; never started again
            status["damaged"] = "; ".join(filter(None, [status.get("damaged"), MISSING_JOB_FILE]))
        if status.get("damaged") is None:
            status.pop("damaged", None)
        return {**status, "id": job_id, "name": status.get("name") or job_id, "title": read_title(job_dir),
                "job_dir": str(job_dir),
                "created_at": status.get("created_at") or created_at_from_id(job_id, job_dir),
                "worker_pid": read_pid_file(job_dir),
                "heartbeat_age_s": time.time() - heartbeat if heartbeat else None}

    def _get_or_damaged(self, job_id: str) -> dict:
        try:
            return self.get(job_id)
        except Exception as exc:  # one unreadable job folder must not break the list, the queue or the page
            job_dir = self.jobs_dir / job_id
            return {**INITIAL_STATUS, "state": None, "id": job_id, "name": job_id, "job_dir": str(job_dir),
                    "created_at": created_at_from_id(job_id, job_dir), "worker_pid": None,
                    "heartbeat_age_s": None, "damaged": f"cannot be read: {type(exc).__name__}: {exc}"}

    def job_dir(self, job_id: str) -> Path:
        try:
            job_dir = path_inside(self.jobs_dir, job_id, "job id")
        except BadName as exc:
            raise UnknownJobError(str(exc)) from None
        if job_dir.is_symlink():  # acting through it would act on another job (or on files elsewhere)
            raise LinkedJobError(f"job folder {job_id!r} is a link (to {os.readlink(job_dir)}), not a job: Kiln "
                                 "never acts on linked job folders; remove the link")
        if not _is_job_folder(job_dir):
            raise UnknownJobError(f"no job {job_id!r} in {self.jobs_dir}")
        return job_dir

    def folders(self, job_id: str) -> JobFolders:
        """Where the job's own files may lie (its folder, the [output] dir and class folders its job.toml names).
        Read once per job: job.toml is written once."""
        if job_id not in self._folders:
            self._folders[job_id] = JobFolders(self.job_dir(job_id))
        return self._folders[job_id]

    def own_files(self, job: dict, paths: list[str]) -> list[str]:
        """The `paths` that are the job's own files: inside its folder or its output folder, links resolved.
        Only these may be handed to a browser, wherever the output folder is."""
        try:
            folders = self.folders(job["id"])
        except JobError:
            folders = JobFolders(Path(job["job_dir"]))
        return [path for path in paths if folders.owns(path)]

    def log_tail(self, job_id: str, n: int = 50) -> str:
        """The last `n` lines of the job's log.txt (the worker's stdout and stderr)."""
        log = inside_job(self.job_dir(job_id), LOG_FILE)
        return "\n".join(tail_lines(log, n)) if log is not None else f"({LOG_FILE} leads outside the job folder)"

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 0.1) -> dict:
        """Block until the job reaches done, failed or stopped; JobError after `timeout_s`."""
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
            jobs = [self._get_or_damaged(job_id) for job_id in self._job_ids()]
            live = len(self._live_workers(jobs))
            queued = sorted((job for job in jobs if job.get("state") == "queued"),
                            key=lambda job: (job.get("created_at") or 0, job["id"]))
            started = []
            for job in queued:
                if live + len(started) >= self.max_running:
                    break
                try:
                    spawned = self._spawn(job["id"])
                except Exception as exc:  # a job that cannot start fails alone; the next one takes its turn
                    self._settle(self.jobs_dir / job["id"], state="failed",
                                 error=f"could not start the worker: {type(exc).__name__}: {exc}")
                    continue
                if spawned:
                    started.append(job["id"])
            return started

    # --- controls ----------------------------------------------------------------------------------------
    def stop(self, job_id: str) -> dict:
        """A queued job is stopped at once. A live one is asked to stop (finish its step, save, exit);
        if it is still running `stop_grace_s` later, the next look at it kills it."""
        job_dir = self.job_dir(job_id)
        with self._queue_lock():  # a queued job must not be started while it is being stopped
            state = self.get(job_id).get("state")
            if state == "queued":
                self._settle(job_dir, state="stopped")
            elif state in LIVE_STATES:
                control.send(job_dir, "stop")
                if not (job_dir / STOP_REQUEST_FILE).exists():
                    write_text_atomic(job_dir / STOP_REQUEST_FILE, f"{time.time()}\n", durable=False)
        return self.get(job_id)

    def can_continue(self, job: dict | str) -> tuple[bool, str]:
        """Whether "Continue" may be offered for a job (a `get`/`list_jobs` dict or an id), and why (not).
        Only a stopped or failed training job with a saved state has something to continue; a done job never
        changes."""
        job = self.get(job) if isinstance(job, str) else job
        job_id, state = job.get("id"), job.get("state")
        if state == "done":
            return False, f"job {job_id} is done: every step is trained and its files stay as they are; " \
                          "start a new job to train more"
        if state not in ("stopped", "failed"):
            return False, f"job {job_id} is {state or 'unreadable'}; only a stopped or failed job can be continued"
        if not _is_file(Path(job["job_dir"]) / JOB_FILE):
            return False, f"job {job_id}: {MISSING_JOB_FILE}"
        step = saved_state_step(Path(job["job_dir"]))
        if step is None:
            return False, f"job {job_id} saved no training state to continue from; start a new job instead"
        return True, f"job {job_id} can continue from its state saved at step {step}"

    def continue_job(self, job_id: str) -> dict:
        """Queue a stopped or failed training job again; its worker continues from the newest saved state
        (`trainer run --resume`). JobError, changing nothing, where can_continue says no."""
        job_dir = self.job_dir(job_id)
        with self._queue_lock():
            allowed, reason = self.can_continue(job_id)
            if not allowed:
                raise JobError(reason)
            write_text_atomic(job_dir / RESUME_FLAG_FILE, "resume\n")
            status = patch_status(job_dir, state="queued", error=None)
            append_event(job_dir, "state", state="queued", by="job manager", resume=True)
        return status

    def pause(self, job_id: str) -> None:
        self._command(job_id, "pause")

    def unpause(self, job_id: str) -> None:
        self._command(job_id, "resume")

    def save_now(self, job_id: str) -> None:
        self._command(job_id, "save")

    def sample_now(self, job_id: str) -> None:
        self._command(job_id, "sample")

    # --- deleting, titles and what can be continued (ui) --------------------------------------------------
    def delete(self, job_id: str) -> None:
        """Remove an ended or queued job with all its files. The folder is first renamed to a hidden name, so
        no reader (another window, the queue) sees a half-deleted job; a live job is refused."""
        job_dir = self.job_dir(job_id)
        with self._queue_lock():  # a queued job must not start while it is being deleted
            state = self._refresh(job_id, job_dir).get("state")
            if state in LIVE_STATES:
                raise JobError(f"job {job_id} is {state}; stop it before deleting it")
            doomed = self.jobs_dir / f".deleting-{job_id}-{os.getpid()}"
            os.rename(job_dir, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def rename(self, job_id: str, title: str) -> str:
        """Give a job a display title (its id and folder stay). Kept in its own file, which only this writes,
        so it never races the worker's status.json."""
        title = " ".join((title or "").split())
        if not title or len(title) > MAX_TITLE_CHARS or any(ord(ch) < 32 for ch in title):
            raise JobError(f"a job title must be 1 to {MAX_TITLE_CHARS} printable characters (got {title!r})")
        write_text_atomic(self.job_dir(job_id) / TITLE_FILE, title + "\n")
        return title

    def latest_saved_step(self, job_id: str) -> int | None:
        """The step of the newest complete resumable state in state/ (None when nothing was saved)."""
        return saved_state_step(self.job_dir(job_id))

    def _command(self, job_id: str, command: str) -> None:
        state = self.get(job_id).get("state")
        if state not in ("running", "paused"):
            raise JobError(f"job {job_id} is {state}; {command!r} needs a running or paused job")
        control.send(self.job_dir(job_id), command)

    # --- workers -----------------------------------------------------------------------------------------
    def _spawn(self, job_id: str) -> bool:
        """Start the job's worker; False when the job failed instead (its job.toml cannot be run)."""
        job_dir = self.jobs_dir / job_id
        job_toml = job_dir / JOB_FILE
        (job_dir / STOP_REQUEST_FILE).unlink(missing_ok=True)
        control.clear(job_dir)
        try:
            command = self._worker_command(job_id, job_toml, job_dir)
        except JobFileError as exc:
            self._settle(job_dir, state="failed", error=str(exc))
            return False
        if (job_dir / RESUME_FLAG_FILE).exists():
            command.append("--resume")
            (job_dir / RESUME_FLAG_FILE).unlink()
        # Written before the worker starts: afterwards only the worker writes status.json.
        patch_status(job_dir, state="running", phase="loading", heartbeat_at=time.time(), pid=None, damaged=None)
        append_event(job_dir, "state", state="running", by="job manager")  # what a damaged status is rebuilt from
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
                return False
        self._children[job_id] = child
        write_text_atomic(job_dir / PID_FILE, f"{child.pid}\n", durable=False)  # meaningless after a reboot
        return True

    def _worker_command(self, job_id: str, job_toml: Path, job_dir: Path) -> list[str]:
        # A job queued elsewhere (the CLI, another app, an earlier run) is read here: a broken one fails alone.
        plan = self._plans.pop(job_id, None) or read_launch_plan(job_toml)
        command = worker_command(plan, job_toml, job_dir)
        if self.worker_cmd is None:
            return command
        return [part.format(job_toml=job_toml, job_dir=job_dir) for part in self.worker_cmd]

    def _refresh(self, job_id: str, job_dir: Path) -> dict:
        status, problems = load_status(job_dir)
        worker_running = False
        if problems and status.get("state") not in LIVE_STATES and self._worker_process_runs(job_id, job_dir,
                                                                                               status):
            status["state"] = "running"  # whatever the damaged file says, a worker runs this job
        if status.get("state") in LIVE_STATES:
            status, worker_running = self._watch_worker(job_id, job_dir, status)
        if not problems:
            return status
        if worker_running:  # the worker rewrites the whole file from what it knows at its next update
            return {**status, "damaged": "; ".join(problems)}
        # No worker writes it now: the manager writes the checked (or rebuilt) status and keeps what was wrong
        # in it (`damaged`, shown with the job until it runs again) and in the history.
        note = "; ".join(problems) + " (rewritten by the job manager)"
        append_event(job_dir, "warning", message=f"status.json was damaged: {note}", by="job manager")
        return patch_status(job_dir, damaged=note)

    def _watch_worker(self, job_id: str, job_dir: Path, status: dict) -> tuple[dict, bool]:
        """A live job's status after checking its worker, and whether that worker still runs."""
        child = self._children.get(job_id)
        if child is not None:
            exit_code = child.poll()
            if exit_code is None:
                return self._enforce_stop_deadline(job_dir, status), True
            self._children.pop(job_id, None)
            return self._settle_exited(job_dir, exit_code), False
        if self._worker_alive(job_dir, status):
            return self._enforce_stop_deadline(job_dir, status), True
        return self._settle_exited(job_dir, exit_code=None), False

    def _worker_process_runs(self, job_id: str, job_dir: Path, status: dict) -> bool:
        child = self._children.get(job_id)
        if child is not None:
            return child.poll() is None
        return any(pid_runs_job(pid, job_dir) for pid in worker_pids(job_dir, status))

    def _worker_alive(self, job_dir: Path, status: dict) -> bool:
        """The launcher's pid (worker.pid) or the status writer's pid (rank 0) still runs this job. With no
        pid known yet (a manager that died while starting the worker), a fresh heartbeat counts as alive; so
        does a worker just started by another manager that has not written status.json yet (between fork and
        exec its command line is still the manager's, so its pid does not look like this job's)."""
        pids = worker_pids(job_dir, status)
        heartbeat_age = time.time() - (status.get("heartbeat_at") or 0)
        if pids:
            starting = status.get("pid") is None and heartbeat_age < WORKER_START_GRACE_S
            return starting or any(pid_runs_job(pid, job_dir) for pid in pids)
        return heartbeat_age < self.heartbeat_timeout_s

    def _enforce_stop_deadline(self, job_dir: Path, status: dict) -> dict:
        asked_at = read_stop_request(job_dir)
        if asked_at is None or time.time() - asked_at < self.stop_grace_s:
            return status
        kill_worker(worker_pids(job_dir, status), job_dir)
        child = self._children.pop(job_dir.name, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)  # reap it, so no zombie is left behind
        return self._settle(job_dir, state="stopped",
                            error=f"the worker did not stop within {self.stop_grace_s:g} s and was killed; "
                                  "work since its last save is lost")

    def _settle_exited(self, job_dir: Path, exit_code: int | None) -> dict:
        """Give a job whose worker has gone a final state, unless the worker wrote one on its way out."""
        status = read_status(job_dir)  # read again: the final write may have landed just before the exit
        if status.get("state") not in LIVE_STATES:
            return status
        stop_asked = (job_dir / STOP_REQUEST_FILE).exists()
        if exit_code == 0:
            return self._settle(job_dir, state="stopped" if stop_asked else "done")
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
        """Every job folder, and every link in the jobs folder (listed as damaged, never acted on). A folder
        whose job.toml was deleted is still a job while its status or pid file is there: its worker may run."""
        return sorted(p.name for p in self.jobs_dir.iterdir()
                      if not p.name.startswith(".") and (p.is_symlink() or _is_job_folder(p)))

    def _live_workers(self, jobs: list[dict]) -> set[str]:
        """The jobs whose worker runs now: those whose status says so, and those with a live worker process
        whatever their files say (a worker this manager started that has not exited, or a job folder whose
        worker.pid or status pid is a live process of that folder: its job.toml or status.json may be gone or
        damaged). Only a worker that wrote its own final state (done, failed, stopped) and is exiting does not
        count. The queue counts these, so no file a user deletes or damages lets a second worker start
        beside a running one."""
        states = {job["id"]: job.get("state") for job in jobs}
        live = {job_id for job_id, state in states.items() if state in LIVE_STATES}
        running = {job_id for job_id, child in self._children.items() if child.poll() is None}
        for folder in _listdir(self.jobs_dir):
            if folder.name.startswith(".") or folder.is_symlink() or folder.name in live | running:
                continue
            with contextlib.suppress(OSError):
                status = load_status(folder)[0] if folder.is_dir() else {}
                if any(pid_runs_job(pid, folder) for pid in worker_pids(folder, status)):
                    running.add(folder.name)
        return live | {job_id for job_id in running if states.get(job_id) not in FINAL_STATES}

    @contextlib.contextmanager
    def _queue_lock(self) -> Iterator[None]:
        with open(self.jobs_dir / QUEUE_LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def read_title(job_dir: Path) -> str:
    path = inside_job(job_dir, TITLE_FILE)
    try:
        return path.read_text(encoding="utf-8").strip()[:MAX_TITLE_CHARS] if path is not None else ""
    except (OSError, UnicodeDecodeError):
        return ""


def read_pid_file(job_dir: Path) -> int | None:
    try:
        pid = int((job_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return pid if pid > 0 else None


def read_stop_request(job_dir: Path) -> float | None:
    """When a stop was first asked for (None: never). A damaged file still means "asked": its time is then
    the file's own modification time."""
    path = job_dir / STOP_REQUEST_FILE
    try:
        return float(path.read_text().strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        try:
            return path.stat().st_mtime
        except OSError:
            return time.time()


def saved_state_step(job_dir: Path) -> int | None:
    """The step of the newest resumable state in <job>/state/, or None. The layout (stepNNNNNNNN/state.pt) is
    trainer/checkpoint.py's; it is read here by name only, since that module needs torch."""
    steps = [int(p.name[4:]) for p in _listdir(job_dir / "state")
             if re.fullmatch(r"step\d{8}", p.name) and _is_file(p / "state.pt")]
    return max(steps, default=None)


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def created_at_from_id(job_id: str, job_dir: Path) -> float:
    """A job's creation time when its status lost it: the UTC stamp its id begins with, else the folder's age."""
    try:
        stamp = datetime.strptime(job_id[:19], "%Y%m%d-%H%M%S-%f").replace(tzinfo=timezone.utc)
        return stamp.timestamp()
    except ValueError:
        try:
            return job_dir.stat().st_mtime
        except OSError:
            return 0.0


def _is_job_folder(path: Path) -> bool:
    """A real folder (not a link) holding a job's files: its job.toml, or, once that is gone, the status or
    pid file its worker keeps writing."""
    try:
        return not path.is_symlink() and path.is_dir() and any(
            _is_file(path / name) for name in (JOB_FILE, STATUS_FILE, PID_FILE))
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name the file system refuses (too long), a loop of links
        return False


def worker_pids(job_dir: Path, status: dict) -> list[int]:
    return [pid for pid in (read_pid_file(job_dir), status.get("pid")) if isinstance(pid, int) and pid > 0]


def slugify(name: str, max_len: int = 40) -> str:
    """A folder-safe form of a job name: lower-case letters, digits and dashes ("job" when nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:max_len].strip("-")
    return slug or "job"
