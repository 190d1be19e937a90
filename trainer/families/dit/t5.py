"""T5 for the transformer families: an offline tokenizer for Kiln's tiny models, the real one from a local
folder or the Hugging Face cache, and a tiny random T5 encoder.

The real T5 vocabulary (a 32,128-piece SentencePiece model) ships with no installed package, and Kiln downloads
nothing; so the tiny models get a small Unigram tokenizer built in code, and real single-file T5 weights need the
real tokenizer from a folder the user names or from the local hub cache.
"""
from __future__ import annotations

import functools
from pathlib import Path

from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from ...models.errors import ModelError

TINY_T5_VOCAB = 128
# Tokenizer folders of the real T5 v1.1-XXL, tried in the local hub cache (never downloaded).
REAL_T5_TOKENIZERS = (("google/t5-v1_1-xxl", None), ("black-forest-labs/FLUX.1-dev", "tokenizer_2"),
                      ("stabilityai/stable-diffusion-3.5-large", "tokenizer_3"))
_WORDS = ("a photo of the an and in on with dog cat sks person style painting portrait red blue green man woman "
          "girl boy at by from is").split()


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(".,!?'-")
    pieces = ["<pad>", "</s>", "<unk>"] + [f"▁{w}" for w in _WORDS] + ["▁"] + chars
    pieces = pieces[:TINY_T5_VOCAB]
    # Unigram scores: whole words first, so "dog" is one piece and unknown words fall back to characters.
    vocab = [(p, 0.0 if i < 3 else (-1.0 if p.startswith("▁") and len(p) > 1 else -10.0))
             for i, p in enumerate(pieces)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    return tokenizer


def tiny_t5_tokenizer(max_length: int = 77) -> T5TokenizerFast:
    """A T5-style tokenizer (pad 0, eos 1, unk 2; "</s>" appended) with a tiny vocabulary, built offline."""
    import copy
    return T5TokenizerFast(tokenizer_object=copy.deepcopy(_tiny_tokenizer_object()), pad_token="<pad>",
                           eos_token="</s>", unk_token="<unk>", extra_ids=0, model_max_length=max_length)


def tiny_t5_encoder(d_model: int = 32, layers: int = 2) -> T5EncoderModel:
    """A random T5 v1.1-style encoder (gated GELU) small enough for CPU tests."""
    return T5EncoderModel(T5Config(vocab_size=TINY_T5_VOCAB, d_model=d_model, d_kv=8, d_ff=d_model * 2,
                                   num_layers=layers, num_heads=4, feed_forward_proj="gated-gelu",
                                   relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


# What to fetch for a real T5-XXL given as single files (they carry no tokenizer): the files of its folder.
T5_TOKENIZER_DOWNLOAD = ("tokenizer.json, tokenizer_config.json, special_tokens_map.json and spiece.model from "
                         "google/t5-v1_1-xxl on Hugging Face (or a diffusers Flux model's tokenizer_2/ folder)")


def missing_t5_tokenizer(source: str) -> str:
    """The one line for T5-XXL weights without a tokenizer; `source` names the key that gave them."""
    return (f"{source}: T5-XXL weights carry no tokenizer, Kiln bundles no T5 vocabulary and none is in the local "
            f"Hugging Face cache; set model.t5_tokenizer to a folder holding it: download {T5_TOKENIZER_DOWNLOAD}")


def t5_tokenizer_for(vocab_size: int, folder: Path | None = None, max_length: int = 512,
                     source: str = "model.t5xxl") -> T5TokenizerFast:
    """The tokenizer that goes with a T5 encoder of `vocab_size`: the tiny one for Kiln's tiny models; for the
    real model a tokenizer folder (`folder`, model.t5_tokenizer) or the local hub cache. `source` names where
    the weights came from, for the message when there is none."""
    if vocab_size == TINY_T5_VOCAB:
        return tiny_t5_tokenizer(max_length)
    if folder is not None:
        try:
            tokenizer = T5TokenizerFast.from_pretrained(folder, model_max_length=max_length)
            reason = "" if _has_vocabulary(tokenizer) else "no tokenizer files"
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if reason:
            raise ModelError(f"model.t5_tokenizer = {folder}: cannot read a T5 tokenizer there ({reason}); it "
                             f"should hold {T5_TOKENIZER_DOWNLOAD}")
        return tokenizer
    for repo, subfolder in REAL_T5_TOKENIZERS:
        try:
            tokenizer = T5TokenizerFast.from_pretrained(repo, subfolder=subfolder, local_files_only=True,
                                                        model_max_length=max_length)
        except (OSError, ValueError):
            continue
        if _has_vocabulary(tokenizer):
            return tokenizer
    raise ModelError(missing_t5_tokenizer(source))


def _has_vocabulary(tokenizer) -> bool:
    """Whether a plain phrase gives a word piece (not <unk>, not a bare "▁"). transformers 5 returns an empty T5
    tokenizer (special tokens only) for a folder or uncached hub id holding no tokenizer files, instead of an
    error."""
    ids = tokenizer("a photo of a dog", add_special_tokens=False).input_ids
    pieces = tokenizer.convert_ids_to_tokens([i for i in ids if i != tokenizer.unk_token_id])
    return any(piece.strip("▁") for piece in pieces)
