"""Full size on the CPU: the real SD 1.5 / SDXL architectures (random weights from the bundled configs), as a
diffusers folder and as one single file, each method 2 steps at 64 px with every saver on (latent and
text-encoder caches, gradient checkpointing, 8-bit AdamW), then the exported file loaded back into diffusers.
Each job runs in its own process, which samples its RSS every 20 ms and keeps the peak per phase (load, cache,
train, save, reload); that is set against the host RAM that trainer/memory.py predicts for a CPU run.

  .venv/bin/python bench/full_size.py [--arch sd15|sdxl] [--methods lora,dreambooth,dreambooth_lora,textual_inversion]
                                      [--formats diffusers,single-file] [--precision no|bf16] [--out DIR]
Writes full_size.json and full_size.md to --out (default bench/results/; -bf16 in the names under
--precision bf16: the CPU mixed-precision path, where a LoRA job reads its base straight into bf16). Needs
about 3x the model's fp32 size in free RAM for full DreamBooth (SD 1.5: ~12 GiB); the others about 1.5x.

The transformer families (LoRA, diffusers folder): `--flow sd35-medium` (SD 3.5 Medium, its transformer and CLIPs
full size, T5-XXL cut to 1 layer at full width: the whole T5 alone is 19 GB in fp32) and `--flow flux-dev-2blocks` (Flux.1-dev at full
width, 1 double + 1 single block and a 1-layer T5: the 12 B model does not fit 24 GB). After training, the
Kohya file's deltas, computed as ComfyUI / Forge read them, are set against the trained ones module by module
(worst relative error), and the diffusers-layout copy is loaded into a fresh pipeline of the base."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.atomic import write_text_atomic  # noqa: E402

GIB = 1024**3
METHOD_SECTIONS = {
    "lora": ("lora", {}),
    "dreambooth": ("dreambooth", {"dreambooth": {"prior_preservation": False, "instance_prompt": "sks shape"}}),
    "dreambooth_lora": ("dreambooth", {"dreambooth": {"prior_preservation": False, "instance_prompt": "sks shape",
                                                      "use_lora": True}}),
    "textual_inversion": ("textual_inversion", {"textual_inversion": {"token": "<kiln-shape>", "init_word": "shape"}}),
}
PHASE_OF = {"loading": "load", "caching": "cache", "training": "train", "saving": "save"}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PhaseMeter:
    """Peak RSS per phase, sampled on a thread (a phase's peak can be shorter than any step)."""

    def __init__(self):
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.note()
            time.sleep(0.02)

    def note(self):
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss_bytes())

    def enter(self, phase: str):
        self.note()
        self.phase = phase

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v / GIB, 2) for k, v in self.peaks.items()}


def one_job(base: str, arch: str, method_id: str, work: Path, precision: str = "no") -> dict:
    """Runs in the job's own process: train, save, reload; RSS per phase and the memory model's prediction."""
    import torch

    from tests.helpers import make_dataset, write_job
    from trainer.config import load_job
    from trainer.loop import default_paths, train
    from trainer.memory import estimate_memory
    from trainer.progress import RunReporter

    meter = PhaseMeter()

    class PhaseReporter(RunReporter):
        def phase(self, name, **kwargs):
            meter.enter(PHASE_OF.get(name, name))
            return super().phase(name, **kwargs)

        def start_training(self, *args, **kwargs):  # the loop's first training step follows without a phase()
            meter.enter("train")
            return super().start_training(*args, **kwargs)

    method, sections = METHOD_SECTIONS[method_id]
    values = {s: dict(v) for s, v in sections.items()}
    values["training"] = {"max_steps": 2, "batch_size": 1, "optimizer": "adamw8bit", "gradient_checkpointing": True,
                          "cache_latents": True, "cache_text_encoder_outputs": True, "learning_rate": 1e-5}
    if precision != "no":
        values["training"].update(mixed_precision=precision, cpu_mixed_precision=True)
    values["output"] = {"name": method_id, "save_precision": "fp16"}
    values["model"] = {"arch": arch}
    data = make_dataset(work / "data", n=2)
    job = write_job(work / "job.toml", base, data, work / "out", method=method, sections=values)
    cfg = load_job(job)
    started = time.perf_counter()
    result = train(cfg, default_paths(cfg), PhaseReporter(console=False))
    train_s = time.perf_counter() - started
    final = result.outputs[-1]
    model_config_dir = result.model.config_dir
    del result
    meter.enter("reload")
    reloaded = reload_export(arch, method_id, final, base, model_config_dir)
    peaks = meter.stop()
    estimate = estimate_memory(cfg, arch, images=2)
    return {"method": method_id, "peak_rss_gib": peaks, "predicted_cpu_ram_gib": round(estimate.cpu_ram_gib(), 2),
            "train_s": round(train_s, 1), "reloads": reloaded, "file_mib": round(final.stat().st_size / 2**20, 1),
            "torch_threads": torch.get_num_threads()}


# --flow cases: (bundled config, family, memory-model variant, build options)
FLOW_CASES = {
    "sd35-medium": ("sd35-medium", "sd3", "sd3.5-medium", {"t5_layers": 1}),
    "flux-dev-2blocks": ("flux-dev", "flux", None, {"depth": (1, 1), "t5_layers": 1}),
}


def one_flow_job(base: str, case: str, _method: str, work: Path) -> dict:
    """Runs in the job's own process: a LoRA (2 steps, 64 px, every saver), its export checked against the
    trained deltas and its diffusers copy reloaded; RSS per phase and the memory model's prediction."""
    import gc

    import torch

    from tests.helpers import make_dataset, write_job
    from trainer.config import load_job
    from trainer.families import adapter_for
    from trainer.families.dit.fused_lora import _lora_pairs
    from trainer.loop import default_paths, train
    from trainer.memory import estimate_memory
    from trainer.progress import RunReporter

    _, family_id, variant, _ = FLOW_CASES[case]
    meter = PhaseMeter()

    class PhaseReporter(RunReporter):
        def phase(self, name, **kwargs):
            meter.enter(PHASE_OF.get(name, name))
            return super().phase(name, **kwargs)

        def start_training(self, *args, **kwargs):
            meter.enter("train")
            return super().start_training(*args, **kwargs)

    values = {"training": {"max_steps": 2, "batch_size": 1, "optimizer": "adamw8bit", "gradient_checkpointing": True,
                           "cache_latents": True, "cache_text_encoder_outputs": True, "learning_rate": 1e-3},
              "output": {"name": case, "save_precision": "fp32", "save_diffusers": True},
              "model": {"arch": family_id}, "lora": {"rank": 16, "alpha": 8}}
    data = make_dataset(work / "data", n=2)
    cfg = load_job(write_job(work / "job.toml", base, data, work / "out", method="lora", sections=values))
    started = time.perf_counter()
    result = train(cfg, default_paths(cfg), PhaseReporter(console=False))
    train_s = time.perf_counter() - started
    final = Path(result.outputs[-1])
    transformer = result.model.unet  # the loop's name for the denoiser
    rows = adapter_for(family_id).layout.rows(transformer.config)
    pairs = {name: (a.detach().clone(), b.detach().clone(), s) for name, (a, b, s) in _lora_pairs(transformer, "default").items()}
    del result, transformer
    gc.collect()
    meter.enter("reload")
    worst = export_error(final, pairs, rows)
    pipe = adapter_for(family_id).pipeline_class().from_pretrained(base, torch_dtype=torch.bfloat16,
                                                                    local_files_only=True)
    pipe.load_lora_weights(str(final.with_name(f"{final.stem}-diffusers")))
    reloaded = sum(1 for n, _ in pipe.transformer.named_parameters() if "lora_" in n)
    del pipe
    peaks = meter.stop()
    estimate = estimate_memory(cfg, family_id, images=2, variant=variant)
    return {"method": "lora", "peak_rss_gib": peaks, "predicted_cpu_ram_gib": round(estimate.cpu_ram_gib(), 2),
            "train_s": round(train_s, 1), "reloads": reloaded == 2 * len(pairs), "lora_modules": len(pairs),
            "export_worst_rel_error": worst, "file_mib": round(final.stat().st_size / 2**20, 1),
            "torch_threads": torch.get_num_threads()}


def export_error(file: Path, pairs: dict, rows) -> float:
    """The worst relative error, over the trained modules, between peft's delta (s · B @ A) and the delta a
    reader computes from the Kohya file (up @ down · alpha / rank, sliced to the module's rows where the original
    fuses several diffusers modules). Module by module in float64: the whole set would not fit at full size."""
    from safetensors import safe_open

    owner = {path: (r, i) for r in rows for i, (path, _) in enumerate(r.parts)}
    worst = 0.0
    with safe_open(str(file), "pt") as f:
        for module, (a, b, s) in pairs.items():
            r, i = owner[module]
            name = "lora_unet_" + r.original.replace(".", "_")
            down = f.get_tensor(f"{name}.lora_down.weight").double()
            up = f.get_tensor(f"{name}.lora_up.weight").double()
            if r.fused:
                start = sum(n for _, n in r.parts[:i])
                up = up[start:start + r.parts[i][1]]
            read = up @ down * (float(f.get_tensor(f"{name}.alpha")) / down.shape[0])
            delta = b.double() @ a.double() * s
            worst = max(worst, float((read - delta).norm() / max(float(delta.norm()), 1e-12)))
    return worst


def reload_export(arch: str, method_id: str, final: Path, base: str, config_dir: Path) -> bool:
    import torch

    from bench.random_models import pipeline_class
    from tests.helpers import load_export_into

    cls = pipeline_class(arch)
    kind = {"dreambooth": "checkpoint", "textual_inversion": "embedding"}.get(method_id, "lora")
    if kind == "checkpoint":  # a whole new pipeline: the base is not needed
        pipe = cls
    elif base.endswith(".safetensors"):
        pipe = cls.from_single_file(base, config=str(config_dir), local_files_only=True, torch_dtype=torch.float16)
    else:
        pipe = cls.from_pretrained(base, torch_dtype=torch.float16)
    pipe = load_export_into(pipe, arch, kind, final, config_dir, token="<kiln-shape>", dtype=torch.float16)
    if kind == "embedding":
        return "<kiln-shape>" in pipe.tokenizer.get_vocab()
    return kind == "checkpoint" or any("lora_" in n for n, _ in pipe.unet.named_parameters())


def run_child(argv: list[str], row: dict) -> dict:
    child = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=REPO)
    if child.returncode == 0:
        row.update(json.loads(child.stdout.strip().splitlines()[-1]))
    else:
        row["error"] = child.stderr.strip().splitlines()[-1][:200] if child.stderr.strip() else "failed"
    return row


def flow_main(case: str, out: Path) -> None:
    from bench.random_models import save_random_flow_model

    config, _, _, options = FLOW_CASES[case]
    report = {"arch": case, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "jobs": []}
    with tempfile.TemporaryDirectory(prefix="kiln-full-size-") as tmp:
        work = Path(tmp)
        print(f"building a random {case} (diffusers, bf16)", flush=True)
        started = time.perf_counter()
        base = save_random_flow_model(work / case, config, **options)
        build_s = round(time.perf_counter() - started, 1)
        (work / "job").mkdir()
        row = run_child(["--flow", case, "--one", str(base), "lora", str(work / "job")],
                        {"format": "diffusers", "method": "lora", "build_s": build_s})
        report["jobs"].append(row)
        print(json.dumps(row), flush=True)
    write_text_atomic(out / f"full_size-{case}.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / f"full_size-{case}.md", markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"# full_size ({report['arch']}, CPU, {report['date']})", "",
             "| format | method | load | cache | train | save | reload | predicted RAM | train s | reloads |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["jobs"]:
        p = row.get("peak_rss_gib", {})
        lines.append(f"| {row['format']} | {row['method']} | {p.get('load', '')} | {p.get('cache', '')} | "
                     f"{p.get('train', '')} | {p.get('save', '')} | {p.get('reload', '')} | "
                     f"{row.get('predicted_cpu_ram_gib', '')} | {row.get('train_s', '')} | "
                     f"{row.get('reloads', row.get('error', ''))} |")
    for row in report["jobs"]:
        if "export_worst_rel_error" in row:
            lines.append(f"\n{row['method']}: {row['lora_modules']} LoRA modules; worst relative error of the Kohya "
                         f"file's reader deltas against the trained ones: {row['export_worst_rel_error']:.2e}")
    lines += ["", "peak RSS per phase in GiB; 'predicted RAM' is trainer/memory.py's CPU-run figure"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd15", choices=("sd15", "sd2", "sdxl"))
    parser.add_argument("--methods", default=",".join(METHOD_SECTIONS))
    parser.add_argument("--formats", default="diffusers,single-file")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--flow", choices=tuple(FLOW_CASES), help="a transformer-family LoRA case instead")
    parser.add_argument("--precision", default="no", choices=("no", "bf16"), help="the SD jobs' mixed precision")
    parser.add_argument("--one", nargs=3, metavar=("BASE", "METHOD", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # the child process of one job
        if args.flow:
            print(json.dumps(one_flow_job(args.one[0], args.flow, args.one[1], Path(args.one[2]))))
        else:
            print(json.dumps(one_job(args.one[0], args.arch, args.one[1], Path(args.one[2]), args.precision)))
        return
    if args.flow:
        return flow_main(args.flow, args.out)
    from bench.random_models import save_random_model

    name = args.arch if args.precision == "no" else f"{args.arch}-{args.precision}"
    report = {"arch": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "jobs": []}
    with tempfile.TemporaryDirectory(prefix="kiln-full-size-") as tmp:
        work = Path(tmp)
        for fmt in args.formats.split(","):
            print(f"building a random {args.arch} ({fmt})", flush=True)
            base = save_random_model(work / f"{args.arch}-{fmt}", args.arch, fmt)
            for method_id in args.methods.split(","):
                job_dir = work / f"{fmt}-{method_id}"
                job_dir.mkdir()
                print(f"{fmt} {method_id}", flush=True)
                row = run_child(["--arch", args.arch, "--precision", args.precision, "--one", str(base), method_id,
                                 str(job_dir)], {"format": fmt, "method": method_id})
                report["jobs"].append(row)
                print(json.dumps(row), flush=True)
                write_text_atomic(args.out / f"full_size-{name}.json", json.dumps(report, indent=2) + "\n")
                write_text_atomic(args.out / f"full_size-{name}.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
