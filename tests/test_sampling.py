"""Preview samples: Kohya prompt-line options, PNGs with their settings, events and TensorBoard logs."""
from __future__ import annotations

import pytest
from PIL import Image

from tests.helpers import make_dataset, write_job
from trainer.config import load_job
from trainer.loop import default_paths, train
from trainer.progress import RunReporter
from trainer.sampling import SamplePrompt, parse_prompt_line

DEFAULTS = SamplePrompt("", "", 512, 512, 20, 7.0, 42)


def test_prompt_line_options_override_defaults():
    p = parse_prompt_line("a red fox, forest --n blurry, lowres --w 640 --h 770 --s 12 --l 5.5 --d 9", DEFAULTS)
    assert p == SamplePrompt("a red fox, forest", "blurry, lowres", 640, 768, 12, 5.5, 9)
    assert parse_prompt_line("just a prompt", DEFAULTS) == SamplePrompt("just a prompt", "", 512, 512, 20, 7.0, 42)
    with pytest.raises(ValueError, match="--x"):
        parse_prompt_line("cat --x 3", DEFAULTS)
    with pytest.raises(ValueError, match="needs a number"):
        parse_prompt_line("cat --s many", DEFAULTS)


class Recorder:
    def __init__(self):
        self.status, self.events = {}, []

    def update(self, **fields):
        self.status.update(fields)

    def event(self, kind, **data):
        self.events.append((kind, data))


def test_samples_are_written_with_settings_and_announced(tmp_path, tiny_sd15_dir):
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, make_dataset(tmp_path / "data"), tmp_path / "out",
                    sections={"training": {"max_steps": 4},
                              "sample": {"prompts": ["kiln shape --s 2 --d 5", "a circle --n square --s 2"],
                                         "every_n_steps": 2, "sampler": "euler"}})
    cfg = load_job(job)
    recorder = Recorder()
    train(cfg, default_paths(cfg), RunReporter(status=recorder, console=False))
    samples = sorted((tmp_path / "out" / "test-lora-samples").glob("*.png"))
    assert [p.name for p in samples] == [f"test-lora-step{s:08d}-{i:02d}.png" for s in (2, 4) for i in (0, 1)]
    with Image.open(samples[1]) as im:
        assert im.size == (64, 64)
        text = im.text["parameters"]
    assert text.startswith("a circle\nNegative prompt: square\nSteps: 2, Sampler: Euler")
    announced = [d["path"] for kind, d in recorder.events if kind == "sample"]
    assert announced == [str(p) for p in samples]
    assert recorder.status["latest_sample"] == str(samples[-1])
    logs = list((tmp_path / "out" / "test-lora-logs").glob("events.out.tfevents.*"))
    assert logs and logs[0].stat().st_size > 0
