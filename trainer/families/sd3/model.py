"""SD3's components and where its single files keep them; T5 may be left out."""
from __future__ import annotations

from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

from ..dit.single_file import Layout, TextSlot
from .keymap import sd3_rows


def _convert(weights, config, source):
    # diffusers' converter reads any width (it derives sizes from the tensors), so SD3 uses it
    return convert_sd3_transformer_checkpoint_to_diffusers(weights)


SD3_LAYOUT = Layout("sd3", SD3Transformer2DModel, sd3_rows,
                    (TextSlot("text_encoder", "tokenizer", "clip_l"), TextSlot("text_encoder_2", "tokenizer_2", "clip_g"),
                     TextSlot("text_encoder_3", "tokenizer_3", "t5xxl", required=False)), convert=_convert)
PIPELINE = StableDiffusion3Pipeline
