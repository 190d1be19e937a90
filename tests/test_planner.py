"""trainer/planner.py: the savers training.fit = "auto" and `trainer check --gpu` choose for a job and a GPU
size, cheapest first, from the memory model (torch-free; a table of cases fixed here), and the same choice in
`check` and at the start of `run`."""
from __future__ import annotations

import json

import pytest

from tests.helpers import make_dataset, write_job
from trainer.config import parse_job
from trainer.planner import parse_gpu_size, plan_fit

SDXL_1024 = {"dataset": {"dir": "/nowhere", "resolution": 1024}}


def job(method="lora", **sections):
    data = {"method": method, "model": {"base": "x"}, **SDXL_1024}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return parse_job(data, complete=False)


PLAIN = {"mixed_precision": "bf16", "optimizer": "adamw", "cache_latents": False,
         "cache_text_encoder_outputs": False}  # no saver on
CACHE_L, CACHE_T, CKPT = "training.cache_latents", "training.cache_text_encoder_outputs", "training.gradient_checkpointing"
ADAM8, QUANT, SWAP = "training.optimizer", "training.base_quantization", "training.blocks_to_swap"

CASES = [
    # (name, arch, training settings, dataset settings, GPU GiB, chosen savers (key: value), fits)
    ("sdxl fits 48 GB as written", "sdxl", PLAIN, {}, 48, {}, True),
    ("sdxl 24 GB: the latent cache is enough", "sdxl", PLAIN, {}, 24, {CACHE_L: True}, True),
    ("sdxl 16 GB: caches and checkpointing", "sdxl", PLAIN, {}, 16,
     {CACHE_L: True, CACHE_T: True, CKPT: True}, True),
    ("sdxl 12 GB: the same", "sdxl", PLAIN, {}, 12, {CACHE_L: True, CACHE_T: True, CKPT: True}, True),
    ("sdxl 8 GB: + 8-bit state and fp8 base", "sdxl", PLAIN, {}, 8,
     {CACHE_L: True, CACHE_T: True, CKPT: True, ADAM8: "adamw8bit", QUANT: "fp8"}, True),
    ("sdxl 5.5 GB: + 4 blocks swapped", "sdxl", PLAIN, {}, 5.5,
     {CACHE_L: True, CACHE_T: True, CKPT: True, ADAM8: "adamw8bit", QUANT: "fp8", SWAP: 4}, True),
    ("sdxl 4 GB: does not fit at all", "sdxl", PLAIN, {}, 4,
     {CACHE_L: True, CACHE_T: True, CKPT: True, ADAM8: "adamw8bit", QUANT: "fp8", SWAP: 32}, False),
    ("captions vary: no text cache; random crop: no latent cache", "sdxl", PLAIN,
     {"shuffle_caption": True, "random_crop": True}, 12, {CKPT: True, ADAM8: "adamw8bit", QUANT: "fp8"}, True),
    ("fp16 VAE caching is the peak: 8 GB cannot fit", "sdxl", {**PLAIN, "mixed_precision": "fp16"}, {}, 7,
     {CACHE_L: True, CACHE_T: True, CKPT: True, ADAM8: "adamw8bit", QUANT: "fp8", SWAP: 32}, False),
    ("sd15 6 GB: the latent cache is enough", "sd15", PLAIN, {"resolution": 512}, 6, {CACHE_L: True}, True),
]


@pytest.mark.parametrize("name, arch, training, dataset, gpu, chosen, fits", CASES, ids=[c[0] for c in CASES])
def test_the_planner_chooses_the_cheapest_savers_that_fit(name, arch, training, dataset, gpu, chosen, fits):
    plan = plan_fit(job(training=training, dataset=dataset), arch, gpu)
    assert {s.key: s.value for s in plan.savers} == chosen
    assert list({s.key: s.value for s in plan.savers}) == list(chosen)  # in order of their cost to speed
    assert plan.fits is fits
    assert (plan.after.vram_gib <= gpu) is fits
    if fits:
        assert not plan.reason
        assert plan.summary().startswith("fits" if not chosen else f"to fit {gpu:g} GiB")
    else:
        assert plan.summary().startswith(f"does not fit {gpu:g} GiB: about")
        assert "lower the resolution or batch size" in plan.reason


def test_the_fp16_case_names_the_phase_that_does_not_fit():
    plan = plan_fit(job(training={**PLAIN, "mixed_precision": "fp16"}), "sdxl", 7)
    assert "while caching latents (the largest part: VAE encoder activations" in plan.reason


def test_each_saver_says_where_its_speed_cost_comes_from():
    plan = plan_fit(job(training=PLAIN), "sdxl", 5.5)
    assert all(s.source.split(":")[0] in {"measured", "published", "estimate"} for s in plan.savers)
    swap = plan.savers[-1]
    assert swap.key == SWAP and swap.cost > 0
    assert plan.slower == pytest.approx(1.2 * 1.05 * (1 + swap.cost) - 1)
    assert "~35 % slower" in plan.summary()


def test_the_plan_is_deterministic_and_leaves_the_job_alone():
    cfg = job(training=PLAIN)
    first, second = plan_fit(cfg, "sdxl", 8), plan_fit(cfg, "sdxl", 8)
    assert first.lines() == second.lines()
    assert cfg.training.optimizer == "adamw" and not cfg.training.gradient_checkpointing


@pytest.mark.parametrize("text, gib", [("12GB", 12.0), ("12 GiB", 12.0), ("8g", 8.0), ("11.5", 11.5)])
def test_gpu_sizes(text, gib):
    assert parse_gpu_size(text) == gib


@pytest.mark.parametrize("text", ["", "twelve", "0GB", "12TB"])
def test_bad_gpu_sizes(text):
    with pytest.raises(ValueError, match="is not a GPU memory size"):
        parse_gpu_size(text)


def test_check_and_run_make_the_same_choice(tmp_path, tiny_sd15_dir, capsys, monkeypatch):
    """The tiny model is estimated as the full-size SD 1.5 it stands for; in fp32 with no saver on it needs
    the caches, checkpointing, 8-bit state and swapped blocks to fit 3.5 GiB. `check --gpu 3.5GB` says so, and
    a run with fit = "auto" and the same size turns the same savers on (logged), trains, and keeps the job file
    as it was."""
    import trainer.loop as loop
    from trainer.cli import main
    from trainer.config import load_job
    from trainer.loop import default_paths, enable_gradient_checkpointing, train
    from trainer.progress import RunReporter

    make_dataset(tmp_path / "data", n=2)
    training = {"max_steps": 1, "optimizer": "adamw", "cache_latents": False, "cache_text_encoder_outputs": False,
                "mixed_precision": "no", "fit": "auto"}
    path = write_job(tmp_path / "job.toml", tiny_sd15_dir, tmp_path / "data", tmp_path / "out",
                     sections={"training": training, "dataset": {"resolution": 64}})
    before = path.read_text()
    assert main(["check", str(path), "--gpu", "3.5GB", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["fit"]
    assert fit["fits"] and fit["gpu_gib"] == 3.5
    chosen = {s["key"]: s["value"] for s in fit["savers"]}
    assert list(chosen) == [CACHE_L, CACHE_T, CKPT, ADAM8, SWAP], chosen  # every kind, swapping too
    assert main(["check", str(path), "--gpu", "3.5GB"]) == 0
    report = capsys.readouterr().out
    assert '# fit to 3.5 GiB (trainer/planner.py; training.fit = "auto": the run turns these on)' in report
    assert f"to fit 3.5 GiB: {', '.join(s['label'] for s in fit['savers'])}" in report

    class Log(RunReporter):
        def __init__(self):
            super().__init__(console=False)
            self.infos = []

        def info(self, message):
            self.infos.append(message)

    monkeypatch.setattr(loop, "enable_gradient_checkpointing", lambda *a: seen.append("checkpointing") or real(*a))
    real, seen, log = enable_gradient_checkpointing, [], Log()
    cfg = load_job(path, ["training.gpu_memory_gib=3.5"])
    result = train(cfg, default_paths(cfg), log)
    assert result.status == "done" and seen == ["checkpointing"]
    assert {k: cfg.get(k) for k in chosen} == chosen
    assert f"training.fit: {fit['summary']}" in log.infos
    assert path.read_text() == before


def test_check_refuses_a_bad_gpu_size(tmp_path, tiny_sd15_dir, capsys):
    from trainer.cli import main

    make_dataset(tmp_path / "data", n=1)
    path = write_job(tmp_path / "job.toml", tiny_sd15_dir, tmp_path / "data", tmp_path / "out")
    assert main(["check", str(path), "--gpu", "lots"]) == 2
    assert "--gpu 'lots' is not a GPU memory size" in capsys.readouterr().err
