"""The planner's predicted table for docs/benchmarks.md: a rank-16 LoRA at 1024 px, batch 1, bf16, AdamW, no
saver on, for each family on 8 / 12 / 16 / 24 GB cards: what training.fit = "auto" turns on, the predicted
peak, and the estimated slow-down. Torch-free and instant (trainer/planner.py, trainer/memory.py).

  python bench/fit_table.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import parse_job  # noqa: E402
from trainer.planner import plan_fit  # noqa: E402

MODELS = (("sdxl", "SDXL"), ("sd3", "SD 3.5 Large"), ("flux", "Flux.1 dev"))
CARDS = (8, 12, 16, 24)
PLAIN = {"mixed_precision": "bf16", "optimizer": "adamw", "cache_latents": False,
         "cache_text_encoder_outputs": False, "gradient_checkpointing": False}


def job(arch: str):
    return parse_job({"method": "lora", "model": {"base": "x", "arch": arch},
                      "dataset": {"dir": "/nowhere", "resolution": 1024}, "training": PLAIN}, complete=False)


def table() -> str:
    lines = ["| model | card | as written | with training.fit = \"auto\" | peak | slower |", "|---|---|---|---|---|---|"]
    for arch, label in MODELS:
        for card in CARDS:
            plan = plan_fit(job(arch), arch, card)
            chosen = ", ".join(s.label for s in plan.savers) or "nothing"
            verdict = chosen if plan.fits else f"does not fit: {chosen} still leaves"
            lines.append(f"| {label} | {card} GB | {plan.before.vram_gib:.1f} GiB | {verdict} | "
                         f"{plan.after.vram_gib:.1f} GiB ({plan.after.peak.name}) | "
                         f"{'~%.0f %%' % (plan.slower * 100) if plan.fits else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
