"""Learn tests: training on a tiny concept lowers the denoising loss at fixed noises and timesteps."""
from __future__ import annotations

import pytest

from tests.helpers import learn_losses, make_dataset, write_job


@pytest.mark.parametrize("base", ["builtin:tiny-sd15", "builtin:tiny-sdxl"])
def test_lora_learns_a_small_concept(tmp_path, base):
    data_dir = make_dataset(tmp_path / "data", n=3)
    job = write_job(tmp_path / "job.toml", base, data_dir, tmp_path / "out", sections={
        "training": {"max_steps": 120, "batch_size": 3, "learning_rate": 3e-3},
        "lora": {"rank": 8, "alpha": 8, "train_conv": True}})
    before, after, _ = learn_losses(job)
    assert after <= 0.7 * before, (before, after)
