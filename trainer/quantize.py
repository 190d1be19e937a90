"""training.base_quantization = "int8" | "nf4": the frozen UNet's linear layers as bitsandbytes' LLM.int8
layers (Linear8bitLt: int8 weights with a scale per row, outlier features above the threshold kept in 16 bits)
or 4-bit NormalFloat layers (Linear4bit, QLoRA's usual setting: a scale per 64 weights, computing in the
training dtype). peft's LoRA layers wrap any base layer and call its forward, so what learns stays fp32 on top of the
int8 base; conv layers and norms stay in the training dtype (bitsandbytes quantizes linear layers only; in
SDXL's UNet the linear layers hold 2.0 G of its 2.6 G parameters).

What it does to the result: the LoRA is trained against the rounded base and applied by users to the
full-precision one (docs/lora.md). Loaded onto the same quantized base it is exact (tests/test_quantize.py)."""
from __future__ import annotations

import functools

import torch

THRESHOLD = 6.0  # LLM.int8's outlier threshold, bitsandbytes' and transformers' default


def is_adapter(name: str) -> bool:
    """peft's adapter layers (lora_A/lora_B, LoHa/LoKr factors, DoRA magnitudes): never quantized."""
    return any(part.startswith(("lora_", "hada_", "lokr_")) for part in name.split("."))


def quantize_linear_layers(module: torch.nn.Module, device, kind: str = "int8",
                           compute_dtype: torch.dtype = torch.float32, keep: tuple[str, ...] = ()) -> int:
    """Every linear layer of `module` that is not an adapter's (nor named in `keep`), replaced by an int8 or nf4
    one on `device`, one layer at a time (each layer's full-precision weight is freed as its quantized copy is
    made). nf4 layers compute in `compute_dtype` (the training dtype). The parameters quantized."""
    count = 0
    for name, layer in list(module.named_modules()):
        for child_name, child in list(layer.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if (type(child) is not torch.nn.Linear or is_adapter(full) or child.weight.requires_grad
                    or child_name in keep):
                continue
            quantized = quantized_linear(child.weight.data, child.bias.data if child.bias is not None else None,
                                         kind, compute_dtype)
            setattr(layer, child_name, quantized.to(device))  # bitsandbytes quantizes as it moves the weight
            count += child.weight.numel()
    return count


@functools.cache
def _autocast_linear4bit():
    """bitsandbytes' Linear4bit returning what a plain Linear returns under autocast. Hand-written because its
    forward casts the result back to the input's dtype and autocast does not know the op: an fp32 input (SDXL's
    sinusoidal timestep embedding) then leaves an fp32 output that meets the UNet's bf16 norms, and the CPU's
    group_norm refuses the mix ("mixed dtype (CPU)"); on a GPU it silently keeps those activations in fp32."""
    import bitsandbytes as bnb

    class AutocastLinear4bit(bnb.nn.Linear4bit):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            device = x.device.type
            return out.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else out

    return AutocastLinear4bit


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, kind: str,
                     compute_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A frozen int8 / nf4 layer holding `weight` (still in full precision until its first .to(device))."""
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    if kind == "nf4":
        layer = _autocast_linear4bit()(in_features, out_features, bias=bias is not None,
                                       compute_dtype=compute_dtype, quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    else:
        layer = _int8_linear_class()(in_features, out_features, bias=bias is not None, has_fp16_weights=False,
                                     threshold=THRESHOLD, device="meta")
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias, requires_grad=False)
    return layer


@functools.cache
def _int8_linear_class():
    """bitsandbytes' Linear8bitLt, movable between devices once quantized (made on first use: bitsandbytes
    is imported only by runs that quantize)."""
    import bitsandbytes as bnb

    class Int8Linear(bnb.nn.Linear8bitLt):
        """A quantized int8 layer that Module.to / .cpu() / .cuda() can move (a model quantized on the host
        as it is read later goes to the GPU, and parked modules move back and forth). torch moves a parameter
        by swapping its data, or by re-wrapping it (which Int8Params refuses), so the per-row scales that
        Int8Params keeps as attributes (SCB, or the matmul state once a forward ran) would stay behind:
        here the weight is replaced by a moved copy that carries them."""

        def _apply(self, fn, recurse=True):
            weight = self._parameters.pop("weight")
            try:
                super()._apply(fn, recurse)  # the bias, by torch's own rules
            finally:
                self._parameters["weight"] = weight
            if weight.dtype != torch.int8:  # not quantized yet: bnb quantizes it as it moves (its own to())
                self._parameters["weight"] = fn(weight)
                return self
            data = fn(weight.data)  # a plain int8 tensor: .to / .cuda / .cpu move it, dtype casts skip it
            if data is weight.data:
                return self
            moved = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)
            moved.CB = data if weight.CB is not None else None
            moved.SCB = weight.SCB.to(data.device) if weight.SCB is not None else None
            if self.state.SCB is not None:  # a forward ran: the scales live in the matmul state
                self.state.CB, self.state.SCB = data, self.state.SCB.to(data.device)
            self._parameters["weight"] = moved
            return self

    return Int8Linear
