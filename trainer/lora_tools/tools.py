"""The LoRA tools: inspect, resize, merge (into a checkpoint, or into one LoRA) and extract. Each returns what
it did, for the CLI (and the UI's Tools tab, which runs the CLI) to print."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from ..families import family
from ..hashing import file_sha256
from ..models.errors import ModelError
from .checkpoint import Checkpoint, rewrite_checkpoint
from .lowrank import Kept, lora_from_delta, refuse_existing, write_lora_file
from .network import BASE_MODEL_VERSION, NetworkFile, apply_module, module_delta, read_network_file
from .validate import require_finite

def inspect(path: Path, base: Path | None = None) -> str:
    """A readable report: network type, architecture, rank/alpha per module, metadata, A1111's hashes, and
    (with a base checkpoint) the modules that base would not load."""
    network = read_network_file(path, "inspect", strict=False)
    if not network.modules:  # every module is broken: no type or rank to tell
        return "\n".join([f"file: {path}", f"BROKEN: all {len(network.broken)} module(s) are broken; no tool can use "
                          "this file:"] + [f"  {name}  BROKEN: {why}" for name, why in sorted(network.broken.items())])
    lines = [f"file: {path}",
             f"type: {network.algo}{' + DoRA' if network.dora else ''}; {len(network.modules)} modules"
             + (f" + {len(network.broken)} BROKEN (the other tools refuse this file)" if network.broken else ""),
             f"architecture: {network.arch or 'unknown (no metadata)'}"]
    sha = file_sha256(path)
    addnet = file_sha256(path, skip_safetensors_header=True)
    lines.append(f"A1111 hashes: file sha256 {sha[:10]} ({sha}); LoRA (addnet) hash {addnet[:12]} ({addnet})")
    sizes = Counter((network.rank(n), network.alpha(n)) for n in network.modules)
    lines.append("rank/alpha: " + ", ".join(f"{'full' if r is None else r}/{a:g} x{n}" for (r, a), n in
                                            sorted(sizes.items(), key=lambda x: -x[1])))
    lines.append("modules:")
    lines += [f"  {name}  rank {network.rank(name) or 'full'}  alpha {network.alpha(name):g}" if name in network.modules
              else f"  {name}  BROKEN: {network.broken[name]}" for name in sorted({*network.modules, *network.broken})]
    shown = {k: v for k, v in sorted(network.metadata.items())
             if k.startswith(("ss_", "kiln_", "modelspec.", "sshs_")) and k not in ("ss_tag_frequency",)}
    lines.append("metadata:" if shown else "metadata: none")
    lines += [f"  {k} = {v if len(v) <= 200 else v[:200] + '...'}" for k, v in shown.items()]
    if base is not None:
        checkpoint = Checkpoint(base, "inspect --base")
        targets = checkpoint.lora_targets()
        unknown = sorted(n for n in network.modules if n not in targets)
        lines.append(f"against {base} ({checkpoint.arch}): "
                     + (f"{len(unknown)} module(s) would not load:" if unknown else "every module loads"))
        lines += [f"  {n}" for n in unknown]
    return "\n".join(lines)


def resize(path: Path, out: Path, rank: int | None, dynamic: str | None, value: float | None,
           force: bool = False) -> tuple[Path, list[Kept]]:
    """A plain LoRA of a lower rank from any LoRA/LoHa/LoKr file, by SVD of each module's change."""
    refuse_existing(out, force)
    network = read_network_file(path, "resize")
    tensors, kept = {}, []
    for name, module in sorted(network.modules.items()):
        shape = _weight_shape(module)
        part, k = lora_from_delta(name, module_delta(module), shape, rank, dynamic, value)
        if "dora_scale" in module:  # the magnitudes stay; they apply to the approximated change
            part[f"{name}.dora_scale"] = module["dora_scale"]
        tensors.update(part)
        kept.append(k)
    return write_lora_file(out, tensors, _resized_metadata(network, rank, dynamic, value), force), kept


def _resized_metadata(network: NetworkFile, rank: int | None, dynamic: str | None, value: float | None
                      ) -> dict[str, str]:
    """Everything the source recorded of its training stays true of a resized copy (as Kohya's resize keeps
    it), with a note of the resize; write_lora_file sets the network keys and the hashes anew."""
    how = f"rank {rank}" if rank is not None else f"{dynamic} {value:g}"
    metadata = {k: v for k, v in network.metadata.items() if not k.startswith("sshs_")}
    metadata["kiln_resized_from"] = f"{network.path.name} ({how})"
    return metadata


def merge_into_checkpoint(loras: list[Path], weights: list[float], checkpoint: Path, out: Path,
                          force: bool = False) -> tuple[Path, int]:
    """Bake LoRAs (each at its weight) into a single-file checkpoint, one weight in memory at a time."""
    refuse_existing(out, force)
    source = Checkpoint(checkpoint, "merge --into")
    networks = [read_network_file(p, "merge") for p in loras]
    targets = source.lora_targets()
    by_key: dict[str, list] = {}
    for network, weight in zip(networks, weights):
        if network.arch and network.arch != source.arch:
            raise ModelError(f"merge: {network.path} is for {network.arch}, {checkpoint} is {source.arch}")
        unknown = sorted(n for n in network.modules if n not in targets)
        if unknown:
            raise ModelError(f"merge: {len(unknown)} module(s) of {network.path} are not in {checkpoint}, e.g. "
                             f"{unknown[0]} (run `lora inspect FILE --base CHECKPOINT` for the list)")
        for name, module in network.modules.items():
            by_key.setdefault(targets[name].key, []).append((targets[name].rows, module, weight))

    def change(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key not in by_key:
            return tensor
        merged = tensor.float()
        for rows, module, weight in by_key[key]:
            part = merged if rows is None else merged[rows[0]:rows[1]]
            part.copy_(apply_module(module, part, weight))
        return require_finite(merged.to(tensor.dtype), f"merge: {key} of the merged checkpoint")

    metadata = {k: v for k, v in source.metadata.items() if not k.startswith("modelspec.")}
    metadata["kiln_merged_loras"] = ", ".join(f"{p.name}:{w:g}" for p, w in zip(loras, weights))
    return rewrite_checkpoint(source, out, change, metadata), len(by_key)


def merge_loras(loras: list[Path], weights: list[float], out: Path, rank: int, force: bool = False
                ) -> tuple[Path, list[Kept]]:
    """One LoRA of `rank` whose change is the weighted sum of the given LoRAs' changes (SVD per module)."""
    refuse_existing(out, force)
    networks = [read_network_file(p, "merge") for p in loras]
    if any(n.dora for n in networks):
        raise ModelError("merge: DoRA files cannot be summed without the base model (their change depends on "
                         "it); merge them into a checkpoint with --into instead")
    archs = {n.arch for n in networks if n.arch}
    if len(archs) > 1:
        raise ModelError(f"merge: the LoRAs are for different architectures ({', '.join(sorted(archs))})")
    deltas: dict[str, tuple[torch.Tensor, tuple]] = {}
    for network, weight in zip(networks, weights):
        for name, module in network.modules.items():
            shape = _weight_shape(module)
            delta = module_delta(module) * weight
            if name in deltas:
                if deltas[name][1] != shape:
                    raise ModelError(f"merge: module {name} has shape {shape} in {network.path} but "
                                     f"{deltas[name][1]} in an earlier file")
                delta = delta + deltas[name][0]
            deltas[name] = (delta, shape)
    tensors, kept = {}, []
    for name, (delta, shape) in sorted(deltas.items()):
        part, k = lora_from_delta(name, delta, shape, rank)
        tensors.update(part)
        kept.append(k)
    return write_lora_file(out, tensors, _carried_metadata(networks[0]), force), kept


def extract(base: Path, tuned: Path, rank: int, out: Path, force: bool = False, min_change: float = 1e-6
            ) -> tuple[Path, list[Kept]]:
    """A LoRA of `rank` from the difference of two checkpoints of one architecture; layers that changed by
    less than `min_change` (largest absolute difference) are left out."""
    refuse_existing(out, force)
    a, b = Checkpoint(base, "extract --base"), Checkpoint(tuned, "extract --tuned")
    if a.arch != b.arch:
        raise ModelError(f"extract: {base} is {a.arch} but {tuned} is {b.arch}")
    tensors, kept = {}, []
    for name, target in sorted(a.lora_targets().items()):
        if a.shapes[target.key] != b.shapes.get(target.key):
            raise ModelError(f"extract: {target.key} has shape {a.shapes[target.key]} in {base} but "
                             f"{b.shapes.get(target.key)} in {tuned} (different models?)")
        delta = require_finite(b.tensor(target.key).float() - a.tensor(target.key).float(),
                               f"extract: the difference of {target.key}")
        if target.rows:
            delta = delta[target.rows[0]:target.rows[1]]
        if delta.abs().max() <= min_change:
            continue
        part, k = lora_from_delta(name, delta, tuple(delta.shape), rank)
        tensors.update(part)
        kept.append(k)
    if not tensors:
        raise ModelError(f"extract: {base} and {tuned} do not differ in any LoRA-able layer")
    metadata = {"ss_base_model_version": BASE_MODEL_VERSION[a.arch], "ss_v2": str(family(a.arch).kohya_v2),
                "ss_training_comment": f"extracted by Kiln from {tuned.name} - {base.name}"}
    return write_lora_file(out, tensors, metadata, force), kept


def _weight_shape(module: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The shape of the weight a module changes, from its tensors."""
    if "lora_down.weight" in module:
        down, up = module["lora_down.weight"], module["lora_up.weight"]
        return (up.shape[0], *down.shape[1:])
    delta = module_delta(module)
    kernel = next((v.shape[2:] for k, v in module.items() if k.startswith("lokr_w2") and v.dim() == 4), ())
    if kernel:
        return (delta.shape[0], delta.shape[1] // (kernel[0] * kernel[1]), *kernel)
    return tuple(delta.shape)


def _carried_metadata(network: NetworkFile) -> dict[str, str]:
    keep = ("ss_base_model_version", "ss_v2", "ss_sd_model_name", "ss_new_sd_model_hash", "ss_output_name",
            "ss_resolution", "ss_clip_skip")
    return {k: v for k, v in network.metadata.items() if k in keep or k.startswith("modelspec.")}
