"""Fine-tune (Kohya's fine_tune.py, EveryDream): the whole UNet, and optionally the text encoder, learns from
each image's own caption; no instance prompt, no class images. The training and the checkpoint are full
DreamBooth's (full_model.py) without its prior preservation."""
from __future__ import annotations

from .full_model import FullModelTraining, TextEncoderStop


class FineTuneMethod(TextEncoderStop, FullModelTraining):
    stop_setting = "finetune.stop_text_encoder_step"
    step_state_key = "finetune.optimizer_steps"
