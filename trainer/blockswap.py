"""training.blocks_to_swap: N of the denoiser's blocks keep their frozen weights in host RAM (pinned on CUDA)
and come to the GPU just before they run, in the forward and in the backward (gradient checkpointing's
recompute runs a block again), then go back. What learns (LoRA layers) and the buffers stay on the GPU.

Hand-written because the library mechanisms are for inference: diffusers' group offloading (hooks/
group_offloading.py) and accelerate's hooks move every tensor of a group, learning ones included (their
gradients would then live on another device than their weights), and prefetch only in the forward's order,
while backward visits the blocks in reverse. The schedule follows Kohya's training-time one
(sd-scripts library/custom_offloading_utils.py): copy the next block on a side CUDA stream while this one
computes, wait for it only when it is needed.

How: every module in a swapped block that owns frozen parameters gets a forward pre-hook that makes the block
resident; that catches each use, whatever unit gradient checkpointing recomputes. At most RESIDENT swapped
blocks are on the GPU: the one running and the one fetched next (forward: the next block in run order;
backward, found by autograd's current graph task: the previous one); the least recently used goes back."""
from __future__ import annotations

import torch

from .swap_blocks import RESIDENT, swapped_indices


class Placement:
    """Where a parked weight lives and how it comes to the device. Tests replace PLACEMENT with one whose
    parked weights are poison, so any use of a block that was not fetched spoils the run."""

    def host(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        host = tensor.detach().to("cpu")
        return host.pin_memory() if device.type == "cuda" else host  # pinned: the copies can be asynchronous

    def parked(self, host: torch.Tensor) -> torch.Tensor:
        return host  # the parameter's data is the host copy itself: no second copy in RAM

    def fetch(self, host: torch.Tensor, device: torch.device) -> torch.Tensor:
        return host.to(device, non_blocking=device.type == "cuda")


PLACEMENT = Placement()


def denoiser_blocks(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's blocks in run order. A UNet's are the units diffusers checkpoints one by one (each
    resnet, attention and resampler of the down, mid and up blocks: SDXL has 32, six of them its 10-layer
    transformers), fine enough to swap only what is large; a transformer's are its transformer blocks."""
    if hasattr(denoiser, "down_blocks"):
        units: list[torch.nn.Module] = []
        for block in denoiser.down_blocks:
            units += _interleaved(block.resnets, getattr(block, "attentions", None)) + list(block.downsamplers or [])
        mid = denoiser.mid_block
        units += [mid.resnets[0]] + _interleaved(getattr(mid, "attentions", None) or [], mid.resnets[1:])
        for block in denoiser.up_blocks:
            units += _interleaved(block.resnets, getattr(block, "attentions", None)) + list(block.upsamplers or [])
        return units
    return [b for name in ("transformer_blocks", "single_transformer_blocks") for b in getattr(denoiser, name, [])]


def _interleaved(first, second) -> list[torch.nn.Module]:
    first, second = list(first), list(second or [])
    out = []
    for i, module in enumerate(first):
        out.append(module)
        if i < len(second):
            out.append(second[i])
    return out + second[len(first):]


class _Block:
    def __init__(self, params: list[torch.nn.Parameter], device: torch.device):
        self.params = params
        self.hosts = [PLACEMENT.host(p.data, device) for p in params]
        self.resident = False
        self.ready: torch.cuda.Event | None = None  # set while a side-stream copy is in flight


class BlockSwapper:
    def __init__(self, denoiser: torch.nn.Module, count: int, device, blocks: list[torch.nn.Module] | None = None):
        blocks = blocks if blocks is not None else denoiser_blocks(denoiser)
        self.device = torch.device(device)
        sizes = [sum(p.numel() for p in b.parameters() if not p.requires_grad) for b in blocks]
        chosen = [i for i in swapped_indices(sizes, count) if sizes[i]]
        self.blocks = [_Block([p for p in blocks[i].parameters() if not p.requires_grad], self.device)
                       for i in chosen]
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.recent: list[int] = []  # resident blocks, least recently used first
        self.current = -1  # the block running now
        self.fetches = 0
        self.handles = []
        for k, i in enumerate(chosen):
            for module in blocks[i].modules():
                if any(p is not None and not p.requires_grad for p in module._parameters.values()):
                    self.handles.append(module.register_forward_pre_hook(lambda _m, _a, k=k: self.use(k)))
        for block in self.blocks:
            self._park(block)
        self.swapped_bytes = sum(h.numel() * h.element_size() for b in self.blocks for h in b.hosts)

    def place(self, module: torch.nn.Module) -> None:
        """Everything of `module` on the device but the parked weights (module.to would bring those too)."""
        parked = {id(p) for block in self.blocks for p in block.params}
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                if id(tensor) not in parked:
                    tensor.data = tensor.data.to(self.device)

    def use(self, k: int) -> None:
        block = self.blocks[k]
        if not block.resident:
            self._fetch(k)
        if block.ready is not None:  # the side-stream copy must land before the compute reads it
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(block.ready)
            for p in block.params:
                p.data.record_stream(compute)  # freed after the compute stream's use, not the copy stream's
            block.ready = None
        if self.current != k:
            self.current = k
            self.recent = [i for i in self.recent if i != k] + [k]
            backward = torch._C._current_graph_task_id() != -1
            following = k - 1 if backward else k + 1
            if 0 <= following < len(self.blocks) and not self.blocks[following].resident:
                self._fetch(following)

    def _fetch(self, k: int) -> None:
        while len(self.recent) >= RESIDENT:
            self._park(self.blocks[self.recent.pop(0)])
        block = self.blocks[k]
        with torch.no_grad():
            if self.stream is None:
                for p, host in zip(block.params, block.hosts):
                    p.data = PLACEMENT.fetch(host, self.device)
            else:
                with torch.cuda.stream(self.stream):
                    for p, host in zip(block.params, block.hosts):
                        p.data = PLACEMENT.fetch(host, self.device)
                    block.ready = torch.cuda.Event()
                    block.ready.record(self.stream)
        block.resident = True
        self.recent.append(k)
        self.fetches += 1

    def _park(self, block: _Block) -> None:
        with torch.no_grad():
            for p, host in zip(block.params, block.hosts):
                p.data = PLACEMENT.parked(host)
        block.resident, block.ready = False, None
