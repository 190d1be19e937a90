"""A Flux.1 / SD 3 job made on the LoRA tab (through the form functions the Start button calls) writes the
family and its separate files into the job's TOML, and the job passes `trainer check` on tiny models."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# [model] key -> the file `trainer tiny-model --format split-files` writes for it
_FILES = {"flux": {"clip_l": "clip_l.safetensors", "t5xxl": "t5xxl.safetensors", "vae": "ae.safetensors"},
          "sd3": {"clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors", "t5xxl": "t5xxl.safetensors",
                  "vae": "ae.safetensors"}}


def _index(name: str) -> int:
    from ui.forms import form_fields

    return [f.name for f in form_fields("lora")].index(name)


@pytest.mark.parametrize("arch", sorted(_FILES))
def test_a_flow_job_from_the_lora_form_writes_its_family_and_files(tmp_path, arch):
    from tests.helpers import make_dataset
    from trainer.config import load_job
    from trainer.models.tiny import save_tiny_model
    from trainer.preflight import preflight
    from ui.forms import job_from_values, values_from_job
    from ui.job_files import job_toml

    files = save_tiny_model(tmp_path / f"tiny-{arch}", arch=arch, fmt="split-files")
    data = tmp_path / "data"
    make_dataset(data, n=2)
    values = values_from_job("lora", load_job(ROOT / "presets" / "demo-lora.toml", complete=False))
    chosen = {"model.base": str(files / "transformer.safetensors"), "model.arch": arch, "dataset.dir": str(data),
              **{f"model.{key}": str(files / name) for key, name in _FILES[arch].items()}}
    for name, value in chosen.items():
        values[_index(name)] = value
    text = job_toml(job_from_values("lora", values, base_dir=str(tmp_path)))
    model = tomllib.loads(text)["model"]
    assert {k: model.get(k) for k in ("base", "arch", *_FILES[arch])} == \
        {"base": chosen["model.base"], "arch": arch, **{k: chosen[f"model.{k}"] for k in _FILES[arch]}}
    if arch == "flux":
        assert not model.get("clip_g")  # Flux.1 has no CLIP-G: nothing the form did not fill is written
    job = tmp_path / "job.toml"
    job.write_text(text)
    preflight(load_job(job))  # `trainer check` accepts it: the files load as the family's parts
