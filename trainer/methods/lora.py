"""LoRA through peft on the UNet (attention and projections; optionally feed-forward and conv layers) and
optionally the text encoder(s)."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import cast_training_params
from peft import LoHaConfig, LoKrConfig, LoraConfig, PeftConfig

from ..config import ConfigError
from ..families import adapter_for, family
from . import lora_init
from .base import RunFacts, TrainingMethod, run_metadata_fields

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out")
UNET_FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
UNET_CONV = r"(resnets\.\d+\.(conv1|conv2|conv_shortcut)|(down|up)samplers\.0\.conv)"
TEXT_ENCODER = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _suffix_regex(names) -> str:
    return "(" + "|".join(n.replace(".", r"\.") for n in names) + ")"


def adapts_conv(lora_cfg) -> bool:
    """Whether the UNet's conv layers get adapter layers: type locon, or train_conv (its older spelling, which
    also adds conv layers to loha/lokr)."""
    return lora_cfg.type == "locon" or bool(lora_cfg.train_conv)


def network_config(lora_cfg, target_modules, rank_pattern=None, alpha_pattern=None, **layers) -> PeftConfig:
    """The peft config of the job's network type. peft implements LoHa and LoKr the way LyCORIS does; the
    CP/Tucker conv variant (use_effective_conv2d) stays off so every layer exports as plain LyCORIS keys."""
    shared = dict(r=lora_cfg.rank, target_modules=target_modules, rank_pattern=rank_pattern or {},
                  alpha_pattern=alpha_pattern or {}, **layers)
    if lora_cfg.type == "loha":
        return LoHaConfig(alpha=lora_cfg.alpha, use_effective_conv2d=False, **shared)
    if lora_cfg.type == "lokr":
        return LoKrConfig(alpha=lora_cfg.alpha, use_effective_conv2d=False, decompose_factor=lora_cfg.lokr_factor,
                          decompose_both=bool(lora_cfg.lokr_decompose_both), **shared)
    return LoraConfig(lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, use_dora=bool(lora_cfg.dora),
                      **shared)


def unet_lora_config(lora_cfg, patterns: tuple[dict, dict] = ({}, {})) -> PeftConfig:
    """`patterns`: per-module (rank_pattern, alpha_pattern) that come first (a file the job continues from)."""
    names = UNET_ATTENTION + (UNET_FEED_FORWARD if lora_cfg.train_ff else ())
    pattern = _suffix_regex(names)
    rank_pattern, alpha_pattern = dict(patterns[0]), dict(patterns[1])
    if adapts_conv(lora_cfg):
        pattern = f"({pattern}|{UNET_CONV})"
        # peft matches these patterns against the end of module names; conv layers may use their own size.
        rank_pattern[UNET_CONV] = lora_cfg.conv_rank or lora_cfg.rank
        alpha_pattern[UNET_CONV] = lora_cfg.conv_alpha or lora_cfg.alpha
    return network_config(lora_cfg, rf".*\.{pattern}$", rank_pattern, alpha_pattern)


def text_encoder_lora_config(lora_cfg, layers_used: int, patterns: tuple[dict, dict] = ({}, {})) -> PeftConfig:
    """Layers on the first `layers_used` transformer layers only: the later ones never reach the UNet."""
    return network_config(lora_cfg, list(TEXT_ENCODER), *patterns, layers_to_transform=list(range(layers_used)),
                          layers_pattern="layers")


class _InitialWeights:
    """lora.init_weights: the file's ranks/alphas shape the new layers, then its tensors fill them."""

    def __init__(self, cfg, model):
        from ..config.schema import find_field

        self.network = lora_init.read_initial_network(Path(cfg.lora.init_weights))
        lora_init.check_matches_job(self.network, cfg.lora, model.arch, find_field("lora.rank").default,
                                    find_field("lora.alpha").default)
        unet_names = adapter_for(model.arch).export_names(model)
        self.names = {"unet": lora_init.kohya_names(model, "unet", unet_names),
                      **{f"text_encoder_{i}": lora_init.kohya_names(model, f"text_encoder_{i}")
                         for i in range(len(model.text_encoders))}}

    def patterns(self, component: str) -> tuple[dict, dict]:
        return lora_init.rank_and_alpha_patterns(self.network, self.names[component])

    def load(self, modules: dict[str, torch.nn.Module]) -> None:
        used = set()
        for component, module in modules.items():
            used |= lora_init.load_into(self.network, module, self.names[component], component)
        lora_init.check_all_used(self.network, used, {kohya for names in self.names.values() for kohya in names})


class LoraMethod(TrainingMethod):
    def load_dataset(self, model, reporter, paths, device=None):
        """The dataset, plus the regularisation images of dataset.reg_prompt, generated first where missing."""
        from ..data import scan_dataset
        from ..dreambooth import reg_source
        from ..dreambooth.generate import with_class_images

        training = scan_dataset(self.cfg.dataset)
        return with_class_images(self.cfg, training, reg_source(self.cfg, training), model, reporter,
                                 device)

    def prepare(self, model) -> list[dict]:
        training, lora_cfg = self.cfg.training, self.cfg.lora
        rates = self.spec.learning_rates(self.cfg)
        initial = _InitialWeights(self.cfg, model) if lora_cfg.init_weights else None
        model.unet.add_adapter(adapter_for(model.arch).denoiser_lora_config(lora_cfg, initial.patterns("unet") if initial
                                                                  else ({}, {})))
        groups = [{"params": None, "lr": rates["unet"], "module": model.unet}]
        if self.trains_text_encoder:
            for i, te in enumerate(model.text_encoders):
                if i not in family(model.arch).trainable_text_encoders:  # T5-XXL stays frozen
                    continue
                layers = family(model.arch).text_layers_used(i, te.config.num_hidden_layers, training.clip_skip)
                if layers < 1:
                    raise ConfigError([f"{self.cfg.source}: training.clip_skip = {training.clip_skip} skips every "
                                       f"layer of the {te.config.num_hidden_layers}-layer text encoder; allowed: "
                                       f"1 to {te.config.num_hidden_layers} for this model"])
                te.add_adapter(text_encoder_lora_config(
                    lora_cfg, layers, initial.patterns(f"text_encoder_{i}") if initial else ({}, {})))
                groups.append({"params": None, "lr": rates["text_encoder"], "module": te})
        for g in groups:
            # Base weights may be fp16/bf16 (on a GPU, or read so: models.loading.base_load_dtype), and peft made
            # the new layers in their dtype; the LoRA weights that learn are fp32, a starting file's read into
            # them as they are (loaded before this cast, they would be rounded to the base's dtype).
            cast_training_params(g["module"], dtype=torch.float32)
        if initial:
            initial.load(self.trainable_modules(model))
        for g in groups:
            g["params"] = [p for p in g.pop("module").parameters() if p.requires_grad]
        return groups

    def save(self, path: Path, run: RunFacts, dtype: torch.dtype) -> Path:
        model = run.model
        adapter = adapter_for(model.arch)
        text_encoders = model.text_encoders if self.trains_text_encoder else ()
        written = adapter.save_lora(path, model, text_encoders, self.export_info(run), dtype)
        if (self.cfg.output.save_diffusers and run.step == run.plan.total_steps
                and getattr(adapter, "writes_diffusers_lora", False)):
            # A diffusers-format copy of the final LoRA, beside the Kohya file: NAME-diffusers/
            adapter.save_lora_diffusers(path.with_name(f"{path.stem}-diffusers"), model, text_encoders, dtype)
        return written

    def export_info(self, run: RunFacts):
        from ..export import LoraExportInfo

        cfg, lora, tr = run.cfg, self.cfg.lora, self.cfg.training
        te_lr = self.spec.learning_rates(self.cfg).get("text_encoder")
        return LoraExportInfo(
            output_name=cfg.output.name, rank=lora.rank, alpha=float(lora.alpha),
            conv_rank=(lora.conv_rank or lora.rank) if adapts_conv(lora) else None,
            conv_alpha=float(lora.conv_alpha or lora.alpha) if adapts_conv(lora) else None,
            network_type=lora.type, dora=bool(lora.dora), lokr_factor=lora.lokr_factor,
            lokr_decompose_both=bool(lora.lokr_decompose_both),
            **run_metadata_fields(run), unet_lr=tr.learning_rate, text_encoder_lr=te_lr)
