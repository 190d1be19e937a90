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
from trainer.families.options import OBJECTIVE_OPTIONS
from trainer.flow_matching import FlowObjective, draw_sigmas, flux_shift, shift_sigmas, sigma_weights

ROOT = Path(__file__).resolve().parent.parent
ARCH_TEST = re.compile(r'"sdxl"|"sd15"|"sd2"|arch ==')
# Where a family id may still be spelled outside trainer/families, and why.
ALLOWED_ARCH_NAMES = {
    "trainer/config/kohya.py": "Kohya's own argument and GUI key named sdxl (its --sdxl switch), not an arch test",
    "trainer/config/sections.py": "generated from the schema: the arch choices listed in a comment",
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
        "training.mode_scale": 1.0, "training.weighting_scheme": "cosmap", "training.guidance_scale": 3.5}


def test_every_objective_option_has_a_test_value():
    assert set(_SET) == set(OBJECTIVE_OPTIONS)


def _job(tmp_path, tiny_sd15_dir, name: str, value, arch: str = "auto") -> Path:
    section, key = name.split(".")
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, n=2)
    sections = {section: {key: value}, "model": {"base": str(tiny_sd15_dir), "arch": arch},
                "lora": {"rank": 4, "alpha": 2}}
    if section == "model":
        sections["model"][key] = value
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
def tiny_flux_dir(tmp_path_factory):
    from trainer.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-flux", arch="flux", fmt="diffusers")


@pytest.mark.parametrize("name", sorted(n for n, (objective, _) in OBJECTIVE_OPTIONS.items() if objective == DDPM))
def test_ddpm_options_are_refused_for_a_detected_flux_model_in_check_as_in_run(tmp_path, tiny_flux_dir, name):
    """arch = auto: the tiny Flux.1 folder is detected from its configs by `check` and loaded by `run`; both
    refuse the option with the same message."""
    check, run = _check_and_run_errors(_job(tmp_path, tiny_flux_dir, name, _SET[name]))
    assert check == run
    assert f"{name} = " in check and "does not apply to Flux.1 (flux)" in check
