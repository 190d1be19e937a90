"""Cold start of the web UI: seconds from launching `app.py` to the first page it serves (target <= 5 s on a
CPU). Run: .venv/bin/python bench/ui_cold_start.py [--runs 3]"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_first_page(jobs_dir: Path, timeout_s: float = 60.0) -> float:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--jobs-dir", str(jobs_dir)], cwd=ROOT,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.perf_counter() - started < timeout_s:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200 and b"<html" in response.read(2000).lower():
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"app.py served no page within {timeout_s:g} s")
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        app.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as workspace:
        times = [time_to_first_page(Path(workspace) / "jobs") for _ in range(runs)]
    print(f"ui cold start (app.py -> first page): median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s over {runs} runs (target <= 5 s)")


if __name__ == "__main__":
    main()
