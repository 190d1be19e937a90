"""Frozen modules off the training device while their outputs are cached, the way Kohya's sd-scripts orders
its set-up: the VAE goes to the device to encode the latents and back, the text encoders to encode the
captions and back, and only then the UNet. The device then holds at most the larger of the caching and the
training phase, never both. Whatever needs a parked module later (previews, validation, a caption the cache
has not seen) borrows it for the moment (`on_device`) and it is parked again after."""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator

import torch

# Where idle modules wait, in their own dtype (host RAM). Tests park them on "meta", where any use fails.
PARKING = torch.device("cpu")


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first tensor (the parking place for one without any)."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return _resolved(first.device if first is not None else torch.device(PARKING))


def park(modules: Iterable[torch.nn.Module]) -> None:
    """Move idle modules to the parking place and give their device memory back."""
    for module in _unique(modules):
        module.to(PARKING)
    free_device_cache()


@contextlib.contextmanager
def on_device(modules: Iterable[torch.nn.Module], device) -> Iterator[None]:
    """The modules on `device` for the block; each one that had to move goes back where it was after
    (a parked one is parked again). Modules already there are left alone, so this costs nothing where
    nothing is parked."""
    device = _resolved(torch.device(device))
    moved = [(module, home) for module, home in ((m, device_of(m)) for m in _unique(modules)) if home != device]
    for module, _ in moved:
        module.to(device)
    try:
        yield
    finally:
        for module, home in moved:
            module.to(home)
        if moved:
            free_device_cache()


def free_device_cache() -> None:
    """Hand the memory of moved-off modules back to CUDA (the caching allocator keeps it otherwise)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _resolved(device: torch.device) -> torch.device:
    """"cuda" as the index it means, so it compares equal to the "cuda:0" a tensor reports."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _unique(modules: Iterable[torch.nn.Module]) -> list[torch.nn.Module]:
    seen: dict[int, torch.nn.Module] = {}
    for module in modules:
        if module is not None:  # a text encoder the model runs without (SD3's T5)
            seen.setdefault(id(module), module)
    return list(seen.values())
