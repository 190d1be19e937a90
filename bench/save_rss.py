"""Peak memory of saving a full-size checkpoint with the single-file writer, against the model's own size.

Builds the real architecture from Kiln's bundled configs (random weights, held in bf16 as a bf16 run keeps
them) and saves it as an fp16 single file, so every tensor must be converted on the way out: the case where
a writer that converts everything first needs a second full copy. A thread samples the process's RSS every
10 ms during the save. Target: RSS added by the save stays under 10% of the model's size, i.e. peak RSS under
(RSS before the save) + 10%, where RSS before the save already holds the model.

Run: .venv/bin/python bench/save_rss.py [--arch sdxl|sd15] [--writer stream|convert-all] [--dir /tmp]
(`convert-all` is the old way: convert every tensor, then safetensors.torch.save_file; sd15 keeps it cheap.)
SDXL needs about 8 GB of RAM and of free disk space, and several minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.random_models import make_random_components  # noqa: E402
from trainer.models.single_file import to_original_state_dict, write_single_file  # noqa: E402
from trainer.quiet import quiet_libraries  # noqa: E402

GIB = 1024 ** 3


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples RSS in a thread while the block runs."""

    def __enter__(self):
        self.peak, self._running = rss_bytes(), True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def full_size_components(arch: str, dtype: torch.dtype) -> dict:
    """The real architecture with random weights in `dtype`, built without an fp32 detour."""
    components = {name: part for name, part in make_random_components(arch, device="meta").items()
                  if isinstance(part, torch.nn.Module)}
    generator = torch.Generator().manual_seed(0)
    for module in components.values():
        module.to_empty(device="cpu").to(dtype)
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.is_floating_point():
                    tensor.normal_(0.0, 0.02, generator=generator)
    return components


def convert_all_then_save(path: Path, arch: str, components: dict, dtype: torch.dtype) -> None:
    """The writer as it was: a converted copy of every tensor, then the library's save_file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in to_original_state_dict(arch, components).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["sdxl", "sd15"], default="sdxl")
    parser.add_argument("--writer", choices=["stream", "convert-all"], default="stream")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    quiet_libraries()

    base_rss = rss_bytes()
    started = time.perf_counter()
    components = full_size_components(args.arch, torch.bfloat16)
    model_bytes = sum(t.numel() * t.element_size() for m in components.values()
                      for t in [*m.parameters(), *m.buffers()])
    built_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        path = Path(scratch) / "model.safetensors"
        before = rss_bytes()
        started = time.perf_counter()
        with PeakRss() as peak:
            if args.writer == "stream":
                write_single_file(path, args.arch, components, dtype=torch.float16)
            else:
                convert_all_then_save(path, args.arch, components, torch.float16)
        saved_s = time.perf_counter() - started
        file_bytes = path.stat().st_size
    added = peak.peak - before
    print(json.dumps({
        "arch": args.arch, "writer": args.writer, "model_gib": round(model_bytes / GIB, 2),
        "file_gib": round(file_bytes / GIB, 2), "rss_libraries_gib": round(base_rss / GIB, 2),
        "rss_before_save_gib": round(before / GIB, 2), "peak_rss_during_save_gib": round(peak.peak / GIB, 2),
        "added_by_save_gib": round(added / GIB, 3), "added_vs_model": round(added / model_bytes, 3),
        "target_met": added <= 0.10 * model_bytes, "build_s": round(built_s, 1), "save_s": round(saved_s, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
