"""The loss options of [training] (sd-scripts' definitions), each checked against its published formula written
out here by hand on fixed tensors, and a resumed run with all of them on that matches a straight run bit for bit."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from tests.helpers import StopAt, make_dataset, write_job
from trainer import diffusion
from trainer.config import ConfigError, load_job
from trainer.loop import TrainingError, default_paths, train

SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
TIMESTEPS = torch.tensor([0, 10, 250, 500, 999])


def sd_scheduler(**extra) -> DDPMScheduler:
    return DDPMScheduler(**SD_SCHEDULE, **extra)


def hand_alphas_cumprod() -> torch.Tensor:
    """SD's scaled_linear schedule: betas = linspace(sqrt(b0), sqrt(b1), T)^2, abar = prod(1 - beta)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1 - betas, dim=0)


def hand_snr(t: torch.Tensor) -> torch.Tensor:
    abar = hand_alphas_cumprod()[t]
    return abar / (1 - abar)


def fixed_pair():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(5, 4, 3, 3, generator=g)
    target = torch.randn(5, 4, 3, 3, generator=g) * 2
    return pred, target


# --- losses -----------------------------------------------------------------------------------------------

def test_l2_and_l1_are_per_example_means():
    pred, target = fixed_pair()
    d = pred - target
    assert torch.allclose(diffusion.example_losses(pred, target, "l2"), (d * d).sum(dim=(1, 2, 3)) / 36)
    assert torch.allclose(diffusion.example_losses(pred, target, "l1"), d.abs().sum(dim=(1, 2, 3)) / 36)


@pytest.mark.parametrize("kind", ["huber", "smooth_l1"])
def test_huber_losses_follow_sd_scripts_formula(kind):
    pred, target = fixed_pair()
    c = torch.tensor([0.1, 0.5, 1.0, 0.02, 0.3])
    got = diffusion.example_losses(pred, target, kind, c)
    for i in range(5):
        total = 0.0
        for p, q in zip(pred[i].flatten().tolist(), target[i].flatten().tolist()):
            root = math.sqrt((p - q) ** 2 + c[i].item() ** 2) - c[i].item()
            total += 2 * c[i].item() * root if kind == "huber" else 2 * root
        assert got[i].item() == pytest.approx(total / 36, rel=1e-5)


def test_huber_thresholds_per_schedule():
    sched, c = sd_scheduler(), 0.1
    t = TIMESTEPS
    assert torch.equal(diffusion.huber_thresholds(sched, t, c, "constant"), torch.full((5,), c))
    # exponential: exp(-alpha t) with alpha = -ln(c) / T, i.e. 1 at t = 0 and c at t = T
    expected = torch.tensor([math.exp(math.log(c) * x / 1000) for x in t.tolist()])
    assert torch.allclose(diffusion.huber_thresholds(sched, t, c, "exponential"), expected)
    # snr: (1 - c) / (1 + sigma)^2 + c, sigma = sqrt((1 - abar) / abar)
    abar = hand_alphas_cumprod()[t]
    sigma = ((1 - abar) / abar).sqrt()
    assert torch.allclose(diffusion.huber_thresholds(sched, t, c, "snr"), (1 - c) / (1 + sigma) ** 2 + c)


def test_debiased_estimation_weights():
    sched, t = sd_scheduler(), TIMESTEPS
    snr = hand_snr(t).clamp(max=1000)
    assert torch.allclose(diffusion.debiased_weights(sched, t, "epsilon"), 1 / snr.sqrt(), rtol=1e-4)
    assert torch.allclose(diffusion.debiased_weights(sched, t, "v_prediction"), 1 / (snr + 1), rtol=1e-4)


def test_objective_multiplies_min_snr_and_debiased_weights():
    sched, t = sd_scheduler(), TIMESTEPS
    pred, target = fixed_pair()
    obj = diffusion.Objective(sched, "epsilon", loss="l1", min_snr_gamma=5.0, debiased_estimation=True)
    snr = hand_snr(t)
    by_hand = (pred - target).abs().mean(dim=(1, 2, 3)) * snr.clamp(max=5) / snr / snr.clamp(max=1000).sqrt()
    assert torch.allclose(obj.losses(pred, target, t), by_hand, rtol=1e-4)


# --- timesteps --------------------------------------------------------------------------------------------

def test_uniform_timesteps_are_the_plain_draw_within_bounds():
    sched = sd_scheduler()
    full = diffusion.sample_timesteps(64, sched, torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(full, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(1)))
    window = diffusion.sample_timesteps(4000, sched, torch.Generator().manual_seed(1), "cpu", 200, 300)
    assert int(window.min()) == 200 and int(window.max()) == 299


def test_logit_normal_timesteps():
    sched = sd_scheduler()
    got = diffusion.sample_timesteps(16, sched, torch.Generator().manual_seed(5), "cpu", 100, 900,
                                     "logit_normal", logit_mean=0.5, logit_std=2.0)
    z = torch.randn((16,), generator=torch.Generator().manual_seed(5))
    expected = [min(899, math.floor(100 + 800 / (1 + math.exp(-(v * 2.0 + 0.5))))) for v in z.tolist()]
    assert got.tolist() == expected


# --- noise ------------------------------------------------------------------------------------------------

def test_pyramid_noise_follows_its_definition():
    latents = torch.zeros(2, 4, 16, 12)
    got = diffusion.sample_noise(latents, torch.Generator().manual_seed(9), 0.0, multires_iterations=3,
                                 multires_discount=0.4)
    # By hand, drawing in the same order: the base noise, then per level a factor r in [2, 4) and a coarse
    # noise of size (h / r^i, w / r^i) upsampled bilinearly and weighted 0.4^i; finally divided by the std.
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(2, 4, 16, 12, generator=g)
    up = torch.nn.Upsample(size=(16, 12), mode="bilinear")
    for i in range(3):
        r = torch.rand((), generator=g).item() * 2 + 2
        hn, wn = max(1, int(16 / r**i)), max(1, int(12 / r**i))
        noise = noise + up(torch.randn(2, 4, hn, wn, generator=g)) * 0.4**i
        if hn == 1 or wn == 1:
            break
    assert torch.allclose(got, noise / noise.std(), atol=1e-6)
    assert got.std().item() == pytest.approx(1.0, abs=1e-5)


def test_input_perturbation_noises_the_input_not_the_target():
    sched = sd_scheduler()
    g = torch.Generator().manual_seed(2)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([5, 400, 990])
    obj = diffusion.Objective(sched, "epsilon", ip_noise_gamma=0.1)
    noisy = obj.noisy(latents, noise, t, torch.Generator().manual_seed(4))
    extra = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    abar = hand_alphas_cumprod()[t].view(-1, 1, 1, 1)
    by_hand = abar.sqrt() * latents + (1 - abar).sqrt() * (noise + 0.1 * extra)
    assert torch.allclose(noisy, by_hand, atol=1e-5)
    assert torch.equal(obj.target(latents, noise, t), noise)


def test_zero_terminal_snr_rescales_the_schedule():
    rescaled = diffusion.zero_terminal_snr_scheduler(sd_scheduler(prediction_type="v_prediction"))
    # Lin et al. 2023, Algorithm 1: shift sqrt(abar) so its last value is 0, scale so its first is unchanged.
    root = hand_alphas_cumprod().sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    assert torch.allclose(rescaled.alphas_cumprod, root**2, atol=1e-6)
    assert rescaled.alphas_cumprod[-1].item() == 0.0
    assert rescaled.config.prediction_type == "v_prediction"


# --- config and end to end --------------------------------------------------------------------------------

def test_bad_objective_settings_name_the_keys(tmp_path):
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out",
                    sections={"training": {"min_timestep": 500, "max_timestep": 400}})
    with pytest.raises(ConfigError, match="training.min_timestep = 500 must be below training.max_timestep = 400"):
        load_job(job)
    with pytest.raises(ConfigError, match="training.loss.*huber"):
        load_job(job, ["training.min_timestep=0", "training.loss=hubber"])
    with pytest.raises(ConfigError, match="zero_terminal_snr = true needs a v-prediction model"):
        load_job(job, ["training.min_timestep=0", "training.zero_terminal_snr=true", "model.prediction_type=epsilon"])


def test_zero_terminal_snr_refuses_an_epsilon_model(tmp_path, tiny_sd15_dir):
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out",
                    sections={"training": {"zero_terminal_snr": True}})
    cfg = load_job(job)
    # refused by the gate `trainer check` shares, before the model loads
    with pytest.raises(ConfigError, match="zero_terminal_snr = true needs a v-prediction model.*'epsilon'"):
        train(cfg, default_paths(cfg))
    assert not (tmp_path / "out" / "test-lora.safetensors").exists()


def run_jobs(tmp_path, base, data, runs) -> dict:
    """{name: (cfg, result)} for (name, sections, stop-after-step or None) triples, each in its own folder."""
    results = {}
    for name, sections, stop in runs:
        cfg = load_job(write_job(tmp_path / f"{name}.toml", base, data, tmp_path / name, sections=sections))
        results[name] = (cfg, train(cfg, default_paths(cfg), controls=StopAt(stop) if stop else None))
    return results


ALL_OPTIONS = {"loss": "huber", "huber_schedule": "exponential", "huber_c": 0.2, "min_timestep": 100,
               "max_timestep": 900, "timestep_sampling": "logit_normal", "logit_mean": -0.3,
               "multires_noise_iterations": 4, "multires_noise_discount": 0.4, "ip_noise_gamma": 0.1,
               "noise_offset": 0.05, "debiased_estimation": True, "zero_terminal_snr": True,
               "max_steps": 6, "gradient_accumulation_steps": 2}


def test_every_option_resumes_bit_identically(tmp_path, tiny_sd15_dir):
    data = make_dataset(tmp_path / "data")
    sections = {"training": ALL_OPTIONS, "model": {"prediction_type": "v_prediction"}}
    plain = {"training": {"max_steps": 6, "gradient_accumulation_steps": 2},
             "model": {"prediction_type": "v_prediction"}}
    results = run_jobs(tmp_path, tiny_sd15_dir, data,
                       (("straight", sections, None), ("stopped", sections, 2), ("plain", plain, None)))
    cfg, stopped = results["stopped"]
    assert stopped.status == "stopped" and stopped.step == 2
    resumed = train(cfg, default_paths(cfg), resume=True)
    assert resumed.status == "done"
    a, b = load_file(results["straight"][1].outputs[-1]), load_file(resumed.outputs[-1])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the options really changed training (else the comparison proves little)
    c = load_file(results["plain"][1].outputs[-1])
    assert any(not torch.equal(a[k], c[k]) for k in a)


# --- saving and sampling per epoch ------------------------------------------------------------------------

def test_epoch_ends_when_steps_do_not_divide_epochs():
    from trainer.loop import is_due
    from trainer.plan import make_plan

    plan = make_plan(batches_per_epoch=3, batch_size=1, grad_accum=2, world_size=1, max_steps=6, epochs=0)
    # Step n consumes batches 2n-1 and 2n; epochs end after batches 3, 6, 9, 12: at steps 2, 3, 5, 6.
    assert [d for d in range(1, 7) if is_due(plan, d, 0, 1)] == [2, 3, 5, 6]
    assert [d for d in range(1, 7) if is_due(plan, d, 0, 2)] == [3, 6]
    assert [d for d in range(1, 7) if is_due(plan, d, 4, 0)] == [4]
    assert not any(is_due(plan, d, 0, 0) for d in range(1, 7))


def test_save_and_sample_per_epoch_keeping_the_last_saves(tmp_path, tiny_sd15_dir):
    data = make_dataset(tmp_path / "data")  # 4 images, batch 2: an epoch is 2 steps
    out = tmp_path / "out"
    out.mkdir()
    strangers = [out / "test-lora-step00000002-mine.safetensors", out / "other-step00000002.safetensors",
                 out / "test-lora-step00000099.safetensors"]
    for p in strangers:
        p.write_bytes(b"not Kiln's")
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, out, sections={
        "training": {"max_steps": 0, "epochs": 4},
        "output": {"save_every_n_epochs": 1, "keep_last_n_saves": 2},
        "sample": {"prompts": ["kiln shape --s 2"], "every_n_epochs": 2, "at_first_step": True}})
    cfg = load_job(job)
    result = train(cfg, default_paths(cfg))
    assert result.status == "done" and result.step == 8
    ours = sorted(p.name for p in out.glob("test-lora*.safetensors") if p not in strangers)
    assert ours == ["test-lora-step00000004.safetensors", "test-lora-step00000006.safetensors",
                    "test-lora.safetensors"]
    assert all(p.read_bytes() == b"not Kiln's" for p in strangers)
    assert [p.name for p in result.outputs] == ours[:2] + ["test-lora.safetensors"]
    states = sorted(p.name for p in (out / "test-lora-state").iterdir())
    assert states == ["step00000002", "step00000004", "step00000006"]  # output.keep_states = 3
    samples = sorted(p.name for p in (out / "test-lora-samples").glob("*.png"))
    assert samples == ["test-lora-step00000000-00.png", "test-lora-step00000004-00.png",
                       "test-lora-step00000008-00.png"]


# --- EMA --------------------------------------------------------------------------------------------------

def test_ema_files_are_the_hand_computed_average_of_the_saved_weights(tmp_path, tiny_sd15_dir):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    decay = 0.8
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, out, sections={
        "training": {"max_steps": 5, "ema": True, "ema_decay": decay, "ema_every_n_steps": 2, "ema_save": "both"},
        "output": {"save_every_n_steps": 1}})
    cfg = load_job(job)
    result = train(cfg, default_paths(cfg))
    names = {p.name for p in result.outputs}
    assert {"test-lora-step00000001-ema.safetensors", "test-lora-ema.safetensors", "test-lora.safetensors"} <= names

    def files(step):
        stem = "test-lora" if step == 5 else f"test-lora-step{step:08d}"
        return load_file(out / f"{stem}.safetensors"), load_file(out / f"{stem}-ema.safetensors")

    weights, averages = zip(*(files(s) for s in range(1, 6)))
    keys = [k for k in weights[0] if not k.endswith(".alpha")]
    # Step 1 is before the first update: the average is the starting weights (LoRA's up matrices start at 0).
    assert all(torch.equal(averages[0][k], torch.zeros_like(averages[0][k])) for k in keys if "lora_up" in k)
    assert any(not torch.equal(weights[0][k], averages[0][k]) for k in keys)
    for step in (2, 3, 4, 5):
        prev, now, w = averages[step - 2], averages[step - 1], weights[step - 1]
        for k in keys:
            expected = decay * prev[k] + (1 - decay) * w[k] if step % 2 == 0 else prev[k]
            assert torch.allclose(now[k], expected, atol=1e-7, rtol=1e-6), (step, k)


def test_resume_with_ema_is_bit_identical_and_saves_the_average(tmp_path, tiny_sd15_dir):
    data = make_dataset(tmp_path / "data")
    sections = {"training": {"max_steps": 6, "ema": True, "ema_decay": 0.7}, "dataset": {"flip": True},
                "sample": {"prompts": ["kiln shape --s 2"]}}
    both = {**sections, "training": {**sections["training"], "ema_save": "both"},
            "sample": {**sections["sample"], "with_ema": False}}
    runs = run_jobs(tmp_path, tiny_sd15_dir, data,
                    (("straight", sections, None), ("stopped", sections, 3), ("both", both, None)))
    cfg, stopped = runs["stopped"]
    assert stopped.status == "stopped"
    resumed = train(cfg, default_paths(cfg), resume=True)
    straight = load_file(runs["straight"][1].outputs[-1])
    again = load_file(resumed.outputs[-1])
    assert all(torch.equal(straight[k], again[k]) for k in straight)

    # ema_save = "ema" writes the average as NAME.safetensors: the file "both" writes as NAME-ema.safetensors.
    trained = load_file(tmp_path / "both" / "test-lora.safetensors")
    average = load_file(tmp_path / "both" / "test-lora-ema.safetensors")
    assert all(torch.equal(straight[k], average[k]) for k in straight)
    assert any(not torch.equal(straight[k], trained[k]) for k in straight)

    # previews use the average unless sample.with_ema = false; a resumed run makes the same ones
    def final_sample(run):
        return (tmp_path / run / "test-lora-samples" / "test-lora-step00000006-00.png").read_bytes()

    assert final_sample("straight") == final_sample("stopped")
    assert final_sample("straight") != final_sample("both")


@pytest.mark.parametrize("method", ["textual_inversion", "dreambooth"])
def test_ema_of_textual_inversion_and_full_dreambooth(tmp_path, tiny_sd15_dir, method):
    data = make_dataset(tmp_path / "data", n=2)
    decay = 0.6
    extra = ({"textual_inversion": {"token": "<kiln-x>", "init_word": "shape"}} if method == "textual_inversion"
             else {"dreambooth": {"instance_prompt": "sks shape", "prior_preservation": False}})
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out", method=method, sections={
        "training": {"max_steps": 3, "ema": True, "ema_decay": decay, "ema_save": "both", "learning_rate": 1e-2},
        "output": {"save_every_n_steps": 1}, **extra})
    cfg = load_job(job)
    train(cfg, default_paths(cfg))
    out = tmp_path / "out"
    stems = ["test-lora-step00000001", "test-lora-step00000002", "test-lora"]
    w = [load_file(out / f"{stem}.safetensors") for stem in stems]
    e = [load_file(out / f"{stem}-ema.safetensors") for stem in stems]
    changed = 0
    for k in w[0]:
        if not w[0][k].is_floating_point():
            continue
        for s in (1, 2):  # e_s = decay x e_(s-1) + (1 - decay) x w_s
            assert torch.allclose(e[s][k], decay * e[s - 1][k] + (1 - decay) * w[s][k], atol=1e-6, rtol=1e-5), k
        changed += not torch.equal(w[2][k], e[2][k])
    assert changed, "the average equals the trained weights, so the test proves nothing"


# --- validation -------------------------------------------------------------------------------------------

def test_validation_split_is_seeded_and_leaves_the_rest_to_training(tmp_path):
    from trainer.data import scan_dataset
    from trainer.preflight import dataset_index
    from trainer.validation import split_validation

    data = make_dataset(tmp_path / "data", n=10)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out",
                    sections={"validation": {"split": 0.3}})
    cfg = load_job(job)
    index = scan_dataset(cfg.dataset)
    training, held = split_validation(cfg, index)
    assert len(held.items) == 3 and len(training.items) == 7
    assert {i.path for i in training.items} | {i.path for i in held.items} == {i.path for i in index.items}
    assert not {i.path for i in training.items} & {i.path for i in held.items}
    assert [i.path for i in split_validation(cfg, index)[1].items] == [i.path for i in held.items]
    assert [i.path for i in dataset_index(cfg).items] == [i.path for i in training.items]  # what check counts
    other = load_job(job, ["validation.seed=99"])
    assert {i.path for i in split_validation(other, index)[1].items} != {i.path for i in held.items}
    from trainer.data import DatasetError
    with pytest.raises(DatasetError, match="validation.split = 0.5 of 1 subject image"):
        split_validation(load_job(job, ["validation.split=0.5"]), dataclasses_replace(index, items=index.items[:1]))


def test_a_missing_validation_folder_is_named(tmp_path):
    from trainer.data import DatasetError, scan_dataset
    from trainer.validation import split_validation

    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out",
                    sections={"validation": {"dir": "no-such-folder"}})
    cfg = load_job(job)
    with pytest.raises(DatasetError, match=r"job.toml: validation.dir: .*no-such-folder \(validation.dir\) does not"):
        split_validation(cfg, scan_dataset(cfg.dataset))


def test_ema_settings_without_ema_are_flagged(tmp_path):
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out",
                    sections={"training": {"ema_decay": 0.9}, "sample": {"with_ema": False}})
    warnings = load_job(job).warnings
    assert "training.ema_decay = 0.9 has no effect while training.ema = false" in warnings
    assert "sample.with_ema = false has no effect while training.ema = false" in warnings


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_validation_losses_are_fixed_and_reported(tmp_path, tiny_sd15_dir):
    from trainer.data import TrainData
    from trainer.evaluate import fixed_denoising_loss
    from trainer.jobs import StatusWriter, read_events, read_status
    from trainer.progress import RunReporter
    from trainer.validation import split_validation

    data = make_dataset(tmp_path / "data", n=6)
    held_dir = make_dataset(tmp_path / "held", n=2, seed=5)
    reports = []
    for run in ("a", "b"):
        job_dir = tmp_path / f"job-{run}"
        job_dir.mkdir()
        job = write_job(tmp_path / f"{run}.toml", tiny_sd15_dir, data, tmp_path / run, sections={
            "training": {"max_steps": 4}, "validation": {"dir": str(held_dir), "every_n_steps": 2},
            "output": {"save_every_n_steps": 3}, "lora": {"dropout": 0.2}})
        cfg = load_job(job)
        result = train(cfg, default_paths(cfg, job_dir), RunReporter(StatusWriter(job_dir), console=False))
        events, _ = read_events(job_dir)
        reports.append(([(e["step"], e["loss"]) for e in events if e["kind"] == "validation"], read_status(job_dir)))
    (losses, status), (again, _) = reports
    assert [s for s, _ in losses] == [2, 3, 4] and losses == again  # every 2 steps, at the save, at the end
    assert len({v for _, v in losses}) == 3
    # the last one is the fixed yardstick on the held-out folder, in eval mode (no LoRA dropout)
    result.model.unet.eval()
    held = split_validation(cfg, None)[1]
    expected = fixed_denoising_loss(result.model, TrainData(held, cfg.dataset, 2, cfg.validation.seed),
                                    seed=cfg.validation.seed)
    assert losses[-1][1] == pytest.approx(expected, rel=1e-6)
    overall = min(losses, key=lambda sv: sv[1])
    assert status["best_validation"]["step"] == overall[0] and status["validation_loss"] == losses[-1][1]
    # the best step's checkpoint is named (step 2 had none: validated between saves)
    files = {2: None, 3: str(tmp_path / "a" / "test-lora-step00000003.safetensors"),
             4: str(tmp_path / "a" / "test-lora.safetensors")}
    assert status["best_validation"] == {"step": overall[0], "loss": overall[1], "path": files[overall[0]]}


def test_early_stopping_saves_and_names_the_best(tmp_path, tiny_sd15_dir, monkeypatch):
    import trainer.evaluate

    scripted = iter([1.0, 0.8, 0.9, 0.85, 0.1, 0.1])
    monkeypatch.setattr(trainer.evaluate, "fixed_denoising_loss", lambda *a, **k: next(scripted))
    data = make_dataset(tmp_path / "data", n=5)
    out = tmp_path / "out"
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, out, sections={
        "training": {"max_steps": 10}, "output": {"save_every_n_steps": 1, "keep_last_n_saves": 1},
        "validation": {"split": 0.2, "early_stopping_patience": 2}})
    cfg = load_job(job)
    result = train(cfg, default_paths(cfg))
    # step 2 was best; steps 3 and 4 did not beat it: stop after saving step 4, keeping the best despite pruning
    assert result.status == "stopped" and result.early_stopped and result.step == 4
    assert result.best_validation == {"step": 2, "loss": 0.8, "path": str(out / "test-lora-step00000002.safetensors")}
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["test-lora-step00000002.safetensors",
                                                                 "test-lora-step00000004.safetensors"]
    assert (out / "test-lora-state" / "step00000004").is_dir()


# --- Weights & Biases -------------------------------------------------------------------------------------

class FakeWandb:
    """Stands in for the wandb package: records what Kiln calls, sends nothing."""

    def __init__(self):
        self.calls = []
        self.logged: dict[str, dict[int, object]] = {}

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def log(self, values, step):
        for key, value in values.items():
            self.logged.setdefault(key, {})[step] = value

    def finish(self):
        self.calls.append(("finish", {}))

    class Image:
        def __init__(self, path, caption=""):
            self.path, self.caption = path, caption


def test_wandb_gets_the_tensorboard_scalars_and_samples(tmp_path, tiny_sd15_dir, monkeypatch):
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    data = make_dataset(tmp_path / "data", n=5)
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out", sections={
        "training": {"max_steps": 3}, "validation": {"split": 0.2, "every_n_steps": 2},
        "sample": {"prompts": ["kiln shape --s 2"]},
        "logging": {"wandb": True, "wandb_project": "kiln-test", "wandb_run_name": "run-1"}})
    cfg = load_job(job)
    paths = default_paths(cfg)
    train(cfg, paths)
    init = fake.calls[0][1]
    assert init["project"] == "kiln-test" and init["name"] == "run-1"
    assert init["config"]["training"]["max_steps"] == 3 and fake.calls[-1][0] == "finish"

    events = EventAccumulator(str(paths.log_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert set(tags) == {"loss", "loss_avg", "lr", "validation_loss"}
    for tag in tags:
        board = {e.step: e.value for e in events.Scalars(tag)}
        assert board.keys() == fake.logged[tag].keys()
        assert all(board[s] == pytest.approx(fake.logged[tag][s], rel=1e-6) for s in board)
    assert sorted(fake.logged["validation_loss"]) == [2, 3]
    (sample_key,) = [k for k in fake.logged if k.startswith("samples/")]
    assert fake.logged[sample_key][3].path.endswith("test-lora-step00000003-00.png")


def test_wandb_is_never_touched_unless_enabled_and_named_when_missing(tmp_path, tiny_sd15_dir, monkeypatch):
    import sys

    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out",
                    sections={"training": {"max_steps": 1}})
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = load_job(job)
    train(cfg, default_paths(cfg))
    assert fake.calls == [] and fake.logged == {}

    monkeypatch.setitem(sys.modules, "wandb", None)  # "not installed": importing it raises ImportError
    cfg = load_job(job, ["logging.wandb=true", "output.name=second"])
    with pytest.raises(ConfigError, match=r"logging.wandb = true but the wandb package is not installed"):
        train(cfg, default_paths(cfg))
    assert not (tmp_path / "out" / "second.safetensors").exists()


def test_resume_with_validation_replays_the_same_losses_and_best(tmp_path, tiny_sd15_dir):
    from trainer.jobs import StatusWriter, read_events, read_status
    from trainer.progress import RunReporter

    data = make_dataset(tmp_path / "data", n=5)
    # A high learning rate makes the loss jump about, so the best comes before the stop: a resumed run must
    # remember it from the state.
    sections = {"training": {"max_steps": 5, "learning_rate": 0.3}, "lora": {"dropout": 0.1},
                "validation": {"split": 0.2, "every_n_steps": 1}}
    seen = {}
    for name, stops in (("straight", [None]), ("stopped", [2, None])):
        job_dir = tmp_path / f"job-{name}"
        job_dir.mkdir()
        cfg = load_job(write_job(tmp_path / f"{name}.toml", tiny_sd15_dir, data, tmp_path / name, sections=sections))
        for i, stop in enumerate(stops):
            train(cfg, default_paths(cfg, job_dir), RunReporter(StatusWriter(job_dir), console=False),
                  controls=StopAt(stop) if stop else None, resume=i > 0)
        events, _ = read_events(job_dir)
        best = read_status(job_dir)["best_validation"]
        seen[name] = ([(e["step"], e["loss"], e["best"]["step"]) for e in events if e["kind"] == "validation"],
                      (best["step"], best["loss"]))
    assert [s for s, _, _ in seen["straight"][0]] == [1, 2, 3, 4, 5]
    assert seen["straight"][1][0] <= 2, "the best is after the stop, so this proves little"
    assert seen["stopped"] == seen["straight"]


def test_an_early_stopped_job_is_done_and_its_summary_names_the_best(tmp_path, tiny_sd15_dir, monkeypatch):
    import signal

    import trainer.evaluate
    from trainer.cli import main
    from trainer.jobs import read_status

    scripted = iter([0.5, 0.7, 0.6])
    monkeypatch.setattr(trainer.evaluate, "fixed_denoising_loss", lambda *a, **k: next(scripted))
    data = make_dataset(tmp_path / "data", n=5)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "out", sections={
        "training": {"max_steps": 10}, "validation": {"split": 0.2, "every_n_steps": 1,
                                                      "early_stopping_patience": 2}})
    # the worker installs its own signal handlers: give pytest's back afterwards
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        assert main(["run", str(job), "--job-dir", str(job_dir)]) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    status = read_status(job_dir)
    assert status["state"] == "done" and status["early_stopped"] is True and status["step"] == 3
    assert status["best_validation"] == {"step": 1, "loss": 0.5, "path": None}  # step 1 had no checkpoint
    assert status["outputs"] == [str(tmp_path / "out" / "test-lora-step00000003.safetensors")]
