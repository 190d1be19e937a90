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


# Parameters of each block trainer.blockswap.denoiser_blocks lists, in run order (tests/test_blockswap.py rebuilds
# the architectures on the meta device and counts): a UNet's resnets, attentions and resamplers; a
# transformer's blocks (Flux.1 dev: 19 double + 38 single; SD 3.5 Large: 38 joint, the last without context).
BLOCK_SIZES: dict[str, tuple[int, ...]] = {
    "sd15": (2255040, 2546240, 2255040, 2546240, 921920, 6558080, 9188480, 8196480, 9188480, 3687040, 24584960,
             34760960, 31138560, 34760960, 14746880, 31138560, 31138560, 31138560, 34760960, 31138560, 49164800,
             49164800, 49164800, 14746880, 49164800, 34760960, 49164800, 34760960, 40971520, 34760960, 14746880,
             16801280, 9188480, 12704000, 9188480, 10655360, 9188480, 3687040, 4407040, 2546240, 3382400,
             2546240, 3382400, 2546240),
    "sd2": (2255040, 2710080, 2255040, 2710080, 921920, 6558080, 9516160, 8196480, 9516160, 3687040, 24584960,
            35416320, 31138560, 35416320, 14746880, 31138560, 31138560, 31138560, 35416320, 31138560, 49164800,
            49164800, 49164800, 14746880, 49164800, 35416320, 49164800, 35416320, 40971520, 35416320, 14746880,
            16801280, 9516160, 12704000, 9516160, 10655360, 9516160, 3687040, 4407040, 2710080, 3382400, 2710080,
            3382400, 2710080),
    "sdxl": (2255040, 2255040, 921920, 6558080, 20832000, 8196480, 20832000, 3687040, 24584960, 350840320,
             31138560, 350840320, 31138560, 350840320, 31138560, 49164800, 350840320, 49164800, 350840320,
             40971520, 350840320, 14746880, 16801280, 20832000, 12704000, 20832000, 10655360, 20832000, 3687040,
             4407040, 3382400, 3382400),
}
BLOCK_SIZES["flux"] = (339_831_296,) * 19 + (141_591_808,) * 38
BLOCK_SIZES["sd3"] = (212_999_680,) * 37 + (136_085_248,)
