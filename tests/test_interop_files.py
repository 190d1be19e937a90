"""Files that other tools read: A1111's .pt embeddings pass its safe-unpickle check, LoRA files hold no layers the
model never uses, the single-file writer streams, and a partly written latent cache resumes bit for bit."""
from __future__ import annotations

import collections
import io
import pickle
import re
import shutil
import weakref
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from tests.helpers import StopAt, make_dataset, write_job
from trainer.config import load_job
from trainer.loop import default_paths, train

# --- AUTOMATIC1111's safe-unpickle rule, as its modules/safe.py states it ---------------------------------------
# check_zip_filenames: every entry must match this; check_pt: exactly one "<folder>/data.pkl".
A1111_ENTRY = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
A1111_DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")
# RestrictedUnpickler.find_class: the only globals a pickle may name.
A1111_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "IntStorage"), ("torch", "LongStorage"),
    ("torch", "DoubleStorage"), ("torch", "ByteStorage"), ("torch", "float32"),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"), ("__builtin__", "set"),
}


class A1111Unpickler(pickle.Unpickler):
    """RestrictedUnpickler's rule: named globals only, and storages only as ('storage', ...) persistent ids."""

    def find_class(self, module, name):
        if (module, name) not in A1111_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")
        return super().find_class(module, name)

    def persistent_load(self, saved_id):
        assert saved_id[0] == "storage"
        return torch.storage.TypedStorage(_internal=True)  # an empty stand-in, as A1111 returns


def a1111_safe_unpickle_check(path) -> None:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        bad = [name for name in names if not A1111_ENTRY.match(name)]
        assert not bad, f"A1111 refuses entries {bad}"
        pickles = [name for name in names if A1111_DATA_PKL.match(name)]
        assert len(pickles) == 1, pickles
        A1111Unpickler(io.BytesIO(archive.read(pickles[0]))).load()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_a1111_embedding_passes_its_safe_unpickle_check(tmp_path, dtype):
    from trainer.export.textual_inversion import EmbeddingExportInfo, save_embedding_a1111

    vectors = torch.randn(3, 32)
    path = save_embedding_a1111(tmp_path / "emb.pt", arch="sd15", vectors=[vectors], dtype=dtype,
                                info=EmbeddingExportInfo(token="<kiln>", title="emb", step=5,
                                                         base_model_hash="ab" * 32, base_model_name="base"))
    a1111_safe_unpickle_check(path)
    data = torch.load(path, weights_only=True)  # what A1111 then does, and what diffusers does
    assert torch.equal(data["string_to_param"]["*"], vectors.to(dtype))
    assert data["name"] == "<kiln>" and data["step"] == 5 and data["sd_checkpoint"] == "ab" * 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.pt"]


def test_the_a1111_rule_catches_what_torch_save_writes(tmp_path):
    """The check above is a real one: a plain torch.save file is refused for its bookkeeping entries."""
    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}}, tmp_path / "plain.pt")
    with pytest.raises(AssertionError, match="A1111 refuses entries"):
        a1111_safe_unpickle_check(tmp_path / "plain.pt")
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        A1111Unpickler(io.BytesIO(pickle.dumps(collections.Counter()))).load()


# --- no LoRA layers on text-encoder layers the UNet never sees ---------------------------------------------------

def train_job(job_path, controls=None, resume=False):
    cfg = load_job(job_path)
    return train(cfg, default_paths(cfg), controls=controls, resume=resume)


@pytest.mark.parametrize("arch,clip_skip,unused", [("sdxl", 1, {"lora_te1_": [1]}), ("sd15", 2, {"lora_te_": [1]})],
                         ids=["sdxl-penultimate", "sd15-clip-skip-2"])
def test_text_encoder_lora_has_no_unused_layers_and_no_zero_modules(tmp_path, arch, clip_skip, unused):
    """Tiny text encoders have 2 layers. SDXL reads CLIP-L's penultimate layer (its last one gets no gradient);
    clip_skip = 2 on SD 1.x does the same to its only encoder. Every module exported must have learned."""
    job = write_job(tmp_path / "job.toml", f"builtin:tiny-{arch}", make_dataset(tmp_path / "data"),
                    tmp_path / "out", sections={"training": {"max_steps": 2, "clip_skip": clip_skip},
                                                "lora": {"rank": 4, "alpha": 2, "train_text_encoder": True}})
    final = train_job(job).outputs[-1]
    tensors = load_file(final)
    for prefix, layers in unused.items():
        for layer in layers:
            assert not [k for k in tensors if k.startswith(f"{prefix}text_model_encoder_layers_{layer}_")]
        assert [k for k in tensors if k.startswith(f"{prefix}text_model_encoder_layers_0_")]
    if arch == "sdxl":  # the second encoder's last layer feeds the pooled embedding: it stays
        assert [k for k in tensors if k.startswith("lora_te2_text_model_encoder_layers_1_")]
    zero = [k for k, v in tensors.items() if k.endswith("lora_up.weight") and not v.abs().sum()]
    assert zero == []


# --- the single-file writer streams -------------------------------------------------------------------------------

class LiveConversions(TorchFunctionMode):
    """Counts converted copies (results of Tensor.to that are new tensors) alive at the same time."""

    def __init__(self):
        super().__init__()
        self.alive: list[weakref.ref] = []
        self.peak = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.Tensor.to and out is not args[0]:
            self.alive = [ref for ref in self.alive if ref() is not None] + [weakref.ref(out)]
            self.peak = max(self.peak, len(self.alive))
        return out


def test_single_file_writer_converts_one_tensor_at_a_time(tmp_path):
    from trainer.models.single_file import to_original_state_dict, write_single_file
    from trainer.models.tiny import make_tiny

    components = make_tiny("sd15", seed=3)
    with LiveConversions() as conversions:
        path = write_single_file(tmp_path / "model.safetensors", "sd15", components, dtype=torch.float16)
    assert conversions.peak == 1  # never a second copy of the weights: one converted tensor at a time
    expected = to_original_state_dict("sd15", components)
    written = load_file(path)
    assert written.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(written[key], tensor.to(torch.float16)), key


def test_streamed_file_reads_like_a_safetensors_file(tmp_path):
    from trainer.models.safetensors_stream import write_safetensors_streaming

    tensors = {"b.weight": torch.randn(3, 5), "a.half": torch.randn(7).half(), "scalar": torch.tensor(2.5),
               "empty": torch.zeros(0, 4), "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "mask": torch.tensor([True, False, True]), "bf": torch.randn(4, 2).bfloat16()}
    metadata = {"format": "pt", "note": "ünïcode"}
    write_safetensors_streaming(tmp_path / "streamed.safetensors", tensors, metadata)
    save_file(tensors, tmp_path / "library.safetensors", metadata=metadata)
    streamed, library = load_file(tmp_path / "streamed.safetensors"), load_file(tmp_path / "library.safetensors")
    assert streamed.keys() == library.keys()
    for key in tensors:
        assert streamed[key].dtype == library[key].dtype and torch.equal(streamed[key], library[key]), key
    with safe_open(tmp_path / "streamed.safetensors", "pt") as f:
        assert f.metadata() == metadata
    as_bf16 = load_file(write_safetensors_streaming(tmp_path / "cast.safetensors", tensors, dtype=torch.bfloat16))
    assert as_bf16["b.weight"].dtype == torch.bfloat16 and as_bf16["ids"].dtype == torch.int64


# --- a partly written latent cache resumes bit for bit -----------------------------------------------------------

def test_partial_latent_cache_then_resume_is_bit_identical(tmp_path, tiny_sd15_dir):
    """A run killed while caching keeps some latents on disk; the resumed run must train exactly as an
    uninterrupted one, so a latent may not depend on which other images it was encoded with."""
    data = make_dataset(tmp_path / "data", n=5)
    sections = {"training": {"max_steps": 6, "batch_size": 4, "cache_latents": True, "cache_latents_to_disk": True},
                "output": {"save_every_n_steps": 2}}
    straight = write_job(tmp_path / "straight.toml", tiny_sd15_dir, data, tmp_path / "straight", sections=sections)
    reference = load_file(train_job(straight).outputs[-1])
    cached = sorted((tmp_path / "straight" / ".kiln-cache" / "latents").glob("*.safetensors"))
    assert len(cached) == 5

    job = write_job(tmp_path / "job.toml", tiny_sd15_dir, data, tmp_path / "killed", sections=sections)
    latents = tmp_path / "killed" / ".kiln-cache" / "latents"
    latents.mkdir(parents=True)
    shutil.copy(cached[2], latents / cached[2].name)  # the kill came after 1 of 5 latents reached the disk
    assert train_job(job, controls=StopAt(3)).status == "stopped"
    for entry in latents.iterdir():  # and the next kill (or a cleanup) lost all but one again
        if entry.name != cached[4].name:
            entry.unlink()
    resumed = load_file(train_job(job, resume=True).outputs[-1])
    assert resumed.keys() == reference.keys()
    differing = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert differing == []
