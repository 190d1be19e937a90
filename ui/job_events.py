"""What the Jobs tab keeps of each job's events.jsonl, read incrementally. A long run's file grows to hundreds of
megabytes, and the tab looks at the chosen job every 1.5 s: each look reads only the bytes appended since the
previous one (trainer.jobs.EventFeed remembers the offset), and what is kept per job is capped, so neither the
time of a look nor the memory grows with the file. Reading a file in any number of pieces keeps exactly what
reading it at once keeps (tests/test_job_events.py)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from trainer.jobs import EventFeed

MAX_KEPT_POINTS = 4000  # per chart series; the charts draw at most job_view.MAX_PLOT_POINTS of them
MAX_KEPT_SAMPLES = 2000  # sample events remembered (for the gallery's captions), newest kept
MAX_WATCHED_JOBS = 32  # jobs whose events are kept at once (the least recently viewed is dropped)
SMOOTHING = 0.1  # weight of each new loss in the smoothed line (an exponential moving average)


class Thinned:
    """A series of rows that keeps at most `cap` (+ the newest): every `stride`-th row by arrival, the stride
    doubling whenever the cap is passed. Which rows are kept depends only on their order, never on how they
    were handed in."""

    def __init__(self, cap: int):
        self.cap, self.stride, self.count = cap, 1, 0
        self._kept: list[tuple[int, tuple]] = []
        self._last: tuple[int, tuple] | None = None

    def add(self, row: tuple) -> None:
        if self.count % self.stride == 0:
            self._kept.append((self.count, row))
            if len(self._kept) > self.cap:
                self.stride *= 2
                self._kept = [(i, kept) for i, kept in self._kept if i % self.stride == 0]
        self._last = (self.count, row)
        self.count += 1

    def rows(self) -> list[tuple]:
        rows = [row for _, row in self._kept]
        if self._last is not None and (not self._kept or self._kept[-1][0] != self._last[0]):
            rows.append(self._last[1])  # the newest point is always drawn
        return rows


class JobEvents:
    """One job's chart points and sample captions, extended from what was appended since the last `update()`.
    Progress rows are (step, loss, smoothed loss, lr); the smoothing runs over every loss, in the file's order,
    before any row is thinned out."""

    def __init__(self, job_dir: str | Path):
        self.feed = EventFeed(job_dir)
        self._clear()

    def _clear(self) -> None:
        self.progress, self.validation = Thinned(MAX_KEPT_POINTS), Thinned(MAX_KEPT_POINTS)
        self.samples: OrderedDict[str, tuple[object, str]] = OrderedDict()  # path → (step, prompt)
        self._average: float | None = None

    def update(self) -> "JobEvents":
        events = self.feed.new_events()
        if self.feed.restarted:  # the file was replaced: what was kept described the old one
            self._clear()
        self.add(events)
        return self

    def add(self, events: list[dict]) -> None:
        for event in events:
            kind = event.get("kind")
            if kind == "progress" or kind == "validation":
                step, loss = event.get("step"), event.get("loss")
                if not (finite(step) and finite(loss)):
                    continue
                if kind == "validation":
                    self.validation.add((float(step), float(loss)))
                    continue
                loss = float(loss)
                self._average = loss if self._average is None else (1 - SMOOTHING) * self._average + SMOOTHING * loss
                lr = event.get("lr")
                self.progress.add((float(step), loss, self._average, float(lr) if finite(lr) else None))
            elif kind == "sample":
                path = str(event.get("path"))
                self.samples.pop(path, None)
                self.samples[path] = (event.get("step"), str(event.get("prompt") or ""))
                if len(self.samples) > MAX_KEPT_SAMPLES:
                    self.samples.popitem(last=False)

    def progress_rows(self) -> list[tuple]:
        return sorted(self.progress.rows(), key=lambda row: row[0])

    def validation_rows(self) -> list[tuple]:
        return sorted(self.validation.rows(), key=lambda row: row[0])


_watched: OrderedDict[str, JobEvents] = OrderedDict()
_watched_lock = threading.Lock()


def job_events(job_dir: str | Path) -> tuple[list[tuple], list[tuple], dict[str, tuple[object, str]]]:
    """The job's (progress rows, validation rows, sample path → (step, prompt)), brought up to date: read from
    the top the first time this process looks, then only what was appended."""
    key = str(job_dir)
    with _watched_lock:  # the timer and a click may look at the same job at once
        events = _watched.pop(key, None) or JobEvents(job_dir)
        _watched[key] = events
        if len(_watched) > MAX_WATCHED_JOBS:
            _watched.popitem(last=False)
        events.update()
        return events.progress_rows(), events.validation_rows(), dict(events.samples)


def finite(value) -> bool:
    """A real number (not a bool, NaN or infinity). Called for every point of a long file, so kept cheap."""
    return type(value) in _NUMBERS and value - value == 0  # inf - inf and nan - nan are nan


_NUMBERS = (int, float)
