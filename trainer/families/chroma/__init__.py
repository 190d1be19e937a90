"""Chroma: Flux-shaped, T5 only, with its own modulation (a distilled guidance network instead of per-block
modulation layers)."""
