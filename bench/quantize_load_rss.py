"""Peak host RAM of loading a quantized frozen SDXL UNet: read whole in bf16 then quantized, against quantized
as it is read (trainer/quantize_load.py).

Writes the full-size SDXL UNet (Kiln's bundled config) with random bf16 weights once, tensor by tensor, to a
single diffusers-layout .safetensors file in a temporary folder (about 5.1 GB of disk), then runs each way in a
fresh process and samples its memory every 10 ms: RSS, and RssAnon (RSS less the file's pages the memory map
brought in; those are page cache the kernel can drop, so RssAnon is what the load really holds).

Run: .venv/bin/python bench/quantize_load_rss.py [--kind int8|nf4|both] [--dir /tmp]
About 6 GB of RAM for the whole-file way and several minutes on 2 cores.
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


def meta_unet():
    import torch
    from diffusers import UNet2DConditionModel
    from bench.random_models import bundled_config_files

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(bundled_config_files("sdxl")["unet/config.json"])


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


def measure(way: str, path: Path, kind: str) -> dict:
    import torch
    from trainer.quantize import quantize_linear_layers
    from trainer.quantize_load import load_quantized_denoiser

    start_rss, start_anon = memory()
    started = time.perf_counter()
    with Peaks() as peaks:
        unet = meta_unet()
        if way == "whole":  # the file read whole in bf16, then quantized layer by layer in RAM
            from safetensors.torch import load_file
            unet.load_state_dict(load_file(str(path)), assign=True)
            unet.requires_grad_(False)  # frozen, as in training (only frozen layers are quantized)
            quantize_linear_layers(unet, "cpu", kind, torch.bfloat16)
        else:
            load_quantized_denoiser(unet, path, kind, "cpu", torch.bfloat16)
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
    parser.add_argument("--measure", nargs=2, metavar=("WAY", "FILE"), help=argparse.SUPPRESS)  # the child run
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.kind)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "diffusion_pytorch_model.safetensors"
        count = write_random_unet(path)
        print(f"SDXL UNet: {count / 1e6:.1f} M parameters, file {path.stat().st_size / GIB:.2f} GiB (bf16)")
        # glibc keeps freed mid-size blocks (one layer's copy) for reuse and RSS would count them: large
        # allocations straight from the kernel make RSS what is actually held
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        for kind in (("int8", "nf4") if args.kind == "both" else (args.kind,)):
            for way in ("streamed", "whole"):  # each in a fresh process: neither sees the other's freed memory
                out = subprocess.run([sys.executable, __file__, "--kind", kind, "--measure", way, str(path)],
                                     check=True, capture_output=True, text=True, env=env).stdout
                print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
