"""How many steps a job runs. `trainer check` and `trainer run` both call this, so the count the user is shown
is exactly the count the run does.

The data is one endless stream of batches (epoch after epoch, each in its seeded order). Process `rank` of
`world` takes global batch number m*world + rank as its m-th micro-batch, and an optimizer step consumes
`grad_accum` micro-batches on every process. So a step is a pure function of its number, which makes resuming
exact and keeps epochs whole across any number of GPUs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config.job import JobConfig
from .config.sections import TrainingSection


@dataclass(frozen=True)
class TrainingPlan:
    batches_per_epoch: int  # batches in one pass over the repeated dataset, all processes together
    batch_size: int  # per process
    grad_accum: int
    world_size: int
    total_steps: int

    @property
    def batches_per_step(self) -> int:
        return self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> float:
        return self.batches_per_epoch / self.batches_per_step

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps * self.batches_per_step / self.batches_per_epoch)

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.batches_per_step

    def global_batch_index(self, step: int, micro: int, rank: int) -> int:
        return (step * self.grad_accum + micro) * self.world_size + rank

    def epoch_of(self, step: int) -> int:
        """1-based epoch the given step works in."""
        return self.global_batch_index(step, 0, 0) // self.batches_per_epoch + 1


def make_plan(batches_per_epoch: int, batch_size: int, grad_accum: int, world_size: int,
              max_steps: int, epochs: int) -> TrainingPlan:
    if batches_per_epoch <= 0:
        raise ValueError("the dataset yields no batches")
    per_step = grad_accum * world_size
    total = max_steps if max_steps > 0 else math.ceil(epochs * batches_per_epoch / per_step)
    return TrainingPlan(batches_per_epoch, batch_size, grad_accum, world_size, max(total, 1))


def build_plan(cfg: JobConfig, data, world_size: int | None = None) -> TrainingPlan:
    """The plan of a job over `data` (a TrainData: anything with batches_per_epoch, the batches of one epoch) for
    `world_size` processes (default: the job's training.num_processes)."""
    tr = cfg.training
    return make_plan(data.batches_per_epoch, tr.batch_size, tr.gradient_accumulation_steps,
                     world_size or tr.num_processes, tr.max_steps, tr.epochs)


def warmup_steps(training: TrainingSection, total_steps: int) -> int:
    """LR warmup in steps: lr_warmup_steps when set, else lr_warmup_ratio of the run (Kohya GUI's percentage)."""
    if training.lr_warmup_steps:
        return training.lr_warmup_steps
    return round(training.lr_warmup_ratio * total_steps)
