"""trainer/planner.py: the savers training.fit = "auto" and `trainer check --gpu` choose for a job and a GPU
size, cheapest first, from the memory model (torch-free; a table of cases fixed here), and the same choice in
`check` and at the start of `run`."""
from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from tests.helpers import make_dataset, write_job
from trainer.config import parse_job
from trainer.planner import NF4_EFFECT, T5_EFFECT, parse_gpu_size, plan_fit

ROOT = Path(__file__).resolve().parents[1]
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
T5Q = "training.t5_quantization"

CHEAP = {CACHE_L: True, CACHE_T: True, CKPT: True, ADAM8: "adamw8bit"}
FP32, COMPILED = {**PLAIN, "mixed_precision": "no"}, {**PLAIN, "torch_compile": True}

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
    # fp32: fp8 is refused, so int8 is the 8-bit base, taken only where it fits by itself (int8 layers cannot
    # be swapped); where it does not, swapping takes its place
    ("sdxl fp32 12 GB: int8 where fp8 is refused", "sdxl", FP32, {}, 12, {**CHEAP, QUANT: "int8"}, True),
    ("sdxl fp32 10 GB: int8 is not enough, 15 blocks swapped", "sdxl", FP32, {}, 10, {**CHEAP, SWAP: 15}, True),
    # torch.compile refuses swapping: nf4 replaces the fp8 base, and the plan swaps nothing
    ("sdxl compiled 6 GB: only nf4 fits", "sdxl", COMPILED, {}, 6, {**CHEAP, QUANT: "nf4"}, True),
    ("sdxl compiled 5 GB: not even nf4 fits", "sdxl", COMPILED, {}, 5, {**CHEAP, QUANT: "fp8"}, False),
    # swapping fits: nf4 is not chosen
    ("flux 12 GB: fp8 and 10 blocks swapped, not nf4", "flux", PLAIN, {}, 12, {**CHEAP, QUANT: "fp8", SWAP: 10}, True),
    # caching T5-XXL's outputs (T5 alone on the GPU, 9.3 GiB in bf16) is the peak on small cards: an fp8 T5
    # before swapping, nf4 where fp8 is not enough; not at 12 GB, where that phase fits as it is
    ("flux 8 GB: fp8 T5-XXL, then 28 blocks swapped", "flux", PLAIN, {}, 8,
     {**CHEAP, QUANT: "fp8", T5Q: "fp8", SWAP: 28}, True),
    ("flux 6 GB: caching with an fp8 T5 (6.6 GiB) does not fit: nf4 T5", "flux", PLAIN, {}, 6,
     {**CHEAP, QUANT: "fp8", T5Q: "nf4", SWAP: 43}, True),
    ("flux 5 GB: caching with an nf4 T5 (5.2 GiB) does not fit", "flux", PLAIN, {}, 5,
     {**CHEAP, QUANT: "fp8", T5Q: "nf4", SWAP: 57}, False),
    ("sd3 8 GB: fp8 T5-XXL", "sd3", PLAIN, {}, 8, {**CHEAP, QUANT: "fp8", T5Q: "fp8", SWAP: 14}, True),
    ("a T5 the job quantizes already stays as written", "flux", {**PLAIN, "t5_quantization": "int8"}, {}, 8,
     {**CHEAP, QUANT: "fp8", SWAP: 28}, True),
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


def check_then_run(tmp_path, base, training: dict, gpu: str, capsys, monkeypatch):
    """`check --gpu` on a tiny job with training.fit = "auto", then `run` with the same GPU size: (the check's
    fit data, the savers it chose, the run's config, its log lines, whether the run turned checkpointing on)."""
    import trainer.loop as loop
    from trainer.cli import main
    from trainer.config import load_job
    from trainer.loop import default_paths, enable_gradient_checkpointing, train
    from trainer.progress import RunReporter

    make_dataset(tmp_path / "data", n=2)
    training = {"max_steps": 1, "optimizer": "adamw", "cache_latents": False, "cache_text_encoder_outputs": False,
                "mixed_precision": "no", "fit": "auto", **training}
    path = write_job(tmp_path / "job.toml", base, tmp_path / "data", tmp_path / "out",
                     sections={"training": training, "dataset": {"resolution": 64}})
    before = path.read_text()
    assert main(["check", str(path), "--gpu", gpu, "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["fit"]
    chosen = {s["key"]: s["value"] for s in fit["savers"]}
    assert main(["check", str(path), "--gpu", gpu]) == 0
    report = capsys.readouterr().out
    size = parse_gpu_size(gpu)
    assert f'# fit to {size:g} GiB (trainer/planner.py; training.fit = "auto": the run turns these on)' in report
    assert f"to fit {size:g} GiB: {', '.join(s['label'] for s in fit['savers'])}" in report

    class Log(RunReporter):
        def __init__(self):
            super().__init__(console=False)
            self.infos = []

        def info(self, message):
            self.infos.append(message)

    monkeypatch.setattr(loop, "enable_gradient_checkpointing", lambda *a: seen.append("checkpointing") or real(*a))
    real, seen, log = enable_gradient_checkpointing, [], Log()
    cfg = load_job(path, [f"training.gpu_memory_gib={size:g}"])
    result = train(cfg, default_paths(cfg), log)
    assert result.status == "done" and seen == ["checkpointing"]
    assert {k: cfg.get(k) for k in chosen} == chosen  # the run turned on what the check chose
    assert f"training.fit: {fit['summary']}" in log.infos
    assert path.read_text() == before
    return fit, chosen, result, log.infos


@pytest.mark.parametrize("gpu, last", [("3.5GB", {QUANT: "int8"}), ("3GB", {SWAP: 7})], ids=["int8", "swapped"])
def test_check_and_run_make_the_same_choice(tmp_path, tiny_sd15_dir, capsys, monkeypatch, gpu, last):
    """The tiny model is estimated as the full-size SD 1.5 it stands for; in fp32 with no saver on it needs
    the caches, checkpointing, 8-bit state and then an int8 base (fp8 is refused in fp32) to fit 3.5 GiB, and
    swapped blocks in place of int8 (not enough by itself there) to fit 3 GiB. `check --gpu` says so, and a
    run with fit = "auto" and the same size turns the same savers on (logged), trains, and keeps the job file
    as it was."""
    import bitsandbytes as bnb

    fit, chosen, result, _ = check_then_run(tmp_path, tiny_sd15_dir, {}, gpu, capsys, monkeypatch)
    assert fit["fits"] and fit["gpu_gib"] == parse_gpu_size(gpu)
    assert chosen == {**CHEAP, **last}
    int8_layers = [m for m in result.model.unet.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert bool(int8_layers) is (QUANT in last)  # the run trains on the base the plan chose


def test_check_and_run_choose_the_same_4_bit_base(tmp_path, tiny_sdxl_dir, capsys, monkeypatch):
    """An SDXL job written with an int8 base cannot swap blocks; at 3.8 GiB the planner puts nf4 in its place
    (the full-size SDXL it stands for, at 64 px, batch 2: about 3.9 GiB with int8, 3.6 with nf4). The check and the
    run choose the same, the run trains on 4-bit layers, and both say what 4 bits do to the result."""
    import bitsandbytes as bnb

    fit, chosen, result, infos = check_then_run(tmp_path, tiny_sdxl_dir, {"base_quantization": "int8"}, "3.8GB",
                                                capsys, monkeypatch)
    assert fit["fits"] and chosen == {CACHE_L: True, CACHE_T: True, CKPT: True, ADAM8: "adamw8bit", QUANT: "nf4"}
    modules = list(result.model.unet.modules())
    # planned before the load: the base is read as nf4, not as the int8 the job file asked for
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in modules)
    assert not any(isinstance(m, bnb.nn.Linear8bitLt) for m in modules)
    assert NF4_EFFECT in infos
    assert any("nf4 base (4-bit), ~30 % slower (estimate:" in line and "blocks cannot be swapped" in line
               for line in infos)


def test_check_refuses_a_bad_gpu_size(tmp_path, tiny_sd15_dir, capsys):
    from trainer.cli import main

    make_dataset(tmp_path / "data", n=1)
    path = write_job(tmp_path / "job.toml", tiny_sd15_dir, tmp_path / "data", tmp_path / "out")
    assert main(["check", str(path), "--gpu", "lots"]) == 2
    assert "--gpu 'lots' is not a GPU memory size" in capsys.readouterr().err


def test_a_4_bit_plan_says_what_it_replaces_what_it_does_and_what_it_costs():
    plan = plan_fit(job(training=COMPILED), "sdxl", 6)
    nf4 = plan.savers[-1]
    assert (nf4.key, nf4.value, nf4.label) == (QUANT, "nf4", "nf4 base (4-bit)")
    assert nf4.source.startswith("estimate:") and nf4.cost == pytest.approx(0.30)
    assert nf4.why.startswith("in place of fp8 base: blocks cannot be swapped in this job (training.blocks_to_swap "
                              "= 1 conflicts with training.torch_compile = true")
    assert plan.slower == pytest.approx(1.2 * 1.3 - 1)
    lines = plan.lines()
    assert f"  {NF4_EFFECT}" in lines and "applied to the full-precision model" in NF4_EFFECT
    assert any(line.startswith('  training.base_quantization = "nf4": nf4 base (4-bit), ~30 % slower') for line in lines)
    fp8_plan = plan_fit(job(training=PLAIN), "sdxl", 5.5)  # swapping fits: no 4-bit words
    assert not fp8_plan.four_bit and NF4_EFFECT not in "\n".join(fp8_plan.lines())


@pytest.mark.parametrize("training, arch, gpu, named", [
    (COMPILED, "sdxl", 5, "with an nf4 base instead, about 5.5 GiB, while training"),
    (PLAIN, "flux", 5, "while caching text-encoder outputs (the largest part: text encoder weights, 4.5 GiB); with "
                       "an nf4 base instead, about 9.7 GiB, while training"),
])
def test_not_fitting_even_with_nf4_says_what_nf4_would_leave(training, arch, gpu, named):
    plan = plan_fit(job(training=training), arch, gpu)
    assert not plan.fits and named in plan.reason
    assert not plan.four_bit  # a 4-bit base that does not fit is not chosen


def test_a_planned_t5_says_what_it_does_and_replaces():
    plan = plan_fit(job(training=PLAIN), "flux", 6)
    t5 = next(s for s in plan.savers if s.key == T5Q)
    assert (t5.value, t5.cost) == ("nf4", 0.0) and t5.source.startswith("estimate:")
    assert t5.why == "fp8 T5-XXL leaves caching its outputs at about 6.6 GiB"
    assert f"  {T5_EFFECT}" in plan.lines() and "LoRA learns against those" in T5_EFFECT
    assert T5_EFFECT not in "\n".join(plan_fit(job(training=PLAIN), "flux", 12).lines())


def test_a_job_that_refuses_nf4_says_so_in_the_reason():
    plan = plan_fit(job(training=COMPILED, lora={"dora": True}), "sdxl", 5)
    assert not plan.fits
    assert 'an nf4 base is refused for this job (training.base_quantization = "nf4" does not work with lora.dora' in plan.reason


def test_the_card_says_what_a_planned_4_bit_base_does_and_costs():
    from trainer.config import load_job
    from ui.preflight_card import QUANTIZED_4BIT, card_html

    plan = plan_fit(job(training=COMPILED), "sdxl", 6)
    report = "\n".join(["total steps: 10   epochs: 1", *plan.after.lines(), "",
                        '# fit to 6 GiB (trainer/planner.py; training.fit = "off": the run keeps the settings as '
                        'written; "auto" would turn these on)', *plan.lines()])
    card = card_html(load_job(ROOT / "presets" / "demo-lora.toml"), True, report, gpu_gib=6.0)
    assert 'data-base="nf4"' in card and html.escape(QUANTIZED_4BIT) in card
    assert "nf4 base (4-bit), ~30 % slower (estimate: each 4-bit weight is dequantized" in card


@pytest.mark.parametrize("written, shown", [("none", None), ("fp8", "fp8"), ("int8", "int8"), ("nf4", "nf4")])
def test_the_card_says_what_the_written_base_does(written, shown):
    from trainer.config import load_job
    from ui.preflight_card import QUANTIZED_4BIT, QUANTIZED_BASE, card_html

    cfg = load_job(ROOT / "presets" / "demo-lora.toml", [f"training.base_quantization={written}",
                                                          "training.mixed_precision=bf16"])  # fp8 needs it
    card = card_html(cfg, True, "total steps: 10   epochs: 1\n", gpu_gib=24.0)
    assert (f'data-base="{shown}"' in card) is (shown is not None)
    assert (html.escape(QUANTIZED_4BIT) in card) is (shown == "nf4")
    assert (html.escape(QUANTIZED_BASE) in card) is (shown in ("fp8", "int8"))


def test_the_card_says_what_a_quantized_t5_does():
    from trainer.config import load_job
    from ui.preflight_card import QUANTIZED_T5, card_html

    plan = plan_fit(job(training=PLAIN), "flux", 8)
    report = "\n".join(["total steps: 10   epochs: 1", *plan.after.lines(), "",
                        '# fit to 8 GiB (trainer/planner.py; training.fit = "off": the run keeps the settings as '
                        'written; "auto" would turn these on)', *plan.lines()])
    cfg = load_job(ROOT / "presets" / "demo-lora.toml")
    card = card_html(cfg, True, report, gpu_gib=8.0)
    assert 'data-t5="fp8"' in card and html.escape(QUANTIZED_T5) in card
    assert "fp8 T5-XXL, ~0 % slower (estimate: nothing per step" in card
    assert "data-t5" not in card_html(cfg, True, "total steps: 10   epochs: 1\n", gpu_gib=24.0)
