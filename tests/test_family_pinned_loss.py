"""The model-family layer changed where the engine asks about an architecture, not what it computes: short tiny
LoRA runs reproduce, bit for bit, the per-step losses that main's code (before the family layer) produced.
The values were recorded on commit af1c952 with the same tiny models, dataset and jobs."""
from __future__ import annotations

import pytest

from tests.helpers import make_dataset, write_job
from trainer.config import load_job
from trainer.loop import default_paths, train
from trainer.models.tiny import save_tiny_model
from trainer.progress import RunReporter

PINNED = {
    # SD 1.x with the text encoder learning (fresh latents, captions encoded each step)
    "sd15": ({"lora": {"rank": 4, "alpha": 2, "train_text_encoder": True}},
             ["0x1.351af80000000p+0", "0x1.e953b80000000p-1", "0x1.0c80580000000p+0", "0x1.2fa20c0000000p+0"]),
    # SD 2.x: v-prediction with min-SNR weighting
    "sd2": ({"training": {"min_snr_gamma": 5.0}},
            ["0x1.2d9d6e0000000p-2", "0x1.5306f80000000p-5", "0x1.3a893a0000000p-2", "0x1.889f6a0000000p-3"]),
    # SDXL: both caches (latents, text-encoder outputs), noise offset
    "sdxl": ({"training": {"cache_latents": True, "cache_text_encoder_outputs": True, "noise_offset": 0.05}},
             ["0x1.261c180000000p+0", "0x1.e324a00000000p-1", "0x1.027cce0000000p+0", "0x1.2849e60000000p+0"]),
}


class LossRecorder(RunReporter):
    def __init__(self):
        super().__init__(console=False)
        self.losses: list[str] = []

    def step(self, step, loss, lr, epoch):
        self.losses.append(float(loss).hex())
        super().step(step, loss, lr, epoch)


@pytest.mark.parametrize("arch", sorted(PINNED))
def test_losses_are_bit_identical_to_before_the_family_layer(tmp_path, arch):
    sections, expected = PINNED[arch]
    data = make_dataset(tmp_path / "data", n=4)
    model = save_tiny_model(tmp_path / f"tiny-{arch}", arch=arch, fmt="diffusers")
    training = {"max_steps": 4, **sections.get("training", {})}
    job = write_job(tmp_path / "job.toml", model, data, tmp_path / "out", sections={**sections, "training": training})
    cfg = load_job(job)
    recorder = LossRecorder()
    train(cfg, default_paths(cfg), reporter=recorder)
    assert recorder.losses == expected
