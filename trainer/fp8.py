"""training.fp8_base (Kohya's --fp8_base): the frozen UNet's linear and conv weights stored in float8_e4m3fn,
each upcast to the training dtype for its own forward. diffusers' layerwise casting does the work; its default
skip list leaves the norms, the embeddings it knows and every peft adapter layer (lora_*, hada_*, lokr_*, the
DoRA magnitude) alone, so what learns stays fp32 and is never hooked.

Memory: the graph keeps the upcast copy of each layer it needs for backward (autograd saves the compute-dtype
weight, not the fp8 one), so the saving holds only where gradient checkpointing lets those copies go block by
block (trainer/memory.py models both)."""
from __future__ import annotations

import torch

STORAGE = torch.float8_e4m3fn


def store_unet_fp8(model, method, compute_dtype: torch.dtype) -> None:
    if method.spec.trains_full_unet(method.cfg):  # the config checks refuse this first; a guard for callers
        raise ValueError("training.fp8_base stores the frozen UNet in fp8, but this job trains the whole UNet")
    unet = model.unet
    unet.enable_layerwise_casting(storage_dtype=STORAGE, compute_dtype=compute_dtype)
    _hold_dora_bases(unet, compute_dtype)


def _hold_dora_bases(unet, compute_dtype: torch.dtype) -> None:
    """Hand-written because the library gets DoRA wrong: peft's DoRA reads its base layer's weight after the
    base layer's own forward, when the casting hook has stored it back in fp8 (the conv path then adds an fp8
    and a bf16 tensor: "Promotion for Float8 Types is not supported"). Around a DoRA layer's whole forward its
    base layer is kept in the compute dtype: the base hook's storage dtype is the compute dtype meanwhile."""
    from peft.tuners.lora.layer import LoraLayer

    for layer in unet.modules():
        if not (isinstance(layer, LoraLayer) and any(layer.use_dora.values())):
            continue
        base = layer.get_base_layer()
        hook = getattr(base, "_diffusers_hook", None)
        hook = hook.get_hook("layerwise_casting") if hook is not None else None
        if hook is None:  # a skipped layer (not stored in fp8)
            continue

        def hold(_module, _args, hook=hook, base=base):
            hook.storage_dtype = compute_dtype
            base.to(dtype=compute_dtype)

        def release(_module, _args, _output, hook=hook, base=base):
            hook.storage_dtype = STORAGE
            base.to(dtype=STORAGE)

        layer.register_forward_pre_hook(hold)
        layer.register_forward_hook(release)
