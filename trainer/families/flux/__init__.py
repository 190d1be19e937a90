"""Flux.1 (dev, schnell): tiny models, loading, caption encoding, the denoiser call, LoRA targets, export."""
