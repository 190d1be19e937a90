"""status.json and events.jsonl: the worker writes them, the UI reads them (docs/job-protocol.md).

status.json is the job's current picture, replaced atomically on every update; events.jsonl is its history,
one JSON object a line, only ever appended."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from .files import json_line, json_text, read_json

STATUS_FILE = "status.json"
EVENTS_FILE = "events.jsonl"

STATES = ("queued", "running", "paused", "stopping", "done", "failed", "cancelled")
LIVE_STATES = frozenset({"running", "paused", "stopping"})  # a worker process should exist
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
PHASES = ("loading", "caching", "generating class images", "training", "saving", "sampling", "captioning")
EVENT_KINDS = ("progress", "phase", "sample", "save", "warning", "error", "state")

# Every status.json starts with all of these, so a reader never has to ask whether a field exists.
INITIAL_STATUS = {
    "state": "queued", "phase": None, "step": 0, "total_steps": None, "epoch": None, "total_epochs": None,
    "loss": None, "loss_avg": None, "lr": None, "it_per_s": None, "eta_s": None, "latest_sample": None,
    "outputs": [], "error": None, "started_at": None, "finished_at": None,
}


class StatusWriter:
    """The worker's side of status.json and events.jsonl. With enabled=False (DDP ranks other than 0, or a
    headless run without a job folder) every call does nothing, so the caller needs no `if rank == 0`."""

    def __init__(self, job_dir: str | os.PathLike | None, enabled: bool = True):
        self.enabled = enabled and job_dir is not None
        self.job_dir = Path(job_dir) if job_dir is not None else None
        self._lock = threading.Lock()  # a heartbeat from another thread must not interleave with an update
        # Fields the job manager wrote (id, name, created_at, started_at) are kept, not overwritten.
        self._status: dict[str, Any] = read_status(self.job_dir) if self.enabled else {}

    def update(self, **fields: Any) -> None:
        """Merge `fields` into status.json and replace the file; stamps updated_at, heartbeat_at and pid."""
        if not self.enabled:
            return
        state = fields.get("state")
        if state is not None and state not in STATES:
            raise ValueError(f"unknown job state {state!r}; expected one of {', '.join(STATES)}")
        with self._lock:
            now = time.time()
            merged = stamp_state_times({**self._status, **fields}, self._status.get("state"), now)
            merged.update(updated_at=now, heartbeat_at=now, pid=os.getpid())
            write_text_atomic(self.job_dir / STATUS_FILE, json_text(merged), durable=False)  # rewritten often
            self._status = merged

    def heartbeat(self) -> None:
        """Say "still alive" without new progress (long phases: loading, caching, sampling)."""
        self.update()

    def event(self, kind: str, **data: Any) -> None:
        """Append one event line. The whole line goes out in one write() on an O_APPEND descriptor, so a
        reader sees complete lines plus at most one partial line at the end, which read_events skips."""
        if not self.enabled:
            return
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {', '.join(EVENT_KINDS)}")
        append_event(self.job_dir, kind, **data)


def append_event(job_dir: Path, kind: str, **data: Any) -> None:
    line = (json_line({**data, "kind": kind, "time": time.time()}) + "\n").encode("utf-8")
    fd = os.open(Path(job_dir) / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def patch_status(job_dir: Path, **fields: Any) -> dict:
    """The job manager's write to status.json, made only while no worker is alive (queued, or after the worker
    has gone), so the two never race. Unlike StatusWriter it leaves heartbeat_at and pid alone."""
    previous = read_status(job_dir)
    now = time.time()
    merged = stamp_state_times({**previous, **fields}, previous.get("state"), now)
    merged["updated_at"] = now
    write_text_atomic(Path(job_dir) / STATUS_FILE, json_text(merged), durable=False)
    return merged


def stamp_state_times(status: dict, previous_state: str | None, now: float) -> dict:
    """started_at when a job first runs, finished_at when it ends; a run started again after an end (resume)
    drops the old finished_at and error."""
    state = status.get("state")
    if state == previous_state:
        return status
    if state in LIVE_STATES:
        status["started_at"] = status.get("started_at") or now
        if previous_state in FINAL_STATES:
            status.update(finished_at=None, error=None)
    elif state in FINAL_STATES:
        status["finished_at"] = now
    return status


def read_status(job_dir: str | os.PathLike) -> dict:
    """The job's status.json as a dict ({} when there is none yet)."""
    return read_json(Path(job_dir) / STATUS_FILE)


def read_events(job_dir: str | os.PathLike, since_line: int = 0) -> tuple[list[dict], int]:
    """Events from line `since_line` on, and the line number to pass next time. A trailing line without its
    newline is still being written: it is left for the next call."""
    try:
        data = (Path(job_dir) / EVENTS_FILE).read_bytes()
    except FileNotFoundError:
        return [], since_line
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace").split("\n")[:-1]
    events = []
    for line in complete[since_line:]:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line damaged by a crash mid-write on an older file system; the rest is still good
    return events, max(len(complete), since_line)
