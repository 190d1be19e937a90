"""The model-family layer's own tests: the engine asks the family (no arch names outside trainer/families),
no import circles across packages, detection of every family from keys and configs, the options each family
refuses (the same in `trainer check` as in `trainer run`), and the rectified-flow objective's formulas."""
from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import make_dataset, write_job
from trainer.config import ConfigError, load_job
from trainer.families import (CHROMA, DDPM, FAMILIES, FLOW, FLUX, SD3, SDXL, DetectionError, family_from_configs,
                              family_from_keys)
from trainer.families.options import OBJECTIVE_OPTIONS, option_refusal
from trainer.flow_matching import FlowObjective, draw_sigmas, flux_shift, shift_sigmas, sigma_weights

ROOT = Path(__file__).resolve().parent.parent
ARCH_TEST = re.compile(r'"sdxl"|"sd15"|"sd2"|arch ==')
# Where a family id may still be spelled outside trainer/families, and why.
ALLOWED_ARCH_NAMES = {
    "trainer/config/kohya.py": "Kohya's own argument and GUI key named sdxl (its --sdxl switch), not an arch test",
    "trainer/config/sections.py": "generated from the schema: the arch choices listed in a comment",
    "ui/estimates.py": "`r.arch == arch`: an earlier job's recorded family id against this job's, no family named "
                       "(its assumed class-image speed is the family's class_image_seconds)",
}


def test_only_the_family_folder_names_families():
    found = []
    for folder in ("trainer", "ui"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("trainer/families/") or rel in ALLOWED_ARCH_NAMES:
                continue
            found += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                      if ARCH_TEST.search(line)]
    assert found == []


def _module_imports(root: Path) -> dict[str, set[str]]:
    """Every import (also inside functions) of every project module, as an arrow to the module file it names."""
    files = {}
    for package in ("trainer", "ui"):
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        return next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in files), None)

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets |= {resolve(f"{base}.{a.name}") for a in node.names} | {resolve(base)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _circles_across_packages(root: Path) -> list[list[str]]:
    """Circles whose files lie in two or more folders (a package's __init__ lies in its own folder)."""
    folder = {name: name if (root / name.replace(".", "/") / "__init__.py").is_file() else name.rpartition(".")[0]
              for name in _module_imports(root)}
    return [c for c in _circles(_module_imports(root)) if len({folder[m] for m in c}) > 1]


def test_no_import_circle_across_packages():
    assert _circles_across_packages(ROOT) == []


def test_the_circle_finder_finds_a_circle(tmp_path):
    """The test above can fail: a made-up config -> methods -> config circle is found."""
    for rel, text in {"trainer/__init__.py": "", "trainer/config/__init__.py": "", "ui/__init__.py": "",
                      "trainer/config/a.py": "def f():\n    from ..methods import b\n",
                      "trainer/methods/__init__.py": "", "trainer/methods/b.py": "from ..config.a import f\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert _circles_across_packages(tmp_path) == [["trainer.config.a", "trainer.methods.b"]]


def test_the_specs_import_no_torch_and_nothing_above_them():
    code = ("import sys, trainer.families, trainer.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for path in (ROOT / "trainer/families").glob("*.py"):
        if path.name.endswith("adapter.py"):
            continue  # the torch side
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                pytest.fail(f"{path.name} imports {node.module} from above trainer/families")


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_transformer_families_from_single_file_keys(prefix):
    flux = [f"{prefix}double_blocks.0.img_attn.qkv.weight", f"{prefix}single_blocks.0.linear1.weight"]
    assert family_from_keys(flux, "f") == "flux"
    assert family_from_keys(flux + [f"{prefix}distilled_guidance_layer.in_proj.weight"], "c") == "chroma"
    assert family_from_keys([f"{prefix}joint_blocks.0.x_block.attn.qkv.weight"], "s") == "sd3"


def test_families_from_diffusers_configs_and_refusals():
    assert family_from_configs({"_class_name": "FluxPipeline"}, {}, "x") == "flux"
    assert family_from_configs({"_class_name": "DiffusionPipeline"},
                               {"transformer": {"_class_name": "SD3Transformer2DModel"}}, "x") == "sd3"
    assert family_from_configs({"_class_name": "StableDiffusionXLPipeline"},
                               {"unet": {"addition_embed_type": "text_time"}}, "x") == "sdxl"
    with pytest.raises(DetectionError, match="model_index.json names 'Foo'"):
        family_from_configs({"_class_name": "Foo"}, {}, "x")
    with pytest.raises(DetectionError, match="LoRA"):
        family_from_keys(["lora_unet_x.lora_down.weight"], "y")


def test_family_specs_say_what_each_family_is():
    assert {f.id for f in FAMILIES.values() if f.objective == FLOW} == {"sd3", "flux", "chroma"}
    for spec in (SD3, FLUX, CHROMA):
        assert spec.native_resolution == 1024 and spec.latent_channels == 16
        assert all(not te.trainable for te in spec.text_encoders if te.kind == "t5-xxl")
        assert spec.methods == ("lora",)
        assert "sd-scripts" in spec.refusal("dreambooth") and "T5-XXL" in spec.refusal("textual_inversion")
    assert SDXL.refusal("dreambooth") is None and SDXL.kohya_text_prefixes == ("lora_te1", "lora_te2")
    assert CHROMA.trainable_text_encoders == () and FLUX.trainable_text_encoders == (0,)
    assert FLUX.modelspec_base("flow") == "flux-1-dev" and FLUX.ss_base_model_version == "flux1"


# --- refused options: the same message from `check` as from `run` ----------------------------------------
_SET = {"model.prediction_type": "v_prediction", "training.min_snr_gamma": 5.0, "training.debiased_estimation": True,
        "training.zero_terminal_snr": True, "training.noise_offset": 0.05, "training.multires_noise_iterations": 6,
        "training.multires_noise_discount": 0.5, "training.ip_noise_gamma": 0.1, "training.min_timestep": 100,
        "training.max_timestep": 900, "training.discrete_flow_shift": 1.5, "training.sigmoid_scale": 2.0,
        "training.mode_scale": 1.0, "training.weighting_scheme": "cosmap", "training.guidance_scale": 3.5,
        "training.model_prediction_type": "sigma_scaled"}


def test_every_objective_option_has_a_test_value():
    assert set(_SET) == set(OBJECTIVE_OPTIONS)


def _job(tmp_path, tiny_sd15_dir, name: str, value, arch: str = "auto") -> Path:
    section, key = name.split(".")
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=2)
    sections = {"model": {"base": str(tiny_sd15_dir), "arch": arch}, "lora": {"rank": 4, "alpha": 2}}
    sections.setdefault(section, {})[key] = value
    return write_job(tmp_path / f"{key}.toml", tiny_sd15_dir, data, tmp_path / f"out-{key}", sections=sections)


def _check_and_run_errors(job: Path) -> tuple[str, str]:
    from trainer.loop import default_paths, train
    from trainer.preflight import preflight

    errors = []
    for action in (lambda cfg: preflight(cfg), lambda cfg: train(cfg, default_paths(cfg))):
        with pytest.raises(ConfigError) as caught:
            action(load_job(job))
        errors.append(str(caught.value))
    return errors[0], errors[1]


@pytest.mark.parametrize("name", sorted(n for n, (objective, _) in OBJECTIVE_OPTIONS.items() if objective == FLOW))
def test_flow_options_are_refused_for_sd_by_name_in_check_as_in_run(tmp_path, tiny_sd15_dir, name):
    """The tiny SD 1.x model is detected (arch = auto): both refuse once the family is known."""
    check, run = _check_and_run_errors(_job(tmp_path, tiny_sd15_dir, name, _SET[name]))
    assert check == run
    assert f"{name} = " in check and "does not apply to SD 1.x" in check


@pytest.mark.parametrize("name", sorted(n for n, (objective, _) in OBJECTIVE_OPTIONS.items() if objective == DDPM))
def test_ddpm_options_are_refused_for_flux_by_name(tmp_path, tiny_sd15_dir, name):
    """A job that names its family (arch = "flux") is refused when it is read, before `check` or `run` load
    anything: the one message names the option and the reason."""
    with pytest.raises(ConfigError) as caught:
        load_job(_job(tmp_path, tiny_sd15_dir, name, _SET[name], arch="flux"))
    assert f"{name} = " in str(caught.value) and "does not apply to Flux.1 (flux)" in str(caught.value)
    assert "rectified flow" in str(caught.value)


def test_methods_a_family_cannot_train_are_refused_with_the_reason(tmp_path, tiny_sd15_dir):
    job = _job(tmp_path, tiny_sd15_dir, "training.seed", 3, arch="sd3")
    text = job.read_text().replace('method = "lora"', 'method = "textual_inversion"')
    job.write_text(text + '\n[textual_inversion]\ntoken = "<x>"\ninit_word = "cat"\n')
    with pytest.raises(ConfigError, match="textual_inversion.* is not available for SD 3/3.5: .*T5-XXL"):
        load_job(job)


# --- the rectified-flow objective --------------------------------------------------------------------------
def test_flow_objective_interpolates_and_targets_the_velocity():
    objective = FlowObjective()
    x0, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    t = torch.tensor([250.0, 1000.0])
    noisy = objective.noisy(x0, noise, t, None)
    assert torch.allclose(noisy[0], 0.75 * x0[0] + 0.25 * noise[0]) and torch.allclose(noisy[1], noise[1])
    assert torch.equal(objective.target(x0, noise, t), noise - x0)


def test_sigma_draws_are_the_generator_s_and_in_range():
    for sampling in ("uniform", "sigma", "logit_normal", "shift", "flux_shift", "mode"):
        a = draw_sigmas(64, torch.Generator().manual_seed(1), "cpu", sampling)
        b = draw_sigmas(64, torch.Generator().manual_seed(1), "cpu", sampling)
        assert torch.equal(a, b) and bool(((a >= 0) & (a <= 1)).all()), sampling
    assert shift_sigmas(torch.tensor([0.5]), 3.0).item() == pytest.approx(0.75)  # 1.5 / 2
    assert math.log(flux_shift(256)) == pytest.approx(0.5) and math.log(flux_shift(4096)) == pytest.approx(1.15)
    shifted = draw_sigmas(4096, torch.Generator().manual_seed(0), "cpu", "shift", shift=3.0)
    plain = torch.sigmoid(torch.randn(4096, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(shifted, shift_sigmas(plain, 3.0)) and shifted.mean() > plain.mean()


def test_loss_weighting_schemes():
    s = torch.tensor([0.25, 0.5])
    assert torch.equal(sigma_weights(s, "none"), torch.ones(2))
    assert torch.allclose(sigma_weights(s, "sigma_sqrt"), torch.tensor([16.0, 4.0]))
    assert torch.allclose(sigma_weights(s, "cosmap"), 2 / (math.pi * (1 - 2 * s + 2 * s**2)))



def test_prediction_types_loss_by_hand():
    """sd-scripts' model_prediction_type: the output read three ways against the one target noise - x0."""
    x0 = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 3.0]]]])
    noise = torch.tensor([[[[0.0, 1.0]]], [[[-1.0, 2.0]]]])
    out = torch.tensor([[[[2.0, 0.0]]], [[[1.0, -1.0]]]])
    t = torch.tensor([250.0, 500.0])  # sigma 0.25, 0.5
    # noisy = 0.75 x0 + 0.25 noise | 0.5 x0 + 0.5 noise; target = noise - x0
    noisy = torch.tensor([[[[0.75, -1.25]]], [[[-0.25, 2.5]]]])
    target = torch.tensor([[[[-1.0, 3.0]]], [[[-1.5, -1.0]]]])
    cases = {  # (type, weighting): the read prediction, the per-example weights
        ("raw", "none"): (out, [1.0, 1.0]),
        ("additive", "none"): (torch.tensor([[[[2.75, -1.25]]], [[[0.75, 1.5]]]]), [1.0, 1.0]),
        ("sigma_scaled", "none"): (torch.tensor([[[[0.25, -1.25]]], [[[-0.75, 3.0]]]]), [1.0, 1.0]),
        ("sigma_scaled", "sigma_sqrt"): (torch.tensor([[[[0.25, -1.25]]], [[[-0.75, 3.0]]]]), [16.0, 4.0]),
    }
    for (kind, scheme), (read, weights) in cases.items():
        objective = FlowObjective(model_prediction_type=kind, weighting_scheme=scheme)
        assert torch.allclose(objective.noisy(x0, noise, t, None), noisy)
        pred = objective.prediction(out, noisy, t)
        assert torch.allclose(pred, read), kind
        expected = torch.tensor([((read[i] - target[i]) ** 2).mean() * weights[i] for i in range(2)])
        assert torch.allclose(objective.losses(pred, objective.target(x0, noise, t), t), expected), (kind, scheme)
    with pytest.raises(ValueError, match="model_prediction_type"):
        FlowObjective(model_prediction_type="v").prediction(out, noisy, t)


# --- the UI: the family is picked or detected, and fields that do not apply to it hide ------------------------
def test_form_shows_the_fields_of_the_family(tiny_sd15_dir):
    from ui.forms import family_visibility, form_family, form_fields

    names = [f.name for f in form_fields("lora")]

    def shown(arch, base):
        family, note = form_family(arch, base)
        return {n for n, v in zip(names, family_visibility("lora", family)) if v}, note

    flux, note = shown("flux", "")
    assert "Flux.1" in note and "chosen" in note
    assert "training.guidance_scale" in flux and "training.min_snr_gamma" not in flux
    assert "model.prediction_type" not in flux and "lora.conv_rank" not in flux
    sd, note = shown("auto", str(tiny_sd15_dir))  # detected from the folder's configs, without loading it
    assert "SD 1.x" in note and "detected" in note
    assert "training.min_snr_gamma" in sd and "training.discrete_flow_shift" not in sd
    everything, note = shown("auto", "org/some-hub-model")
    assert everything == set(names) and "every field is shown" in note


@pytest.fixture(scope="module")
def tiny_flow_dirs(tmp_path_factory):
    """One tiny random diffusers folder per rectified-flow family, made once for the module."""
    from trainer.models.tiny import save_tiny_model

    folder = tmp_path_factory.mktemp("models")
    return {arch: save_tiny_model(folder / f"tiny-{arch}", arch=arch, fmt="diffusers")
            for arch in ("sd3", "flux", "chroma")}


# Values for the options a family refuses beyond the objective's own (its parts, its denoiser's layout).
_FAMILY_SET = {"training.clip_skip": 2, "lora.train_conv": True, "lora.conv_rank": 4, "lora.conv_alpha": 2.0,
               "lora.train_blocks": "double", "lora.train_single_block_indices": "0",
               "lora.train_text_encoder": True, "model.clip_l": "clip_l.safetensors",
               "model.clip_g": "clip_g.safetensors"}
_FLOW_FAMILIES = {"sd3": "SD 3/3.5", "flux": "Flux.1", "chroma": "Chroma"}


def _refused_options(arch: str) -> list[str]:
    from trainer.config.schema import FIELDS

    return sorted(f.name for f in FIELDS if f.section and option_refusal(f.name, FAMILIES[arch]))


def test_every_refused_option_has_a_test_value():
    assert {n for arch in _FLOW_FAMILIES for n in _refused_options(arch)} <= set(_SET) | set(_FAMILY_SET)


@pytest.mark.parametrize("arch,name", [(arch, name) for arch in _FLOW_FAMILIES for name in _refused_options(arch)])
def test_refused_options_for_a_detected_flow_model_in_check_as_in_run(tmp_path, tiny_flow_dirs, arch, name):
    """arch = auto: the tiny SD3 / Flux.1 / Chroma folder is detected from its configs by `check` and loaded
    by `run`; both refuse every option the family refuses (the DDPM objective's, and its parts') with the
    same one-line message, before any training starts."""
    value = _SET.get(name, _FAMILY_SET.get(name))
    if name.startswith("model.clip"):
        from safetensors.torch import save_file

        value = tmp_path / value
        save_file({"w": torch.zeros(1)}, str(value))  # a readable file: the refusal is the family's, not the path's
    check, run = _check_and_run_errors(_job(tmp_path, tiny_flow_dirs[arch], name, str(value) if
                                            isinstance(value, Path) else value))
    assert check == run and "\n" not in check
    assert f"{name} = " in check and f"does not apply to {_FLOW_FAMILIES[arch]} ({arch})" in check


_METHOD_SECTIONS = {"dreambooth": {"dreambooth": {"instance_prompt": "a photo of sks cat",
                                                 "class_prompt": "a photo of a cat"}},
                    "finetune": {},
                    "textual_inversion": {"textual_inversion": {"token": "<x>", "init_word": "cat"}}}


@pytest.mark.parametrize("arch,method", [(a, m) for a in _FLOW_FAMILIES for m in sorted(_METHOD_SECTIONS)])
def test_methods_a_detected_flow_model_cannot_train_in_check_as_in_run(tmp_path, tiny_flow_dirs, arch, method):
    """DreamBooth, full fine-tune and textual inversion are not offered for SD3 / Flux.1 / Chroma (issue 21);
    a job naming one is refused with the reason, the same line from `check` and `run`."""
    assert method not in FAMILIES[arch].methods
    data = tmp_path / "data"
    make_dataset(data, n=2)
    job = write_job(tmp_path / "job.toml", tiny_flow_dirs[arch], data, tmp_path / "out", method=method,
                    sections={"model": {"arch": "auto"}, **_METHOD_SECTIONS[method]})
    check, run = _check_and_run_errors(job)
    assert check == run and "\n" not in check
    assert f'method = "{method}" is not available for {_FLOW_FAMILIES[arch]}: ' in check
    assert FAMILIES[arch].refusal(method) in check


# --- host RAM: the transformer families load their frozen base straight in the training dtype ---------------
def test_flow_families_load_in_bf16_under_bf16_and_sd_in_fp32(tiny_flow_dirs, tiny_sd15_dir):
    from trainer.config.sections import ModelSection
    from trainer.models.loading import base_load_dtype

    for arch, folder in tiny_flow_dirs.items():
        cfg = ModelSection(base=str(folder))
        assert base_load_dtype(cfg, torch.bfloat16, "bf16") == torch.bfloat16, arch
        assert base_load_dtype(cfg, torch.float16, "fp16") == torch.float32, arch  # the VAE stays fp32 then
    assert base_load_dtype(ModelSection(base=str(tiny_sd15_dir)), torch.bfloat16, "bf16") == torch.float32


def test_a_bf16_flux_run_never_holds_an_fp32_frozen_base(tmp_path, tiny_flow_dirs, monkeypatch):
    """The loop asks the loader for bf16: every frozen weight arrives in bf16 (no fp32 copy is made and cast
    later), and the LoRA weights that learn are fp32."""
    import trainer.loop as loop
    from tests.test_mixed_precision import fresh_accelerator_state
    from trainer.loop import default_paths, train

    seen = {}
    real = loop.load_base_model

    def spy(model_cfg, device, dtype, quantize=None):
        model = real(model_cfg, device=device, dtype=dtype, quantize=quantize)
        seen["dtypes"] = {p.dtype for m in (model.unet, model.vae, *model.text_encoders) if m is not None
                          for p in m.parameters()}
        seen["model"] = model
        return model

    monkeypatch.setattr(loop, "load_base_model", spy)
    fresh_accelerator_state()  # accelerate keeps one precision per process; the tests before trained in fp32
    data = tmp_path / "data"
    make_dataset(data, n=2)
    job = write_job(tmp_path / "job.toml", tiny_flow_dirs["flux"], data, tmp_path / "out",
                    sections={"training": {"mixed_precision": "bf16", "cpu_mixed_precision": True,
                                          "max_steps": 1, "batch_size": 1}})
    try:
        train(load_job(job), default_paths(load_job(job)))
    finally:
        fresh_accelerator_state()
    assert seen["dtypes"] == {torch.bfloat16}
    params = list(seen["model"].unet.named_parameters())
    assert {p.dtype for n, p in params if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in params if "lora_" not in n} == {torch.bfloat16}
