"""Flux's components and where its single files keep them."""
from __future__ import annotations

from diffusers import FluxPipeline, FluxTransformer2DModel

from ..dit.single_file import Layout, TextSlot
from .keymap import flux_rows

FLUX_LAYOUT = Layout("flux", FluxTransformer2DModel, flux_rows,
                     (TextSlot("text_encoder", "tokenizer", "clip_l"), TextSlot("text_encoder_2", "tokenizer_2", "t5xxl")))
PIPELINE = FluxPipeline
