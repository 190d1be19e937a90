"""bench/gpu_suite.py --smoke: the GPU suite's whole code path on the CPU at toy size, so the few GPU minutes
are never spent finding a typo."""
from __future__ import annotations

import json


def test_gpu_suite_smoke_runs_every_part_and_writes_its_report(tmp_path):
    from bench.gpu_suite import main

    report = main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert saved["smoke"] is True and saved["training"] == report["training"]
    rows = {row["case"]: row for row in saved["training"]}
    assert {"sd15-64-bs2-fp16", "sdxl-64-bs1-bf16-savers", "sdxl-64-bs1-bf16-savers-fp8",
            "sd15-64-bs2-fp16-channels_last",
            "sd15-128-bs2-fp16-full_batches"} <= set(rows)
    # The mixed-aspect dataset's 5 batches of 8 samples become 4 full ones; images/s counts trained samples.
    assert rows["sd15-128-bs2-fp16-full_batches"]["samples_per_batch"] == 2.0
    assert rows["sd15-64-bs2-fp16"]["samples_per_batch"] == 2.0
    assert saved["skipped"] == []
    for row in rows.values():
        assert row["loss_finite"] and row["export_loads"], row
        assert row["it_per_s"] > 0 and row["images_per_s"] > 0
        # the caches are built before the UNet is placed; the model predicts the same phases
        assert row["phases"] == ["loading", "caching", "training"], row["phases"]
        assert list(row["predicted_phases_gib"]) == ["caching latents", "caching text-encoder outputs", "training"]
        assert row["predicted_vram_gib"] == max(row["predicted_phases_gib"].values())
    # the fp8 base: the same job, predicted lower by the fp8 UNet layers
    fp8, plain = rows["sdxl-64-bs1-bf16-savers-fp8"], rows["sdxl-64-bs1-bf16-savers"]
    assert fp8["predicted_phases_gib"]["training"] < plain["predicted_phases_gib"]["training"]
    # blocks_to_swap: predicted lower again, by the swapped blocks but the two on the GPU at a time
    swapped = rows["sdxl-64-bs1-bf16-savers-swap6"]
    assert swapped["predicted_phases_gib"]["training"] < plain["predicted_phases_gib"]["training"]
    # int8 / nf4 bases (bitsandbytes): predicted lower than the plain case, nf4 lowest
    int8, nf4 = rows["sdxl-64-bs1-bf16-savers-int8"], rows["sdxl-64-bs1-bf16-savers-nf4"]
    assert nf4["predicted_phases_gib"]["training"] < int8["predicted_phases_gib"]["training"] \
        < plain["predicted_phases_gib"]["training"]
    # the transformer families: Flux.1 with the fp8 base, and with blocks swapped (predicted lower); SD 3.5
    flux = rows["tiny-flux-64-bs1-bf16-savers-fp8"]
    flux_swapped = rows["tiny-flux-64-bs1-bf16-savers-fp8-swap4"]
    assert flux["arch"] == "flux" and rows["tiny-sd3-64-bs1-bf16-savers"]["arch"] == "sd3"
    assert flux_swapped["predicted_phases_gib"]["training"] < flux["predicted_phases_gib"]["training"]
    reference = rows["sd15-64-bs2-fp16"]["reference"]
    assert reference["loss_finite"] and reference["images_per_s"] > 0
    generation = saved["class_generation"]
    assert generation["batched_images_per_s"] > 0 and generation["one_at_a_time_images_per_s"] > 0
    captioning = saved["captioning"]  # Florence-2 through the caption runner: every image captioned
    assert captioning["captioned"] == 4 and captioning["failed"] == 0 and captioning["images_per_s"] > 0
    table = (tmp_path / "gpu_suite.md").read_text()
    assert all(f"| {name} |" in table for name in rows) and "Kiln / reference" in table
    assert "| Florence-2 captioning |" in table
    assert all(f"| {name} | {phase} |" in table for name in rows for phase in ("loading", "caching", "training"))
