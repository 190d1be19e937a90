"""SD 3 / 3.5 (Medium, Large): tiny models, loading, caption encoding, the denoiser call, LoRA targets, export."""
