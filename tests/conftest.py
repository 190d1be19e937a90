"""Test-wide settings: everything offline, nothing downloaded, CPU only."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Tiny models are all overhead: one thread per process avoids OpenMP spinning against the other test
# processes (workers, DDP ranks) on a 2-core machine, which made steps 10-50x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory):
    """A tiny random SD 1.x model saved in diffusers format, shared by the whole session (read-only)."""
    from trainer.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd15", arch="sd15", fmt="diffusers")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    from trainer.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl", arch="sdxl", fmt="diffusers")
