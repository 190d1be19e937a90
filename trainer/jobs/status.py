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

STATES = ("queued", "running", "paused", "stopping", "done", "failed", "stopped")
LIVE_STATES = frozenset({"running", "paused", "stopping"})  # a worker process should exist
FINAL_STATES = frozenset({"done", "failed", "stopped"})
# Words older versions wrote: a stopped run was recorded as "cancelled". Read (and accepted) as the new word.
LEGACY_STATES = {"cancelled": "stopped"}
PHASES = ("loading", "caching", "generating class images", "training", "saving", "sampling", "captioning", "evaluating")
EVENT_KINDS = ("progress", "phase", "sample", "save", "warning", "error", "state", "validation")

# Every status.json starts with all of these, so a reader never has to ask whether a field exists.
INITIAL_STATUS = {
    "state": "queued", "phase": None, "step": 0, "total_steps": None, "epoch": None, "total_epochs": None,
    "loss": None, "loss_avg": None, "lr": None, "it_per_s": None, "eta_s": None, "latest_sample": None,
    "outputs": [], "error": None, "started_at": None, "finished_at": None,
    "validation_loss": None, "best_validation": None,
}


class StatusWriter:
    """The worker's side of status.json and events.jsonl. With enabled=False (DDP ranks other than 0, or a
    headless run without a job folder) every call does nothing, so the caller needs no `if rank == 0`."""

    def __init__(self, job_dir: str | os.PathLike | None, enabled: bool = True):
        self.enabled = enabled and job_dir is not None
        self.job_dir = Path(job_dir) if job_dir is not None else None
        self._lock = threading.Lock()  # a heartbeat from another thread must not interleave with an update
        # Fields the job manager wrote (id, name, created_at, started_at) are kept, not overwritten.
        self._status: dict[str, Any] = load_status(self.job_dir)[0] if self.enabled else {}

    def update(self, **fields: Any) -> None:
        """Merge `fields` into status.json and replace the file; stamps updated_at, heartbeat_at and pid."""
        if not self.enabled:
            return
        state = fields.get("state")
        if state in LEGACY_STATES:
            state = fields["state"] = LEGACY_STATES[state]
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
    previous = load_status(job_dir)[0]
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


# What each known field may hold. A field of another type (a hand edit, a bug, an old writer) is dropped to its
# initial value on reading, and the job is reported as damaged, so no reader ever meets `"step": "5"`.
_NUMBER, _INT, _TEXT, _LIST = (int, float), (int,), (str,), (list,)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "state": _TEXT, "phase": _TEXT, "step": _INT, "total_steps": _INT, "epoch": _INT, "total_epochs": _INT,
    "loss": _NUMBER, "loss_avg": _NUMBER, "lr": _NUMBER, "it_per_s": _NUMBER, "eta_s": _NUMBER,
    "latest_sample": _TEXT, "outputs": _LIST, "error": _TEXT, "started_at": _NUMBER, "finished_at": _NUMBER,
    "updated_at": _NUMBER, "heartbeat_at": _NUMBER, "created_at": _NUMBER, "pid": _INT, "id": _TEXT, "name": _TEXT,
    "damaged": _TEXT,  # what the job manager found wrong with this file when it last rewrote it
}


def load_status(job_dir: str | os.PathLike) -> tuple[dict, list[str]]:
    """status.json, checked: (the status with every known field of the right type, what was wrong with it).
    A file that is not a JSON object, or whose state is unknown, is rebuilt from events.jsonl (the worker's
    own history), so a damaged status still shows the job's last known state, step and outputs."""
    path = Path(job_dir) / STATUS_FILE
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return rebuild_status(job_dir), [f"{STATUS_FILE} cannot be read ({_short(exc)}); rebuilt from {EVENTS_FILE}"]
    if not isinstance(data, dict):
        return rebuild_status(job_dir), [f"{STATUS_FILE} holds {type(data).__name__}, not an object; "
                                         f"rebuilt from {EVENTS_FILE}"]
    problems = []
    status = dict(data)
    for key, allowed in FIELD_TYPES.items():
        value = status.get(key)
        if value is not None and (not isinstance(value, allowed) or isinstance(value, bool)):
            problems.append(f"{STATUS_FILE}: {key} = {_short(value)} is not {_type_words(allowed)}")
            status[key] = INITIAL_STATUS.get(key)
    if status.get("outputs") is not None and not all(isinstance(p, str) for p in status["outputs"]):
        problems.append(f"{STATUS_FILE}: outputs holds something other than paths")
        status["outputs"] = [p for p in status["outputs"] if isinstance(p, str)]
    state = status.get("state")
    if state in LEGACY_STATES:
        state = status["state"] = LEGACY_STATES[state]
    if data and state not in STATES:
        problems.append(f"{STATUS_FILE}: state = {_short(state)} is not one of {', '.join(STATES)}; "
                        f"taken from {EVENTS_FILE}")
        status["state"] = rebuild_status(job_dir)["state"]
    return status, problems


def read_status(job_dir: str | os.PathLike) -> dict:
    """The job's status.json as a dict ({} when there is none yet). Never raises for a damaged file: the fields
    are checked (load_status) and `damaged` says what was wrong."""
    status, problems = load_status(job_dir)
    if problems:
        status["damaged"] = "; ".join(problems)
    elif status.get("damaged") is None:
        status.pop("damaged", None)
    return status


def rebuild_status(job_dir: str | os.PathLike) -> dict:
    """A status made from events.jsonl: the last state, phase, progress, sample and saved files it records."""
    status = dict(INITIAL_STATUS, outputs=[])
    events, _ = read_events(job_dir)
    for event in events:
        kind = event.get("kind")
        state = LEGACY_STATES.get(event.get("state"), event.get("state"))
        if kind == "state" and state in STATES:
            status["state"] = state
            status.update({key: event[key] for key in ("error", "step", "outputs") if key in event})
        elif kind == "progress":
            status.update({key: event[key] for key in ("step", "epoch", "loss", "loss_avg", "lr", "it_per_s", "eta_s")
                           if key in event})
        elif kind == "phase":
            status["phase"] = event.get("phase")
        elif kind == "sample":
            status["latest_sample"] = event.get("path")
    # the events are as hand-editable as status.json: keep only values of the right types
    return {key: (value if key not in FIELD_TYPES or value is None or
                  (isinstance(value, FIELD_TYPES[key]) and not isinstance(value, bool)) else INITIAL_STATUS.get(key))
            for key, value in status.items()}


def read_events(job_dir: str | os.PathLike, since_line: int = 0) -> tuple[list[dict], int]:
    """Events from line `since_line` on, and the line number to pass next time. A trailing line without its
    newline is still being written: it is left for the next call. Lines that are not JSON objects (damage, a
    hand edit) are skipped; they still count as lines, so `since_line` stays a line number. Reads the whole
    file: a view that polls uses EventFeed, which reads only what was appended."""
    try:
        data = (Path(job_dir) / EVENTS_FILE).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return [], since_line
    lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
    return _parse_event_lines(lines[since_line:]), max(len(lines), since_line)


class EventFeed:
    """One job's events.jsonl read incrementally: each `new_events()` returns only the events appended since
    the previous call, reading only the new bytes. `restarted` is True after a call that found the file
    replaced or shortened (it then starts again from the top, so the caller drops what it kept)."""

    def __init__(self, job_dir: str | os.PathLike):
        self.path = Path(job_dir) / EVENTS_FILE
        self.offset = 0
        self.restarted = False
        self._identity: tuple[int, int] | None = None

    def new_events(self) -> list[dict]:
        self.restarted = False
        try:
            with open(self.path, "rb") as f:
                info = os.fstat(f.fileno())
                identity = (info.st_dev, info.st_ino)
                if identity != self._identity or info.st_size < self.offset:
                    self.restarted = self._identity is not None
                    self._identity, self.offset = identity, 0
                f.seek(self.offset)
                data = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            return []
        end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
        self.offset += end
        return _parse_event_lines(data[:end].split(b"\n")[:-1])


def _parse_event_lines(lines: list[bytes]) -> list[dict]:
    events = []
    for line in lines:
        try:
            event = _fast_loads(line)
            if isinstance(event, dict) and any(type(v) is float and abs(v) >= 2**63 for v in event.values()):
                raise ValueError("orjson reads integers beyond 64 bits as floats")
        except ValueError:  # orjson refuses what json takes (NaN, bad UTF-8) or reads it otherwise: ask json
            try:
                event = json.loads(line.decode("utf-8", errors="replace"))
            except (json.JSONDecodeError, RecursionError):
                continue  # a line damaged by a crash mid-write on an older file system; the rest is still good
        if isinstance(event, dict) and isinstance(event.get("kind"), str):
            events.append(event)
    return events


def _json_loads_bytes(line: bytes):
    raise ValueError("no orjson")  # json.loads itself runs in the caller's fallback


try:  # orjson (installed with gradio) parses a long events.jsonl about 4 times faster than json
    from orjson import loads as _fast_loads
except ImportError:
    _fast_loads = _json_loads_bytes


def _short(value: object, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _type_words(allowed: tuple[type, ...]) -> str:
    return {_NUMBER: "a number", _INT: "a whole number", _TEXT: "text", _LIST: "a list"}[allowed]
