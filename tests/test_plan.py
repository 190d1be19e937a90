"""plan.py: exact step counts from repeats, epochs, batch size, gradient accumulation, DDP world size and
max_steps, and the global batch index every process takes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from tests.helpers import make_dataset
from trainer.config import parse_job
from trainer.data import TrainData, scan_dataset
from trainer.plan import build_plan, make_plan, warmup_steps


def job(data_dir, **training):
    return parse_job({"method": "lora", "model": {"base": "builtin:tiny-sd15"},
                      "dataset": {"dir": str(data_dir), "resolution": 64, "min_bucket_reso": 64,
                                  "max_bucket_reso": 128, "bucket_reso_steps": 32, "repeats": 1},
                      "training": training})


@pytest.mark.parametrize("batches, accum, world, max_steps, epochs, total, plan_epochs", [
    (10, 1, 1, 0, 1, 10, 1),
    (10, 1, 1, 0, 3, 30, 3),
    (10, 2, 1, 0, 3, 15, 3),   # 30 batches / 2 per step
    (10, 1, 2, 0, 3, 15, 3),   # two processes share each epoch
    (10, 2, 2, 0, 1, 3, 2),    # ceil(10 / 4) = 3 steps reach into a second epoch
    (10, 3, 1, 0, 2, 7, 3),    # ceil(20 / 3) = 7
    (10, 1, 1, 25, 1, 25, 3),  # max_steps wins over epochs
    (10, 2, 2, 4, 9, 4, 2),
    (1, 1, 1, 0, 1, 1, 1),
])
def test_make_plan_counts_steps_exactly(batches, accum, world, max_steps, epochs, total, plan_epochs):
    plan = make_plan(batches, 2, accum, world, max_steps, epochs)
    assert plan.total_steps == total and plan.epochs == plan_epochs
    assert plan.batches_per_step == accum * world and plan.effective_batch_size == 2 * accum * world
    assert plan.steps_per_epoch == batches / (accum * world)


def test_every_global_batch_is_taken_once_in_order():
    plan = make_plan(10, 1, 2, 3, 5, 1)
    taken = sorted(plan.global_batch_index(step, micro, rank)
                   for step in range(plan.total_steps) for micro in range(2) for rank in range(3))
    assert taken == list(range(plan.total_steps * 6))
    assert [plan.epoch_of(s) for s in range(5)] == [1, 1, 2, 2, 3]  # 6 batches per step, 10 per epoch


def test_a_dataset_without_batches_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        make_plan(0, 1, 1, 1, 0, 1)


def test_build_plan_from_a_dataset_with_repeats(tmp_path):
    make_dataset(tmp_path / "data" / "3_kiln shape", n=3)   # 9 samples
    make_dataset(tmp_path / "data" / "plain", n=2, seed=1)  # 2 x dataset.repeats
    for batch, accum, world, epochs, repeats in [(2, 1, 1, 2, 1), (2, 2, 1, 3, 2), (1, 1, 2, 1, 3)]:
        cfg = job(tmp_path / "data", batch_size=batch, gradient_accumulation_steps=accum, epochs=epochs,
                  num_processes=world)
        cfg.dataset.repeats = repeats
        data = TrainData(scan_dataset(cfg.dataset), cfg.dataset, batch, cfg.training.seed)
        samples = 9 + 2 * repeats
        assert data.index.num_repeated == samples
        plan = build_plan(cfg, data)
        # One bucket here (all 64x64), so the batches of an epoch are ceil(samples / batch).
        assert plan.batches_per_epoch == math.ceil(samples / batch)
        assert plan.world_size == world
        assert plan.total_steps == math.ceil(epochs * plan.batches_per_epoch / (accum * world))
        assert build_plan(cfg, data, world_size=4).world_size == 4  # the launched world wins


def test_warmup_from_steps_or_a_fraction_of_the_run():
    training = SimpleNamespace(lr_warmup_steps=0, lr_warmup_ratio=0.1)
    assert warmup_steps(training, 205) == 20
    training.lr_warmup_steps = 7
    assert warmup_steps(training, 205) == 7
    assert warmup_steps(SimpleNamespace(lr_warmup_steps=0, lr_warmup_ratio=0.0), 100) == 0
