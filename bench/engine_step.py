"""Engine overhead: Kiln's training step vs a bare loop doing the same math, in the same process.

Both train the same peft LoRA (same targets, rank, optimizer, batch) on the tiny SD 1.x model with cached
latents and cached text-encoder outputs; the ratio of median step times is the engine's overhead (target
<= 1.10). Also measured: time from `python -m trainer run` to its first finished step, and that process's peak
RSS. Run: .venv/bin/python bench/engine_step.py [--steps 80] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tests.helpers import make_dataset, write_job  # noqa: E402
from trainer.config import load_job  # noqa: E402
from trainer.loop import default_paths, train  # noqa: E402
from trainer.progress import RunReporter  # noqa: E402
from trainer.quiet import quiet_libraries  # noqa: E402

WARMUP = 10


class StepClock(RunReporter):
    """A silent reporter that notes when each step ends."""

    def __init__(self):
        super().__init__(console=False)
        self.times: list[float] = []

    def step(self, step, loss, lr, epoch):
        self.times.append(time.perf_counter())


def step_times(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1:])]


def engine_run(job: Path, out: Path, steps: int) -> list[float]:
    cfg = load_job(job, [f"training.max_steps={steps}", f"output.dir={out}", "output.overwrite=true"])
    clock = StepClock()
    train(cfg, default_paths(cfg), clock)
    return step_times(clock.times)


def reference_run(job: Path, steps: int) -> list[float]:
    """The same math with nothing around it: cached latents and text states, peft LoRA, AdamW."""
    import torch.nn.functional as F
    from diffusers.training_utils import cast_training_params

    from trainer.data import TrainData, scan_dataset
    from trainer.methods.lora import unet_lora_config
    from trainer.models import load_base_model

    cfg = load_job(job)
    model = load_base_model(cfg.model)
    torch.manual_seed(cfg.training.seed)
    model.unet.add_adapter(unet_lora_config(cfg.lora))
    cast_training_params(model.unet, dtype=torch.float32)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.training.learning_rate, weight_decay=cfg.training.weight_decay)
    data = TrainData(scan_dataset(cfg.dataset), cfg.dataset, cfg.training.batch_size, cfg.training.seed)
    batches = []
    with torch.no_grad():
        for batch in data.epoch_batches(0):
            latents = model.vae.encode(batch.pixels).latent_dist.mode() * model.vae.config.scaling_factor
            ids = model.tokenizers[0](batch.captions, padding="max_length", max_length=77, truncation=True,
                                      return_tensors="pt").input_ids
            batches.append((latents, model.text_encoders[0](ids)[0]))
    scheduler = model.noise_scheduler
    model.unet.train()
    stamps = []
    for step in range(steps):
        latents, hidden = batches[step % len(batches)]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (len(latents),))
        pred = model.unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.training.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return step_times(stamps)


def cold_start(job: Path, out: Path) -> dict:
    """`trainer run` in a fresh process: seconds until its first step is reported, and its peak RSS."""
    job_dir = out / "job"
    job_dir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "trainer", "run", str(job), "--job-dir", str(job_dir),
            "--set", "training.max_steps=3", "--set", f"output.dir={out}", "--set", "output.overwrite=true"]
    start = time.perf_counter()
    worker = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_step = None
    while worker.poll() is None or first_step is None:
        status = job_dir / "status.json"
        if first_step is None and status.exists():
            try:
                if (json.loads(status.read_text()).get("step") or 0) >= 1:
                    first_step = time.perf_counter() - start
            except json.JSONDecodeError:
                pass
        if worker.poll() is not None and first_step is None:
            break
        time.sleep(0.02)
    worker.wait()
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds_to_first_step": first_step, "peak_rss_mib": peak_kib / 1024, "exit_code": worker.returncode}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "data", n=4)
        job = write_job(tmp / "job.toml", "builtin:tiny-sd15", data, tmp / "out", sections={
            "training": {"batch_size": 2, "cache_latents": True, "max_grad_norm": 1.0, "optimizer": "adamw"},
            "lora": {"rank": 8, "alpha": 8}})
        engine, reference = [], []
        for r in range(args.rounds):  # alternate, so drift in machine load hits both sides alike
            reference += reference_run(job, args.steps)
            engine += engine_run(job, tmp / f"out{r}", args.steps)
        result = {
            "threads": torch.get_num_threads(),
            "engine_median_step_s": statistics.median(engine),
            "reference_median_step_s": statistics.median(reference),
            "ratio": statistics.median(engine) / statistics.median(reference),
            **cold_start(job, tmp / "cold"),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
