"""Several machines through accelerate's own launch settings: two "machines" (here two launches on this host,
one CPU rank each, gloo) run the same job TOML from per-machine accelerate config files (docs/benchmarks.md,
"Several GPUs and machines"). Kiln adds no launcher of its own."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from tests.helpers import free_port, make_dataset, write_job

REPO = Path(__file__).resolve().parents[1]


def machine_config(path: Path, rank: int, port: int) -> Path:
    """What `accelerate config` writes for machine `rank` of a 2-machine cluster with one process each."""
    path.write_text("\n".join([
        "compute_environment: LOCAL_MACHINE", "distributed_type: MULTI_GPU", "use_cpu: true",
        "num_machines: 2", f"machine_rank: {rank}", "num_processes: 2",  # processes in all, over every machine
        "main_process_ip: 127.0.0.1", f"main_process_port: {port}", "rdzv_backend: static", "same_network: true",
        "mixed_precision: 'no'", "dynamo_config: {}", "main_training_function: main", ""]))
    return path


def test_two_machines_train_one_job_from_accelerate_config_files(tmp_path):
    data = make_dataset(tmp_path / "data", n=4)
    job = write_job(tmp_path / "job.toml", "builtin:tiny-sd15", data, tmp_path / "out",
                    sections={"training": {"max_steps": 3, "batch_size": 1, "num_processes": 2}})
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    machines = [subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                  str(machine_config(tmp_path / f"machine{rank}.yaml", rank, port)),
                                  "-m", "trainer", "run", str(job)],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for rank in (0, 1)]
    try:
        results = [m.communicate(timeout=400) for m in machines]
    finally:
        for m in machines:
            m.kill()
    for m, (_, err) in zip(machines, results):
        assert m.returncode == 0, err[-3000:]
    assert "2 process(es)" in results[0][1]  # one world of two ranks, not two worlds of one
    with safe_open(tmp_path / "out" / "test-lora.safetensors", "pt") as f:
        assert f.metadata()["ss_steps"] == "3"
