"""Learn tests: training on a tiny concept lowers the denoising loss at fixed noises and timesteps."""
from __future__ import annotations

import pytest

from tests.helpers import make_dataset, write_job
from trainer.config import load_job
from trainer.data import TrainData, scan_dataset
from trainer.evaluate import fixed_denoising_loss
from trainer.loop import default_paths, train
from trainer.models import load_base_model


@pytest.mark.parametrize("base", ["builtin:tiny-sd15", "builtin:tiny-sdxl"])
def test_lora_learns_a_small_concept(tmp_path, base):
    data_dir = make_dataset(tmp_path / "data", n=3)
    job = write_job(tmp_path / "job.toml", base, data_dir, tmp_path / "out", sections={
        "training": {"max_steps": 120, "batch_size": 3, "learning_rate": 3e-3},
        "lora": {"rank": 8, "alpha": 8, "train_conv": True}})
    cfg = load_job(job)
    eval_data = TrainData(scan_dataset(cfg.dataset), cfg.dataset, 3, seed=0)

    before = fixed_denoising_loss(load_base_model(cfg.model), eval_data)
    result = train(cfg, default_paths(cfg))
    after = fixed_denoising_loss(result.model, eval_data)
    assert after <= 0.7 * before, (before, after)
