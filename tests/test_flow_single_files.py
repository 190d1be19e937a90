"""SD3, Flux and Chroma load offline from the single files people have: all-in-one (ComfyUI / Stability,
`model.diffusion_model.` + `text_encoders.*` + `first_stage_model.`), and the separate files (BFL's transformer
file without prefix, ae.safetensors, clip_l/clip_g/t5xxl in fp16 or fp8). Tiny files in the real key layouts."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainer.families.chroma.model import CHROMA_LAYOUT
from trainer.families.chroma.tiny import make_tiny_chroma
from trainer.families.detect import family_from_keys
from trainer.families.dit.detect import bundled_variant
from trainer.families.dit.loading import load_components
from trainer.families.dit.single_file import write_single_files
from trainer.families.flux.keymap import flux_rows
from trainer.families.flux.model import FLUX_LAYOUT
from trainer.families.flux.tiny import make_tiny_flux
from trainer.families.sd3.model import SD3_LAYOUT
from trainer.families.sd3.tiny import make_tiny_sd3
from trainer.models.errors import ModelError

FAMILIES = {"flux": (make_tiny_flux, FLUX_LAYOUT), "chroma": (make_tiny_chroma, CHROMA_LAYOUT),
            "sd3": (make_tiny_sd3, SD3_LAYOUT)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))


def _assert_same(expected, loaded, names):
    for name in names:
        a, b = expected[name].state_dict(), loaded[name].state_dict()
        assert a.keys() <= b.keys() or name != "transformer"
        for key, tensor in a.items():
            if key.endswith("position_ids"):
                continue
            assert torch.equal(tensor, b[key]), (name, key)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_all_in_one_file_loads(tmp_path, family):
    make, layout = FAMILIES[family]
    components = make()
    path = write_single_files(layout, components, tmp_path / "model.safetensors", all_in_one=True)["model"]
    keys = load_file(str(path)).keys()
    assert any(k.startswith("model.diffusion_model.") for k in keys) and family_from_keys(keys, "f") == family
    loaded, _ = load_components(layout, None, str(path))
    _assert_same(components, loaded, [n for n in components if n.startswith(("transformer", "vae", "text_encoder"))])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_separate_files_load(tmp_path, family):
    make, layout = FAMILIES[family]
    components = make()
    files = write_single_files(layout, components, tmp_path / "parts", all_in_one=False)
    transformer_keys = load_file(str(files["transformer"])).keys()
    assert not any(k.startswith("model.") for k in transformer_keys)  # BFL's bare layout
    assert "encoder.conv_in.weight" in load_file(str(files["vae"]))  # ae.safetensors: original VAE names
    loaded, _ = load_components(layout, None, str(files["transformer"]), {k: str(v) for k, v in files.items()})
    _assert_same(components, loaded, [n for n in components if n.startswith(("transformer", "vae", "text_encoder"))])


def test_fp8_t5_file_is_upcast(tmp_path):
    components = make_tiny_flux()
    files = write_single_files(FLUX_LAYOUT, components, tmp_path / "parts", all_in_one=False)
    t5 = load_file(str(files["t5xxl"]))
    fp8 = tmp_path / "t5xxl_fp8_e4m3fn.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in t5.items()}, str(fp8))
    loaded, _ = load_components(FLUX_LAYOUT, None, str(files["transformer"]),
                                {**{k: str(v) for k, v in files.items()}, "t5xxl": str(fp8)})
    weight = loaded["text_encoder_2"].state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"]
    original = components["text_encoder_2"].state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, original.to(torch.float8_e4m3fn).float())


@pytest.mark.parametrize("family, key", [("flux", "clip_l"), ("flux", "t5xxl"), ("chroma", "t5xxl"),
                                         ("sd3", "clip_g")])
def test_missing_text_encoder_is_one_clear_line(tmp_path, family, key):
    make, layout = FAMILIES[family]
    files = write_single_files(layout, make(), tmp_path / "parts", all_in_one=False)
    given = {k: str(v) for k, v in files.items() if k != key}
    with pytest.raises(ModelError) as e:
        load_components(layout, None, str(files["transformer"]), given)
    assert f"[model] {key}" in str(e.value) and "\n" not in str(e.value)


def test_sd3_runs_without_t5(tmp_path):
    files = write_single_files(SD3_LAYOUT, make_tiny_sd3(), tmp_path / "parts", all_in_one=False)
    given = {k: str(v) for k, v in files.items() if k != "t5xxl"}
    loaded, _ = load_components(SD3_LAYOUT, None, str(files["transformer"]), given)
    assert loaded["text_encoder_3"] is None and loaded["tokenizer_3"] is None


def test_missing_vae_is_named(tmp_path):
    files = write_single_files(FLUX_LAYOUT, make_tiny_flux(), tmp_path / "parts", all_in_one=False)
    with pytest.raises(ModelError, match=r"\[model\] vae"):
        load_components(FLUX_LAYOUT, None, str(files["transformer"]),
                        {k: str(v) for k, v in files.items() if k != "vae"})


def test_bundled_variants():
    assert bundled_variant("flux", ["guidance_in.in_layer.weight", "double_blocks.0.x"]) == "flux-dev"
    assert bundled_variant("flux", ["double_blocks.0.x"]) == "flux-schnell"
    assert bundled_variant("sd3", [f"joint_blocks.{i}.x" for i in range(38)]) == "sd35-large"
    assert bundled_variant("sd3", [f"joint_blocks.{i}.x_block.attn2.qkv.weight" for i in range(24)]) == "sd35-medium"
    assert bundled_variant("sd3", [f"model.diffusion_model.joint_blocks.{i}.x" for i in range(24)]) == "sd3-medium"


def test_a_model_of_another_family_is_named(tmp_path):
    files = write_single_files(CHROMA_LAYOUT, make_tiny_chroma(), tmp_path / "parts", all_in_one=False)
    with pytest.raises(ModelError, match="chroma checkpoint, not a flux one"):
        load_components(FLUX_LAYOUT, None, str(files["transformer"]), {k: str(v) for k, v in files.items()})


@pytest.mark.parametrize("chroma", [False, True])
def test_flux_key_table_matches_diffusers_converter_at_full_width(chroma):
    """diffusers' Flux/Chroma converters hard-code the real 3072 width, so Kiln's table is checked against them
    on a full-width, one-block model built on the meta device (names and shapes; no memory)."""
    from diffusers import ChromaTransformer2DModel, FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import (convert_chroma_transformer_checkpoint_to_diffusers,
                                                     convert_flux_transformer_checkpoint_to_diffusers)
    from trainer.families.dit.keymap import to_original
    cls = ChromaTransformer2DModel if chroma else FluxTransformer2DModel
    extra = dict(approximator_layers=1) if chroma else dict(guidance_embeds=True)
    with torch.device("meta"):
        model = cls(num_layers=1, num_single_layers=1, **extra)
    state = model.state_dict()
    original = to_original(state, flux_rows(model.config, chroma=chroma), prefix="model.diffusion_model.")
    convert = convert_chroma_transformer_checkpoint_to_diffusers if chroma else convert_flux_transformer_checkpoint_to_diffusers
    converted = convert(dict(original))
    assert converted.keys() == state.keys()
    assert all(converted[k].shape == state[k].shape for k in state)


def test_sd3_key_table_matches_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
    from trainer.families.dit.keymap import to_original
    from trainer.families.sd3.keymap import sd3_rows
    transformer = make_tiny_sd3()["transformer"]
    state = transformer.state_dict()
    converted = convert_sd3_transformer_checkpoint_to_diffusers(to_original(state, sd3_rows(transformer.config)))
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("fmt", ["diffusers", "single-file", "split-files"])
def test_tiny_model_cli_files_reload(tmp_path, family, fmt):
    """`trainer tiny-model OUT --arch sd3|flux|chroma --format ...` writes files that load back as the same model."""
    from trainer.cli import main
    from trainer.families import adapter_for
    from trainer.models.tiny import TINY_NOTICE
    make, layout = FAMILIES[family]
    out = tmp_path / ("model.safetensors" if fmt == "single-file" else "model")
    assert main(["tiny-model", str(out), "--arch", family, "--format", fmt]) == 0
    assert main(["tiny-model", str(out), "--arch", family, "--format", fmt]) != 0  # never over a file
    pipeline_class = adapter_for(family).pipeline_class()
    if fmt == "split-files":
        files = {p.stem: str(p) for p in out.glob("*.safetensors")}
        files["vae"] = files.pop("ae")
        loaded, _ = load_components(layout, pipeline_class, files.pop("transformer"), files)
    else:
        loaded, _ = load_components(layout, pipeline_class, str(out))
    if fmt != "single-file":
        assert TINY_NOTICE in (out / "README.txt").read_text()
    _assert_same(make(seed=0), loaded, ["transformer", "vae", "text_encoder"])


@pytest.mark.parametrize("variant, params", [("flux-dev", 11_901_408_320), ("flux-schnell", 11_891_178_560),
                                             ("chroma", 8_899_983_424), ("sd35-large", 8_056_627_520),
                                             ("sd35-medium", 2_243_171_520), ("sd3-medium", 2_028_328_000)])
def test_bundled_full_size_configs(variant, params):
    """The bundled configs build the real architectures (on the meta device: no memory), whose original-layout
    key names detect as the variant they came from."""
    import json

    from diffusers import ChromaTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel
    from trainer.families.dit.keymap import to_original
    from trainer.families.sd3.keymap import sd3_rows
    from trainer.models.config_dir import BUNDLED_CONFIGS
    config = json.loads((BUNDLED_CONFIGS / variant / "transformer" / "config.json").read_text())
    cls = {"FluxTransformer2DModel": FluxTransformer2DModel, "ChromaTransformer2DModel": ChromaTransformer2DModel,
           "SD3Transformer2DModel": SD3Transformer2DModel}[config["_class_name"]]
    with torch.device("meta"):
        model = cls.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == params
    rows = sd3_rows(model.config) if variant.startswith("sd3") else flux_rows(model.config, chroma=variant == "chroma")
    keys = to_original(model.state_dict(), rows).keys()
    family = family_from_keys(keys, variant)
    assert bundled_variant(family, keys) == variant


def test_vae_file_replaces_a_diffusers_folders_vae(tmp_path):
    from diffusers import FluxPipeline
    from trainer.families.dit.tiny_files import write_tiny
    folder = write_tiny(FLUX_LAYOUT, FluxPipeline, make_tiny_flux(seed=0), tmp_path / "model", "diffusers")
    other = make_tiny_flux(seed=1)
    files = write_single_files(FLUX_LAYOUT, other, tmp_path / "parts", all_in_one=False)
    loaded, _ = load_components(FLUX_LAYOUT, FluxPipeline, str(folder), {"vae": str(files["vae"])})
    _assert_same(other, loaded, ["vae"])


def _with_real_t5_vocab(path, component: str):
    """The file with its stored configs saying its T5 has the real 32,128-piece vocabulary (a full-size
    T5-XXL's, whose tokenizer no single file carries), its tensors unchanged."""
    import json

    from safetensors import safe_open
    from trainer.models.single_file import METADATA_CONFIGS_KEY
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    configs = json.loads(metadata[METADATA_CONFIGS_KEY])
    configs[f"{component}/config.json"]["vocab_size"] = 32128
    metadata[METADATA_CONFIGS_KEY] = json.dumps(configs)
    save_file(load_file(str(path)), str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("layout_kind", ["t5xxl-file", "all-in-one"])
def test_single_file_t5_without_a_tokenizer_is_one_line_at_check_time(tmp_path, capsys, monkeypatch, layout_kind):
    """Issue 21: a real T5-XXL as a single file (model.t5xxl, or inside an all-in-one model file) carries no
    tokenizer. Without model.t5_tokenizer (and none in the local hub cache) `check` says so in one line naming
    both keys and what to download, and `run` refuses with the same line before loading the model; with
    model.t5_tokenizer set to a tokenizer folder, `check` passes."""
    import trainer.families.dit.t5 as t5
    from tests.helpers import make_dataset, write_job
    from trainer.cli import main
    from trainer.families.dit.t5 import tiny_t5_tokenizer
    from trainer.worker import EXIT_BAD_INPUT, EXIT_OK
    monkeypatch.setattr(t5, "REAL_T5_TOKENIZERS", (("kiln-tests/no-such-t5", None),))  # whatever this cache holds
    if layout_kind == "t5xxl-file":
        files = write_single_files(FLUX_LAYOUT, make_tiny_flux(), tmp_path / "parts", all_in_one=False)
        base, model = files["transformer"], {"vae": str(files["vae"]), "clip_l": str(files["clip_l"]),
                                             "t5xxl": str(files["t5xxl"])}
        source = f"model.t5xxl = {files['t5xxl']}"
    else:
        base = write_single_files(SD3_LAYOUT, make_tiny_sd3(), tmp_path / "sd3.safetensors", all_in_one=True)["model"]
        model, source = {}, f"model.base = {base}"
    _with_real_t5_vocab(base, "text_encoder_2" if layout_kind == "t5xxl-file" else "text_encoder_3")
    data = make_dataset(tmp_path / "data", n=2)
    job = write_job(tmp_path / "job.toml", base, data, tmp_path / "out",
                    sections={"model": model, "training": {"max_steps": 1}})
    lines = []
    for verb in ("check", "run"):
        assert main([verb, str(job)]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        lines.append(next(line for line in err.splitlines() if "model.t5_tokenizer" in line))
        assert "loading base model" not in err and "Traceback" not in err, err
    assert lines[0] == lines[1]
    assert source in lines[0] and "google/t5-v1_1-xxl" in lines[0] and "tokenizer.json" in lines[0]
    tiny_t5_tokenizer().save_pretrained(tmp_path / "t5-tokenizer")
    job = write_job(tmp_path / "job.toml", base, data, tmp_path / "out", sections={
        "model": {**model, "t5_tokenizer": str(tmp_path / "t5-tokenizer")}, "training": {"max_steps": 1}})
    assert main(["check", str(job)]) == EXIT_OK, capsys.readouterr().err


def test_a_folder_without_tokenizer_files_is_no_t5_tokenizer(tmp_path):
    """transformers 5 reads an empty folder as an empty T5 tokenizer (every word <unk>) without an error;
    model.t5_tokenizer naming such a folder is refused, saying what it should hold."""
    from trainer.families.dit.t5 import t5_tokenizer_for
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"model.t5_tokenizer = .*empty: cannot read a T5 tokenizer there \(no "
                                         r"tokenizer files\); it should hold tokenizer.json"):
        t5_tokenizer_for(32128, tmp_path / "empty")
