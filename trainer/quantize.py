"""training.base_quantization = "int8": the frozen UNet's linear layers as bitsandbytes' LLM.int8 layers
(Linear8bitLt: int8 weights with a scale per row, outlier features above the threshold kept in 16 bits), the
QLoRA way. peft's LoRA layers wrap any base layer and call its forward, so what learns stays fp32 on top of the
int8 base; conv layers and norms stay in the training dtype (bitsandbytes quantizes linear layers only; in
SDXL's UNet the linear layers hold 2.0 G of its 2.6 G parameters).

What it does to the result: the LoRA is trained against the rounded base and applied by users to the
full-precision one (docs/lora.md). Loaded onto the same int8 base it is exact (tests/test_quantize.py)."""
from __future__ import annotations

import torch

THRESHOLD = 6.0  # LLM.int8's outlier threshold, bitsandbytes' and transformers' default


def is_adapter(name: str) -> bool:
    """peft's adapter layers (lora_A/lora_B, LoHa/LoKr factors, DoRA magnitudes): never quantized."""
    return any(part.startswith(("lora_", "hada_", "lokr_")) for part in name.split("."))


def quantize_linear_layers(module: torch.nn.Module, device) -> int:
    """Every linear layer of `module` that is not an adapter's, replaced by an int8 one on `device`, one layer at
    a time (each layer's full-precision weight is freed as its int8 copy is made). The parameters quantized."""
    import bitsandbytes as bnb

    count = 0
    for name, layer in list(module.named_modules()):
        for child_name, child in list(layer.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is not torch.nn.Linear or is_adapter(full) or child.weight.requires_grad:
                continue
            int8 = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                       has_fp16_weights=False, threshold=THRESHOLD, device="meta")
            int8.weight = bnb.nn.Int8Params(child.weight.data, requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                int8.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(layer, child_name, int8.to(device))  # bitsandbytes quantizes as it moves the weight
            count += child.weight.numel()
    return count
