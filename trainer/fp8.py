"""training.base_quantization = "fp8" (Kohya's --fp8_base): the frozen UNet's linear and conv weights stored in
float8_e4m3fn, each upcast to the training dtype for its own forward. diffusers' layerwise casting chooses the
layers: its default skip list leaves the norms and every peft adapter layer (lora_*, hada_*, lokr_*, the DoRA
magnitude) alone, so what learns stays fp32 and is never hooked.

Memory: the graph keeps the upcast copy of each layer it needs for backward, so the saving holds only where
gradient checkpointing lets those copies go block by block (trainer/memory.py models both)."""
from __future__ import annotations

import torch
from diffusers.hooks.layerwise_casting import LayerwiseCastingHook

STORAGE = torch.float8_e4m3fn


class FreshCopyCastingHook(LayerwiseCastingHook):
    """Hand-written because the library's hook is for inference: it casts with module.to(), which swaps the data
    of the same Parameter in place, so a tensor autograd saved in the forward turns fp8 under it afterwards
    (gradient checkpointing then refuses: "Recomputed values ... have different metadata"). Here the fp8
    Parameter stays put between forwards and each forward gets a new compute-dtype tensor of its own, which
    the graph may keep. `held` (DoRA, below) keeps the copy across a wider forward."""

    held = False

    def initialize_hook(self, module):
        self.stored = {}
        return super().initialize_hook(module)

    def pre_forward(self, module, *args, **kwargs):
        if not self.held:
            self.upcast(module)
        return args, kwargs

    def post_forward(self, module, output):
        if not self.held:
            self.restore(module)
        return output

    def upcast(self, module) -> None:
        self.restore(module)  # a forward that never finished (below) left its copy in place
        for name, p in list(module._parameters.items()):
            if p is not None and p.dtype == self.storage_dtype:
                self.stored[name] = p
                module._parameters[name] = torch.nn.Parameter(p.to(self.compute_dtype), requires_grad=False)

    def restore(self, module) -> None:
        module._parameters.update(self.stored)
        self.stored = {}


def settle(unet) -> None:
    """After backward: gradient checkpointing stops a block's recomputation as soon as it has what backward
    needs, so the layer it stopped in never ran its post-forward and still holds its upcast copy. Put the fp8
    weights back."""
    for module in unet.modules():
        hook = _casting_hook(module)
        if isinstance(hook, FreshCopyCastingHook) and hook.stored and not hook.held:
            hook.restore(module)


def store_unet_fp8(model, method, compute_dtype: torch.dtype) -> None:
    if method.spec.trains_full_unet(method.cfg):  # the config checks refuse this first; a guard for callers
        raise ValueError('training.base_quantization = "fp8" stores the frozen UNet in fp8, but this job trains '
                         "the whole UNet")
    unet = model.unet
    unet.enable_layerwise_casting(storage_dtype=STORAGE, compute_dtype=compute_dtype)
    for module in unet.modules():
        hook = _casting_hook(module)
        if hook is not None:
            # The same object, so diffusers still finds it by name (unet.dtype reads its compute dtype); the
            # registry's forward wrapper holds its bound methods, so those are re-pointed.
            hook.__class__ = FreshCopyCastingHook
            hook.stored = {}
            hook.fn_ref.pre_forward, hook.fn_ref.post_forward = hook.pre_forward, hook.post_forward
    _hold_dora_bases(unet)


def _casting_hook(module):
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook("layerwise_casting") if registry is not None else None


def _hold_dora_bases(unet) -> None:
    """Hand-written because the library gets DoRA wrong: peft's DoRA reads its base layer's weight after the
    base layer's own forward, when the hook has put the fp8 weight back (the conv path then adds an fp8 and a
    bf16 tensor: "Promotion for Float8 Types is not supported"). Around a DoRA layer's whole forward its base
    layer holds the compute-dtype copy."""
    from peft.tuners.lora.layer import LoraLayer

    for layer in unet.modules():
        if not (isinstance(layer, LoraLayer) and any(layer.use_dora.values())):
            continue
        base = layer.get_base_layer()
        hook = _casting_hook(base)
        if hook is None:  # a skipped layer (not stored in fp8)
            continue

        def hold(_module, _args, hook=hook, base=base):
            hook.upcast(base)
            hook.held = True

        def release(_module, _args, _output, hook=hook, base=base):
            hook.held = False
            hook.restore(base)

        layer.register_forward_pre_hook(hold)
        layer.register_forward_hook(release)
