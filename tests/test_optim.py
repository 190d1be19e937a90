"""Every optimizer a job can name builds from the job's parameter groups and steps on a tiny model; the
schedule-free one hands out its evaluation weights for saving and sampling and takes its training point back."""
from __future__ import annotations

import warnings

import pytest
import torch

from trainer.config.schema import LR_FREE_OPTIMIZERS, OPTIMIZER_NAMES
from trainer.optim import build_optimizer, build_lr_scheduler, evaluation_weights


def tiny_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(32, 8)
    y = x.sum(dim=1, keepdim=True)
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "lr": 5e-3}]
    return model, groups, lambda: torch.nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_each_optimizer_builds_and_steps(name):
    model, groups, loss_fn = tiny_problem()
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # paged AdamW says it falls back on the CPU
        lr = 1.0 if name in LR_FREE_OPTIMIZERS else 1e-2
        optimizer = build_optimizer(name, groups, lr=lr, weight_decay=0.01)
        scheduler = build_lr_scheduler("constant", optimizer, 0, 10, 1, 1.0)
        for _ in range(5):
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert all(not torch.equal(b, a) for b, a in zip(before, after)), f"{name} left a parameter unchanged"
    group_lrs = [group["lr"] for group in optimizer.param_groups]
    if name in LR_FREE_OPTIMIZERS:  # they estimate one step size and refuse differing group LRs
        assert group_lrs == [lr, lr]
    else:
        assert group_lrs == [lr, 5e-3]


def test_an_unknown_optimizer_names_the_choices():
    _, groups, _ = tiny_problem()
    with pytest.raises(ValueError, match="adamwschedulefree"):
        build_optimizer("sgd9000", groups, lr=1e-3, weight_decay=0.0)


def test_schedule_free_weights_are_swapped_in_for_saving_and_back_for_training():
    model, groups, loss_fn = tiny_problem()
    optimizer = build_optimizer("adamwschedulefree", groups, lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad()
    training_point = [p.detach().clone() for p in model.parameters()]
    with evaluation_weights(optimizer):
        saved = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(s, t) for s, t in zip(saved, training_point))
    assert all(torch.allclose(p, t, atol=1e-6) for p, t in zip(model.parameters(), training_point))
    loss_fn().backward()
    optimizer.step()  # still in train mode: a schedule-free optimizer refuses to step in eval mode


def test_evaluation_weights_leaves_other_optimizers_alone():
    model, groups, loss_fn = tiny_problem()
    optimizer = build_optimizer("adamw", groups, lr=1e-2, weight_decay=0.0)
    loss_fn().backward()
    optimizer.step()
    before = [p.detach().clone() for p in model.parameters()]
    with evaluation_weights(optimizer):
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_a_schedule_free_lora_run_trains_and_saves(tmp_path):
    from tests.helpers import make_dataset, write_job
    from trainer.config import load_job
    from trainer.loop import default_paths, train

    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", make_dataset(tmp_path / "data", n=2),
                    tmp_path / "out", sections={"training": {"max_steps": 2, "optimizer": "adamwschedulefree"},
                                                "output": {"save_every_n_steps": 1}})
    cfg = load_job(job)
    result = train(cfg, default_paths(cfg))  # a step outside train mode would raise here
    assert result.status == "done" and [p.name for p in result.outputs] == [
        "test-lora-step00000001.safetensors", "test-lora.safetensors"]
    # The file holds the evaluation weights, not the training point the model is left at (saved in fp32 here,
    # so without the swap they would be equal).
    from safetensors.torch import load_file

    saved = load_file(result.outputs[-1])
    name, param = next((n, p) for n, p in result.model.unet.named_parameters() if "lora_A" in n)
    module = name.split(".lora_A")[0]
    kohya = "lora_unet_" + module.replace(".", "_") + ".lora_down.weight"
    assert saved[kohya].shape == param.shape and not torch.equal(saved[kohya], param.detach().float())
