"""LoRA through peft on the UNet (attention and projections; optionally feed-forward and conv layers) and
optionally the text encoder(s)."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig

from .base import RunFacts, TrainingMethod, run_metadata_fields

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out")
UNET_FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
UNET_CONV = r"(resnets\.\d+\.(conv1|conv2|conv_shortcut)|(down|up)samplers\.0\.conv)"
TEXT_ENCODER = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _suffix_regex(names) -> str:
    return "(" + "|".join(n.replace(".", r"\.") for n in names) + ")"


def unet_lora_config(lora_cfg) -> LoraConfig:
    names = UNET_ATTENTION + (UNET_FEED_FORWARD if lora_cfg.train_ff else ())
    pattern = _suffix_regex(names)
    rank_pattern, alpha_pattern = {}, {}
    if lora_cfg.train_conv:
        pattern = f"({pattern}|{UNET_CONV})"
        # peft matches these patterns against the end of module names; conv layers may use their own size.
        rank_pattern[UNET_CONV] = lora_cfg.conv_rank or lora_cfg.rank
        alpha_pattern[UNET_CONV] = lora_cfg.conv_alpha or lora_cfg.alpha
    return LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                      target_modules=rf".*\.{pattern}$", rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)


def text_encoder_lora_config(lora_cfg) -> LoraConfig:
    return LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                      target_modules=list(TEXT_ENCODER))


class LoraMethod(TrainingMethod):
    def prepare(self, model) -> list[dict]:
        rates = self.spec.learning_rates(self.cfg)
        model.unet.add_adapter(unet_lora_config(self.cfg.lora))
        groups = [{"params": None, "lr": rates["unet"], "module": model.unet}]
        if self.trains_text_encoder:
            for te in model.text_encoders:
                te.add_adapter(text_encoder_lora_config(self.cfg.lora))
                groups.append({"params": None, "lr": rates["text_encoder"], "module": te})
        for g in groups:
            # Base weights may be fp16/bf16 on a GPU; the LoRA weights that learn stay fp32.
            cast_training_params(g["module"], dtype=torch.float32)
            g["params"] = [p for p in g.pop("module").parameters() if p.requires_grad]
        return groups

    def save(self, path: Path, run: RunFacts, dtype: torch.dtype) -> Path:
        from ..export import save_lora, save_lora_diffusers
        from ..models.single_file import unet_module_names

        model = run.model
        text_encoders = model.text_encoders if self.trains_text_encoder else ()
        # Kohya names SDXL LoRA modules after the original UNet layout, SD 1.x/2.x after diffusers' own.
        names = unet_module_names(model.unet) if model.arch == "sdxl" else None
        written = save_lora(path, unet=model.unet, text_encoders=text_encoders, arch=model.arch,
                            info=self.export_info(run), dtype=dtype, unet_module_names=names)
        if self.cfg.output.save_diffusers and run.step == run.plan.total_steps and model.arch != "sdxl":
            # A diffusers-format copy of the final LoRA, beside the Kohya file: NAME-diffusers/
            save_lora_diffusers(path.with_name(f"{path.stem}-diffusers"), unet=model.unet,
                                text_encoder=text_encoders[0] if text_encoders else None, dtype=dtype)
        return written

    def export_info(self, run: RunFacts):
        from ..export import LoraExportInfo

        cfg, lora, tr = run.cfg, self.cfg.lora, self.cfg.training
        te_lr = self.spec.learning_rates(self.cfg).get("text_encoder")
        return LoraExportInfo(
            output_name=cfg.output.name, rank=lora.rank, alpha=float(lora.alpha),
            conv_rank=(lora.conv_rank or lora.rank) if lora.train_conv else None,
            conv_alpha=float(lora.conv_alpha or lora.alpha) if lora.train_conv else None,
            **run_metadata_fields(run), unet_lr=tr.learning_rate, text_encoder_lr=te_lr)
