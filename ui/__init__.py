"""Kiln's Gradio UI. It never imports torch: it writes job files and watches job folders (trainer.jobs)."""
from .app import build_app, launch_app

__all__ = ["build_app", "launch_app"]
