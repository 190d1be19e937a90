"""Textual inversion: a new token of N vectors learned in every text encoder's embedding table, everything
else frozen. The whole table gets gradients and optimizer updates (the way the embedding layer works), so after
each step every row except the new ones is put back exactly as it was."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import ConfigError
from ..families import adapter_for, family
from ..model_facts import in_vocabulary
from .base import RunFacts, TrainingMethod
from .textual_inversion_spec import vector_tokens

# Prompts for the "object" and "style" templates; {} is the token (expanded to all its vectors).
OBJECT_TEMPLATES = (
    "a photo of a {}", "a picture of a {}", "a close-up photo of a {}", "a bright photo of a {}",
    "a cropped photo of a {}", "a good photo of a {}", "a photo of the {}", "a rendering of a {}",
    "a photo of one {}", "a dark photo of the {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a picture in the style of {}", "an artwork in the style of {}",
    "a rendering in the style of {}", "a drawing in the style of {}", "an illustration in the style of {}",
    "a good painting in the style of {}", "a close-up painting in the style of {}",
)
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


class TextualInversionMethod(TrainingMethod):
    def __init__(self, cfg):
        super().__init__(cfg)
        ti = cfg.textual_inversion
        self.token = ti.token
        self.tokens = vector_tokens(ti.token, ti.vectors)
        self.new_ids: list[torch.Tensor] = []     # per text encoder: the embedding rows of self.tokens
        self.keep_rows: list[torch.Tensor] = []   # per text encoder: mask of the rows that must not change
        self.original: list[torch.Tensor] = []    # per text encoder: the embedding table before training

    def prepare(self, model) -> list[dict]:
        self._check_job(model)
        init_rows = [init_embedding(tok, te, self.cfg.textual_inversion.init_word, self._where)
                     for tok, te in zip(model.tokenizers, model.text_encoders)]
        params = []
        for tokenizer, text_encoder, init in zip(model.tokenizers, model.text_encoders, init_rows):
            new_ids = add_tokens(tokenizer, text_encoder, self.tokens, self._where)
            text_encoder.requires_grad_(False)
            weight = text_encoder.get_input_embeddings().weight
            with torch.no_grad():
                weight[new_ids] = init.to(weight.dtype)
            weight.requires_grad_(True)  # the loop keeps parameters that learn in fp32
            keep = torch.ones(weight.shape[0], dtype=torch.bool)
            keep[new_ids] = False
            self.new_ids.append(new_ids)
            self.keep_rows.append(keep)
            self.original.append(weight.detach().clone())
            params.append(weight)
        model.unet.requires_grad_(False)
        return [{"params": params, "lr": self.cfg.training.learning_rate}]

    def batch_captions(self, batch) -> list[str]:
        template = self.cfg.textual_inversion.template
        if template == "captions":
            return self.prompts(batch.captions)
        # The loop re-seeds the global RNG every step (seed_step), so a resumed run picks the same prompts.
        choices = torch.randint(len(TEMPLATES[template]), (len(batch.captions),)).tolist()
        return [TEMPLATES[template][i].format(" ".join(self.tokens)) for i in choices]

    def prompts(self, captions: list[str]) -> list[str]:
        """template = "captions": captions name the token where it belongs; one that does not is led by it, so
        every image teaches it. (The object/style templates are drawn per step, not made from captions.)"""
        expanded = " ".join(self.tokens)
        return [c.replace(self.token, expanded) if self.token in c else f"{expanded}, {c}" for c in captions]

    @torch.no_grad()
    def after_optimizer_step(self, model) -> None:
        for i, text_encoder in enumerate(model.text_encoders):
            weight = text_encoder.get_input_embeddings().weight
            if self.original[i].device != weight.device:  # moved once: the loop places the model after prepare()
                self.original[i] = self.original[i].to(weight.device)
                self.keep_rows[i] = self.keep_rows[i].to(weight.device)
            weight[self.keep_rows[i]] = self.original[i][self.keep_rows[i]]

    def learned_vectors(self, model) -> list[torch.Tensor]:
        """The new token's [vectors, dim] rows, one tensor per text encoder."""
        return [te.get_input_embeddings().weight[ids.to(te.get_input_embeddings().weight.device)].detach()
                for te, ids in zip(model.text_encoders, self.new_ids)]

    # Only the new rows are state: the rest is the base model's and restored every step (saving whole tables
    # would cost 150-400 MB per state).
    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        return {f"text_encoder_{i}.new_token_rows": v.clone() for i, v in enumerate(self.learned_vectors(model))}

    def load_trainable_state(self, model, state: dict[str, torch.Tensor]) -> None:
        expected = {f"text_encoder_{i}.new_token_rows" for i in range(len(model.text_encoders))}
        if set(state) != expected or any(state[k].shape[0] != len(self.tokens) for k in expected):
            raise ValueError("the saved training state does not match this job's token and vectors; "
                             "was the job file changed?")
        with torch.no_grad():
            for i, text_encoder in enumerate(model.text_encoders):
                weight = text_encoder.get_input_embeddings().weight
                weight[self.new_ids[i].to(weight.device)] = state[f"text_encoder_{i}.new_token_rows"].to(weight)

    def save(self, path: Path, run: RunFacts, dtype: torch.dtype) -> Path:
        from ..export.textual_inversion import EmbeddingExportInfo, save_embedding, save_embedding_a1111

        model, cfg = run.model, run.cfg
        res = cfg.dataset.resolution
        info = EmbeddingExportInfo(
            token=self.token, title=cfg.output.name, prediction_type=model.prediction_type, resolution=(res, res),
            timestamp=time.time(), step=run.step, base_model_name=model.name, base_model_hash=model.hash,
            clip_skip=cfg.training.clip_skip if cfg.training.clip_skip > 1 else None)
        vectors = self.learned_vectors(model)
        if cfg.textual_inversion.save_a1111_pt:
            save_embedding_a1111(path.with_suffix(".pt"), arch=model.arch, vectors=vectors, info=info, dtype=dtype)
        return save_embedding(path, arch=model.arch, vectors=vectors, info=info, dtype=dtype)

    @property
    def _where(self) -> str:
        return self.cfg.source

    def _check_job(self, model) -> None:
        """What the config layer cannot check without the model (it checks the token's spelling)."""
        ti = self.cfg.textual_inversion
        if not ti.token:
            raise ConfigError([f"{self._where}: textual_inversion.token is required (it is empty)"])
        if ti.save_a1111_pt and len(model.text_encoders) > 1:
            label = family(model.arch).label
            raise ConfigError([f"{self._where}: textual_inversion.save_a1111_pt = true does not apply to {label}: "
                               f"the A1111 .pt layout holds one text encoder's vectors, and A1111 reads {label} "
                               "embeddings from the .safetensors file; set it to false"])


def init_embedding(tokenizer, text_encoder, init_word: str, where: str) -> torch.Tensor:
    """The starting vector: the init word's embedding, or the mean of its tokens' embeddings when the tokenizer
    splits it into several (e.g. "watercolor painting")."""
    ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if not ids:
        raise ConfigError([f"{where}: textual_inversion.init_word = {init_word!r} has no tokens; use a word like "
                           '"dog" or "painting"'])
    return text_encoder.get_input_embeddings().weight[ids].detach().float().mean(dim=0)


def add_tokens(tokenizer, text_encoder, tokens: list[str], where: str) -> torch.Tensor:
    """Add `tokens` to the tokenizer, grow the encoder's embedding table to hold them; returns their row ids."""
    vocab = tokenizer.get_vocab()
    for token in tokens:
        if in_vocabulary(vocab, token):
            raise ConfigError([f"{where}: textual_inversion.token: {token!r} is already in the tokenizer's "
                               'vocabulary, so it cannot be learned as a new word; choose a new one like "<my-dog>"'])
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    # The tokenizer lower-cases prompts; a token it would not find again as itself cannot be learned.
    if tokenizer(" ".join(tokens), add_special_tokens=False).input_ids != ids:
        raise ConfigError([f"{where}: textual_inversion.token = {tokens[0]!r} does not survive tokenization as one "
                           'token; use lower-case letters, digits and "<>-_", like "<my-style>"'])
    embeddings = text_encoder.get_input_embeddings()
    if max(ids) >= embeddings.weight.shape[0]:
        # mean_resizing would sample the new rows from the table's statistics; they are initialised by the caller.
        text_encoder.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
    _pool_at_end_token(text_encoder, tokenizer)
    return torch.tensor(ids)


def _pool_at_end_token(text_encoder, tokenizer) -> None:
    """Make the pooled output come from the end-of-text token, as ComfyUI and A1111 take it. Configs with the
    legacy eos_token_id = 2 make transformers pool at the highest token id, which is a new token once one is
    added (SDXL conditions on the pooled output of its second encoder)."""
    for module in text_encoder.modules():
        if getattr(module, "eos_token_id", None) == 2:
            module.eos_token_id = tokenizer.eos_token_id
    if text_encoder.config.eos_token_id == 2:
        text_encoder.config.eos_token_id = tokenizer.eos_token_id
