"""Pieces the transformer families (SD 3/3.5, Flux.1, Chroma) share: the offline T5 tokenizer, original ↔
diffusers key maps, the separate component files people keep (clip_l, clip_g, t5xxl, ae) and the export of
LoRA deltas onto fused original-layout weights."""
