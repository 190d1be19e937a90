"""Peak host RAM of loading a quantized frozen SDXL UNet the way a training job does, before and after the
loader quantized as it reads: the job loader's old way (from_pretrained in fp32, the loop casting the frozen
weights to bf16, then quantizing) against its way now (trainer/quantize_load.load_quantized_component, what
load_base_model calls for a diffusers folder: built on the meta device, each linear layer rounded to bf16 and
quantized as it is read, the rest read in fp32 and cast to bf16 by the loop).

Writes the full-size SDXL UNet (Kiln's bundled config) with random bf16 weights once, tensor by tensor, as a
diffusers folder's unet/ (config.json, diffusion_pytorch_model.safetensors: about 5.1 GB of disk) in a temporary
folder, then runs each way in a fresh process and samples its memory every 10 ms: RSS, and RssAnon (RSS less the
file's pages the memory map brought in; those are page cache the kernel can drop, so RssAnon is what the load
really holds).

Run: .venv/bin/python bench/quantize_load_rss.py [--kind int8|nf4|both] [--dir /tmp]
About 15 GB of RAM (RSS, page cache included) for the old way and several minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 1024 ** 3


def memory() -> tuple[int, int]:
    """(RSS, RssAnon) in bytes, from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["RssAnon"]


class Peaks:
    def __enter__(self):
        self.rss, self.anon = memory()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            rss, anon = memory()
            self.rss, self.anon = max(self.rss, rss), max(self.anon, anon)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()


def unet_config() -> dict:
    from bench.random_models import bundled_config_files

    return bundled_config_files("sdxl")["unet/config.json"]


def meta_unet():
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(unet_config())


def write_random_unet(path: Path) -> int:
    """The SDXL UNet's tensors, random bf16, one at a time (never the whole model in RAM)."""
    import torch
    from trainer.models.safetensors_stream import header_for_layout, write_tensor_bytes

    state = meta_unet().state_dict()
    generator = torch.Generator().manual_seed(0)
    with open(path, "wb") as out:
        out.write(header_for_layout(((k, tuple(v.shape), torch.bfloat16) for k, v in state.items()), None))
        for tensor in state.values():
            write_tensor_bytes(out, torch.randn(tensor.shape, generator=generator).mul_(0.02).to(torch.bfloat16))
    return sum(v.numel() for v in state.values())


def measure(way: str, folder: Path, kind: str) -> dict:
    import torch
    from diffusers import UNet2DConditionModel
    from trainer.quantize import quantize_linear_layers
    from trainer.quantize_load import QuantizedLoad, load_quantized_component

    start_rss, start_anon = memory()
    started = time.perf_counter()
    with Peaks() as peaks:
        if way == "whole":  # the old job loader: the UNet whole in fp32 (the SD families' load dtype)
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
            unet.requires_grad_(False)
        else:  # the job loader now
            unet, _ = load_quantized_component(UNet2DConditionModel, folder, "unet",
                                               QuantizedLoad(kind, torch.bfloat16), torch.float32)
        for p in unet.parameters():  # the loop's cast_model: frozen floating weights to the training dtype
            if p.is_floating_point():
                p.data = p.data.to(torch.bfloat16)
        quantize_linear_layers(unet, "cpu", kind, torch.bfloat16)  # the old way's quantization (now: nothing left)
    end_rss, end_anon = memory()
    return {"way": way, "kind": kind, "seconds": round(time.perf_counter() - started, 1),
            "start_gib": round(start_anon / GIB, 2), "peak_rss_gib": round((peaks.rss - start_rss) / GIB, 2),
            "peak_anon_gib": round((peaks.anon - start_anon) / GIB, 2),
            "held_after_gib": round((end_anon - start_anon) / GIB, 2), "model_tensors_gib": round(tensor_bytes(unet) / GIB, 2)}


def tensor_bytes(module) -> int:
    """What the loaded model's tensors hold (a quantized layer's scales included)."""
    state = module.state_dict()
    return sum(t.numel() * t.element_size() for t in state.values() if hasattr(t, "element_size"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=("int8", "nf4", "both"), default="both")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--measure", nargs=2, metavar=("WAY", "FOLDER"), help=argparse.SUPPRESS)  # the child run
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.kind)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        (Path(folder) / "unet").mkdir()
        (Path(folder) / "unet" / "config.json").write_text(json.dumps(unet_config()))
        path = Path(folder) / "unet" / "diffusion_pytorch_model.safetensors"
        count = write_random_unet(path)
        print(f"SDXL UNet: {count / 1e6:.1f} M parameters, file {path.stat().st_size / GIB:.2f} GiB (bf16)")
        # glibc keeps freed mid-size blocks (one layer's copy) for reuse and RSS would count them: large
        # allocations straight from the kernel make RSS what is actually held
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        for kind in (("int8", "nf4") if args.kind == "both" else (args.kind,)):
            for way in ("streamed", "whole"):  # each in a fresh process: neither sees the other's freed memory
                out = subprocess.run([sys.executable, __file__, "--kind", kind, "--measure", way, folder],
                                     check=True, capture_output=True, text=True, env=env).stdout
                print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
