"""Random vision-language captioners built in code and saved like hub models (weights, configs, processor,
tokenizer, chat template), for tests and benchmarks: nothing is downloaded. Their captions are noise; the path
(processor -> generate -> decode) is the real one.

The tokenizers are byte-level BPE without merges (every byte one token), built offline with the tokenizers
library; the chat templates are small Jinja templates of each family's shape (JoyCaption's places the image in
the first user message itself; Qwen's renders image parts as <|vision_start|><|image_pad|><|vision_end|>)."""
from __future__ import annotations

import json
from pathlib import Path

LLAVA_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['role'] == 'user' and (loop.first or (loop.index0 == 1 and messages[0]['role'] == 'system')) %}"
    "<image>{% endif %}"
    "{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Florence-2-large's real shapes (DaViT vision tower, BART-large language model, 768 px, 577 image tokens).
FLORENCE2_LARGE = dict(
    vision=dict(depths=[1, 1, 9, 1], embed_dim=[256, 512, 1024, 2048], num_heads=[8, 16, 32, 64],
                num_groups=[8, 16, 32, 64], projection_dim=1024, window_size=12),
    text=dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
              decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024),
    vocab_size=51289, image_size=768, image_tokens=577)


def _byte_vocab(specials: list[str], size: int = 0) -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*specials[:4], *bytes_to_unicode().values(), *specials[4:]]
    tokens += [f"<filler_{i}>" for i in range(max(0, size - len(tokens)))]  # a real model's vocabulary size
    return {token: index for index, token in enumerate(tokens)}


def save_tiny_florence2(folder: Path, large: bool = False, seed: int = 0) -> Path:
    """A random Florence-2 (tiny, or Florence-2-large's shapes with `large`) saved with its processor."""
    import torch
    from transformers import (CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor, RobertaTokenizer)

    folder = Path(folder)
    vocab = _byte_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], FLORENCE2_LARGE["vocab_size"] if large else 0)
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    if large:
        side, image_tokens = FLORENCE2_LARGE["image_size"], FLORENCE2_LARGE["image_tokens"]
        vision = dict(FLORENCE2_LARGE["vision"])
        text = dict(FLORENCE2_LARGE["text"])
    else:  # one stage with stride 16 on 32 px: 2 x 2 patches + the pooled token = 5 image tokens
        side, image_tokens = 32, 5
        vision = dict(depths=[1], patch_size=[7], patch_stride=[16], patch_padding=[3], patch_prenorm=[False],
                      embed_dim=[16], num_heads=[1], num_groups=[1], projection_dim=16, window_size=12)
        text = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=1,
                    decoder_attention_heads=1, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=128)
    image_processor = CLIPImageProcessorPil(size={"height": side, "width": side}, do_center_crop=False,
                                            image_seq_length=image_tokens)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    config = Florence2Config(
        vision_config=dict(vision, drop_path_rate=0.0),
        text_config=dict(text, model_type="bart", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         decoder_start_token_id=tokenizer.eos_token_id, forced_bos_token_id=tokenizer.bos_token_id),
        image_token_id=tokenizer.image_token_id)
    torch.manual_seed(seed)
    Florence2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _chat_tokenizer(specials: list[str], eos: str, pad: str):
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(vocab=_byte_vocab([]), merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.eos_token, tokenizer.pad_token = eos, pad
    return tokenizer


def save_tiny_llava(folder: Path, seed: int = 0) -> Path:
    """A random LLaVA model (JoyCaption's layout: CLIP-type vision tower, projector, Llama) with its processor
    and a chat template that places the image itself, as JoyCaption's does."""
    import torch
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    folder = Path(folder)
    tokenizer = _chat_tokenizer(["<|endoftext|>", "<image>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
                                eos="<|end|>", pad="<|endoftext|>")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=LLAVA_TEMPLATE,
                               num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_qwen_vl(folder: Path, version: str = "2.5", seed: int = 0) -> Path:
    """A random Qwen2.5-VL (or Qwen3-VL with version="3") saved as the hub's are: tokenizer, image processor,
    chat template and a processor_config naming the processor class (written by hand: without torchvision,
    transformers cannot build that processor's video half, so it cannot save one either)."""
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = Path(folder)
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
             "<|video_pad|>"]
    tokenizer = _chat_tokenizer(names, eos="<|im_end|>", pad="<|endoftext|>")
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in names}
    qwen3 = version == "3"
    patch = 16 if qwen3 else 14  # a merged token covers 2 x 2 patches: 32 or 28 px
    side = 2 * patch
    # A picture becomes 1 to 4 image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side * 4,
                                               patch_size=patch, merge_size=2, temporal_patch_size=2)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=patch,
                  spatial_merge_size=2, temporal_patch_size=2)
    if qwen3:
        text["head_dim"] = 16
        vision.update(num_position_embeddings=16, deepstack_visual_indexes=[0])
    else:
        vision.update(fullatt_block_indexes=[0], window_size=56)
    prefix = "Qwen3VL" if qwen3 else "Qwen2_5_VL"
    config = getattr(transformers, f"{prefix}Config")(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    getattr(transformers, f"{prefix}ForConditionalGeneration")(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN_TEMPLATE, encoding="utf-8")
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": f"{prefix}Processor"}),
                                                  encoding="utf-8")
    return folder
