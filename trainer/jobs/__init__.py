"""Job folders, status files, control commands and the worker queue (docs/job-protocol.md).

Imported by the UI, so nothing here may import torch, diffusers or gradio."""
from .control import COMMANDS, ControlChannel, send
from .errors import JobError, JobFileError, UnknownJobError
from .launch import evaluation_job_toml
from .manager import JobManager
from .scheduler import QueueScheduler
from .status import (EVENT_KINDS, FINAL_STATES, LIVE_STATES, PHASES, STATES, EventFeed, StatusWriter, read_events,
                     read_status)

__all__ = [
    "COMMANDS", "EVENT_KINDS", "EventFeed", "FINAL_STATES", "LIVE_STATES", "PHASES", "STATES",
    "ControlChannel", "JobError", "JobFileError", "JobManager", "QueueScheduler", "StatusWriter", "UnknownJobError",
    "evaluation_job_toml", "read_events", "read_status", "send",
]
