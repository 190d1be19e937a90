"""Chroma's components and where its single files keep them (T5 only)."""
from __future__ import annotations

from diffusers import ChromaPipeline, ChromaTransformer2DModel

from ..dit.single_file import Layout, TextSlot
from ..flux.keymap import flux_rows


def chroma_rows(config):
    return flux_rows(config, chroma=True)


CHROMA_LAYOUT = Layout("chroma", ChromaTransformer2DModel, chroma_rows, (TextSlot("text_encoder", "tokenizer", "t5xxl"),))
PIPELINE = ChromaPipeline
