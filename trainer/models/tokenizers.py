"""Offline CLIP tokenizers built from the BPE merges that ship inside the open-clip-torch wheel.

Single-file checkpoints carry no tokenizer, and Kiln must load them with no network. The merges file in
open_clip is the same byte-level BPE that OpenAI's CLIP (SD 1.x), OpenCLIP-H (SD 2.x) and both SDXL
encoders use; only the pad token differs ("<|endoftext|>" for CLIP-L, "!" for the OpenCLIP models).
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer

MAX_LENGTH = 77
N_MERGES = 48894  # 49,408 tokens = 512 byte symbols + 48,894 merges + 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:  # unprintable bytes are moved past 255 so every byte has a visible symbol
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # Located, not imported: importing open_clip needs torchvision, which Kiln keeps out.
    spec = importlib.util.find_spec("open_clip")
    bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz" if spec else None
    if bpe is None or not bpe.is_file():  # pragma: no cover - setup.sh installs it
        raise RuntimeError("the CLIP vocabulary is missing: run ./setup.sh (it installs open-clip-torch)")
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + N_MERGES]]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


@functools.lru_cache(maxsize=2)
def _cached(pad_token: str) -> CLIPTokenizer:
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), bos_token=BOS, eos_token=EOS,
                         unk_token=EOS, pad_token=pad_token, model_max_length=MAX_LENGTH)


def clip_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """A fresh copy of the CLIP tokenizer (copies, because textual inversion adds tokens to its own)."""
    import copy
    return copy.deepcopy(_cached(pad_token))


def openclip_tokenizer() -> CLIPTokenizer:
    """The tokenizer of SD 2.x and SDXL's second encoder: same BPE, "!" as padding."""
    return clip_tokenizer(pad_token="!")
