"""The Jobs tab reads events.jsonl incrementally and keeps a capped amount (ui/job_events.py): reading a file in
pieces, as the polling view does while the worker appends, gives exactly the view a full read gives, and what
is kept stays within the cap however long the file grows. (The speed is in bench/job_view_events.py.)"""
from __future__ import annotations

import json
import random

import pytest

from trainer.jobs import read_events
from ui import job_events as kept_events
from ui.job_events import MAX_KEPT_POINTS, SMOOTHING, JobEvents


def event_lines(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for step in range(1, count + 1):
        lines.append(json.dumps({"kind": "progress", "step": step, "loss": rng.random(), "lr": 1e-4 * rng.random(),
                                 "time": step}) + "\n")
        if step % 50 == 0:
            lines.append(json.dumps({"kind": "validation", "step": step, "loss": rng.random()}) + "\n")
        if step % 500 == 0:
            lines.append(json.dumps({"kind": "sample", "step": step, "path": f"/j/samples/{step}.png",
                                     "prompt": "a cat --s 8"}) + "\n")
        if step % 777 == 0:
            lines.append("not json\n")  # damage is skipped the same way whichever way the file is read
    return lines


def view(events: JobEvents) -> tuple:
    return events.progress_rows(), events.validation_rows(), list(events.samples.items())


@pytest.mark.parametrize("count", [300, 3 * MAX_KEPT_POINTS + 123])
def test_reading_in_pieces_gives_the_view_of_a_full_read(tmp_path, count):
    lines = event_lines(count)
    path = tmp_path / "events.jsonl"
    polled = JobEvents(tmp_path)
    rng = random.Random(1)
    with open(path, "w") as out:
        at = 0
        while at < len(lines):
            piece = "".join(lines[at:at + rng.randint(1, 400)])
            at += piece.count("\n")
            cut = rng.randint(0, len(piece))  # the worker's write may be cut anywhere, a line half written
            out.write(piece[:cut])
            out.flush()
            polled.update()
            out.write(piece[cut:])
            out.flush()
            polled.update()
    full = JobEvents(tmp_path).update()
    assert view(polled) == view(full)
    if count < MAX_KEPT_POINTS:  # nothing thinned: every point, smoothed over all of them, as read_events has it
        progress = [e for e in read_events(tmp_path)[0] if e["kind"] == "progress"]
        average, expected = None, []
        for e in progress:
            average = e["loss"] if average is None else (1 - SMOOTHING) * average + SMOOTHING * e["loss"]
            expected.append((float(e["step"]), e["loss"], average, e["lr"]))
        assert full.progress_rows() == expected


def test_what_is_kept_is_capped_and_keeps_the_first_and_newest_points(tmp_path):
    count = 5 * MAX_KEPT_POINTS
    (tmp_path / "events.jsonl").write_text("".join(event_lines(count)))
    events = JobEvents(tmp_path).update()
    rows = events.progress_rows()
    assert len(rows) <= MAX_KEPT_POINTS + 1 and len(rows) >= MAX_KEPT_POINTS // 2
    assert rows[0][0] == 1 and rows[-1][0] == count  # the whole run is spanned, to the newest step
    assert len(events.validation_rows()) <= MAX_KEPT_POINTS + 1
    assert events.progress.count == count  # every point was seen (and smoothed over), not every one kept


def test_the_view_keeps_few_jobs_and_starts_over_when_the_file_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(kept_events, "MAX_WATCHED_JOBS", 3)
    monkeypatch.setattr(kept_events, "_watched", type(kept_events._watched)())
    for i in range(5):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "events.jsonl").write_text("".join(event_lines(10, seed=i)))
        kept_events.job_events(tmp_path / str(i))
    assert list(kept_events._watched) == [str(tmp_path / str(i)) for i in (2, 3, 4)]
    replaced = tmp_path / "4" / "events.jsonl.new"
    replaced.write_text("".join(event_lines(3, seed=9)))
    replaced.replace(tmp_path / "4" / "events.jsonl")
    assert [row[0] for row in kept_events.job_events(tmp_path / "4")[0]] == [1.0, 2.0, 3.0]


def test_the_fast_parser_reads_every_line_as_json_does():
    from trainer.jobs.status import _parse_event_lines

    lines = [b'{"kind": "progress", "step": 1, "loss": NaN}', b'{"kind": "progress", "step": 12345678901234567890123}',
             b'{"kind": "x", "v": -9223372036854775809}', b'{"kind": "s", "path": "\xff\xfe caf\xc3\xa9"}',
             b'{"kind": "p", "loss": 1e400}', b'{"kind": "p", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
             b'{"kind": "ok", "loss": 0.25, "lr": 1e-4}', b'[1, 2]', b'{"kind": 3}', b'{"kind": "half', b""]
    expected = []
    for line in lines:
        try:
            event = json.loads(line.decode("utf-8", errors="replace"))
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(event, dict) and isinstance(event.get("kind"), str):
            expected.append(event)
    got = _parse_event_lines(lines)
    assert json.dumps(got) == json.dumps(expected)  # NaN == NaN as text; ints stay ints
    assert [type(e.get("step")) for e in got[:2]] == [int, int]
