"""Which of the denoiser's blocks training.blocks_to_swap sends to host RAM, torch-free so the memory model and
the planner choose exactly what the loop does (trainer/blockswap.py moves them)."""
from __future__ import annotations

# Swapped blocks on the GPU at once: the one running and the next one, fetched while it runs.
RESIDENT = 2


def swapped_indices(sizes: tuple[int, ...] | list[int], count: int) -> list[int]:
    """The `count` largest blocks (on equal sizes the later ones, as Kohya swaps the last blocks), in run
    order. Largest first because a swapped block saves its size and costs one copy each way per step."""
    ranked = sorted(range(len(sizes)), key=lambda i: (-sizes[i], -i))
    return sorted(ranked[:max(0, min(count, len(sizes)))])


def swap_saving(sizes, count: int) -> int:
    """Parameters off the GPU at its peak with `count` blocks swapped: all of them but the RESIDENT largest."""
    chosen = sorted((sizes[i] for i in swapped_indices(sizes, count)), reverse=True)
    return sum(chosen[RESIDENT:])

