"""Kohya configs come in: GUI .json files (LoRA standard/LoCon/LoHa/LoKr, DreamBooth, fine-tune, textual
inversion, SDXL) with the GUI's key names and its string-typed numbers, and sd-scripts TOML files. Each mapped
key is asserted; what Kiln cannot train is refused naming the key and value."""
from __future__ import annotations

import json
import pickle
import tomllib

import pytest

from trainer.cli import EXIT_BAD_INPUT, EXIT_OK, main
from trainer.config import ConfigError, load_job


def gui_lora(tmp_path, **changes) -> dict:
    """The keys of a Kohya GUI LoRA config as the GUI saves them: numbers often as strings, ints as floats."""
    config = {
        "LoRA_type": "Standard", "pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5",
        "v2": False, "v_parameterization": False, "sdxl": False, "logging_dir": "", "train_data_dir": "img",
        "reg_data_dir": "", "output_dir": "out", "max_resolution": "768,768", "learning_rate": "0.0001",
        "lr_scheduler": "cosine_with_restarts", "lr_warmup": "10", "train_batch_size": 2, "epoch": 160,
        "save_every_n_epochs": 1, "mixed_precision": "bf16", "save_precision": "fp16", "seed": "1234",
        "num_cpu_threads_per_process": 2, "cache_latents": True, "cache_latents_to_disk": False,
        "caption_extension": ".txt", "enable_bucket": True, "gradient_checkpointing": True, "full_fp16": False,
        "stop_text_encoder_training": 0, "min_bucket_reso": 256, "max_bucket_reso": 2048, "xformers": "xformers",
        "save_model_as": "safetensors", "shuffle_caption": True, "save_state": False, "resume": "",
        "prior_loss_weight": 1.0, "text_encoder_lr": "5e-05", "unet_lr": "0.0001", "network_dim": 64.0,
        "lora_network_weights": "", "color_aug": False, "flip_aug": True, "clip_skip": "2", "num_processes": "1",
        "gradient_accumulation_steps": "2", "mem_eff_attn": False, "output_name": "my_lora", "model_list": "custom",
        "max_token_length": "75", "max_train_epochs": "", "max_train_steps": "", "max_data_loader_n_workers": "0",
        "network_alpha": "32", "training_comment": "", "keep_tokens": "1", "lr_scheduler_num_cycles": "3",
        "lr_scheduler_power": "", "persistent_data_loader_workers": False, "bucket_no_upscale": True,
        "random_crop": False, "bucket_reso_steps": 64.0, "caption_dropout_every_n_epochs": 0.0,
        "caption_dropout_rate": "0.05", "optimizer": "Prodigy", "optimizer_args": "weight_decay=0.05 d_coef=2",
        "lr_scheduler_args": "", "max_grad_norm": "1", "noise_offset_type": "Original", "noise_offset": "0.05",
        "adaptive_noise_scale": 0, "multires_noise_iterations": 0, "multires_noise_discount": 0,
        "conv_dim": 1, "conv_alpha": 1, "sample_every_n_steps": "100", "sample_every_n_epochs": 0,
        "sample_sampler": "euler_a", "sample_prompts": "a photo of sks dog --n blurry --w 512 --h 512\n\nsks dog, park",
        "additional_parameters": "", "vae_batch_size": 0, "min_snr_gamma": "5", "weighted_captions": False,
        "save_every_n_steps": 0, "save_last_n_steps": 0, "save_last_n_steps_state": 0, "use_wandb": False,
        "wandb_api_key": "", "scale_v_pred_loss_like_noise_pred": False, "network_dropout": 0.1,
        "rank_dropout": 0, "module_dropout": 0, "sdxl_cache_text_encoder_outputs": False,
        "sdxl_no_half_vae": True, "full_bf16": False, "min_timestep": 100, "max_timestep": 1000, "vae": "",
        "LyCORIS_preset": "full", "debiased_estimation_loss": False,
    }
    config.update(changes)
    return config


def write_json(tmp_path, config: dict, name: str = "kohya.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def notes_by_key(cfg) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for note in cfg.migration_notes:
        if hasattr(note, "key"):
            found.setdefault(note.key, []).append(note.result)
    return found


def test_gui_lora_standard_with_string_numbers(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path)))
    assert cfg.method == "lora"
    assert cfg.model.base == "runwayml/stable-diffusion-v1-5" and cfg.model.arch == "auto"
    assert cfg.dataset.dir == str(tmp_path / "img") and cfg.output.dir == str(tmp_path / "out")
    d = cfg.dataset
    assert (d.resolution, d.min_bucket_reso, d.max_bucket_reso, d.bucket_reso_steps) == (768, 256, 2048, 64)
    assert (d.enable_bucket, d.bucket_no_upscale, d.random_crop, d.flip, d.shuffle_caption) == (
        True, True, False, True, True)
    assert (d.keep_tokens, d.caption_dropout_rate, d.caption_extension) == (1, 0.05, ".txt")
    t = cfg.training
    assert (t.epochs, t.max_steps, t.batch_size, t.gradient_accumulation_steps) == (160, 0, 2, 2)
    assert (t.learning_rate, t.text_encoder_lr, t.optimizer, t.weight_decay) == (1e-4, 5e-5, "prodigy", 0.05)
    assert (t.lr_scheduler, t.lr_warmup_ratio, t.lr_num_cycles, t.lr_power) == ("cosine_with_restarts", 0.1, 3, 1.0)
    assert (t.mixed_precision, t.seed, t.gradient_checkpointing, t.cache_latents) == ("bf16", 1234, True, True)
    assert (t.noise_offset, t.min_snr_gamma, t.clip_skip, t.max_grad_norm, t.num_processes) == (
        0.05, 5.0, 2, 1.0, 1)
    lora = cfg.lora
    assert (lora.rank, lora.alpha, lora.dropout, lora.train_conv) == (64, 32.0, 0.1, False)
    assert lora.train_text_encoder  # implied by a non-zero text_encoder_lr
    assert (cfg.output.name, cfg.output.save_precision, cfg.output.save_diffusers) == ("my_lora", "fp16", False)
    assert cfg.sample.prompts == ["a photo of sks dog --n blurry --w 512 --h 512", "sks dog, park"]
    assert (cfg.sample.every_n_steps, cfg.sample.sampler) == (100, "euler_a")
    notes = notes_by_key(cfg)
    assert notes["network_dim"] == ["lora.rank = 64"] and notes["epoch"] == ["training.epochs = 160"]
    assert notes["optimizer_args"] == ["training.weight_decay = 0.05"]
    assert cfg.output.save_every_n_epochs == 1 and cfg.training.min_timestep == 100
    assert notes["save_every_n_epochs"] == ["output.save_every_n_epochs = 1"]
    assert notes["min_timestep"] == ["training.min_timestep = 100"]
    assert notes["LoRA_type"] == ["lora.train_conv = false"] and cfg.lora.type == "lora"
    assert "max_timestep" not in notes and "LyCORIS_preset" not in notes  # Kohya's defaults: nothing to say
    assert "conv_dim" not in notes  # the GUI writes it for every type; Standard has no conv layers
    for off in ("noise_offset_type", "multires_noise_iterations", "multires_noise_discount", "use_wandb",
                "debiased_estimation_loss", "save_last_n_steps", "sample_every_n_epochs"):
        assert off not in notes, off
    assert "Kiln uses PyTorch" in notes["xformers"][0]
    assert "reg_data_dir" not in notes and "wandb_api_key" not in notes  # empty/off in the file: nothing to say
    assert cfg.warnings and "Prodigy" in cfg.warnings[0]  # LR 1e-4 with Prodigy is still pointed out


def test_gui_unet_only_when_the_text_encoder_lr_is_zero(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, text_encoder_lr="0", unet_lr="0.0003")))
    assert not cfg.lora.train_text_encoder and cfg.training.learning_rate == 3e-4


@pytest.mark.parametrize("lora_type", ["LoCon", "Kohya LoCon", "LyCORIS/LoCon"])
def test_gui_locon_maps_conv_dim_and_alpha(tmp_path, lora_type):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, LoRA_type=lora_type, conv_dim="8", conv_alpha=4.0)))
    assert (cfg.lora.train_conv, cfg.lora.conv_rank, cfg.lora.conv_alpha) == (True, 8, 4.0)


def test_gui_loha_maps_type_conv_layers_and_dora_refusal(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, LoRA_type="LyCORIS/LoHa", conv_dim="8", conv_alpha="4",
                                                 network_dropout=0, factor=-1, decompose_both=False,
                                                 use_tucker=False, dora_wd=False)))
    lora = cfg.lora
    assert (lora.type, lora.train_conv, lora.conv_rank, lora.conv_alpha) == ("loha", True, 8, 4.0)
    assert (lora.rank, lora.alpha, lora.dora, lora.lokr_factor, lora.lokr_decompose_both) == (
        64, 32.0, False, -1, False)
    notes = notes_by_key(cfg)
    assert notes["LoRA_type"] == ['lora.type = "loha", lora.train_conv = true']
    assert notes["conv_dim"] == ["lora.conv_rank = 8"] and notes["conv_alpha"] == ["lora.conv_alpha = 4.0"]
    for default in ("factor", "decompose_both", "use_tucker", "dora_wd"):
        assert default not in notes, default
    assert not any("not yet supported" in str(n) for n in cfg.migration_notes)

    # LyCORIS has DoRA LoHa; Kiln does not, and says which Kohya keys asked for it.
    path = write_json(tmp_path, gui_lora(tmp_path, LoRA_type="LyCORIS/LoHa", dora_wd=True))
    with pytest.raises(ConfigError) as caught:
        load_job(path)
    assert str(caught.value).startswith(f'{path}: Kohya dora_wd = true with LoRA_type = "LyCORIS/LoHa"')


def test_gui_lokr_maps_factor_decompose_both_and_drops_dropout(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, LoRA_type="LyCORIS/LoKr", factor="8",
                                                 decompose_both="True", conv_dim=0, conv_alpha=0,
                                                 network_dropout="0.1", use_cp=True)))
    lora = cfg.lora
    assert (lora.type, lora.lokr_factor, lora.lokr_decompose_both) == ("lokr", 8, True)
    assert (lora.train_conv, lora.conv_rank, lora.conv_alpha, lora.dropout) == (True, 0, 0.0, 0.0)  # 0: the rank
    notes = notes_by_key(cfg)
    assert notes["LoRA_type"] == ['lora.type = "lokr", lora.train_conv = true']
    assert notes["factor"] == ["lora.lokr_factor = 8"]
    assert notes["decompose_both"] == ["lora.lokr_decompose_both = true"]
    assert notes["network_dropout"] == ["ignored: Kiln's lokr layers have no dropout (LoRA and LoCon only)"]
    assert notes["use_cp"] == ["ignored (Kiln's LoHa/LoKr conv layers use no Tucker/CP decomposition)"]
    assert "conv_dim" not in notes

    # Kohya's factor -1 is LyCORIS' automatic split: Kiln's default, so nothing is set and nothing noted.
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, LoRA_type="LyCORIS/LoKr", factor="-1",
                                                 network_dropout=0)))
    assert cfg.lora.lokr_factor == -1 and "factor" not in notes_by_key(cfg)
    # LoKr-only keys on another type are noted as unused.
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, factor=4, decompose_both=True, dora_wd=True)))
    notes = notes_by_key(cfg)
    assert cfg.lora.type == "lora" and (cfg.lora.lokr_factor, cfg.lora.dora) == (-1, False)
    assert notes["factor"] == ["ignored: used by LoKr only"]
    assert notes["decompose_both"] == ["ignored: used by LoKr only"]
    assert notes["dora_wd"] == ["ignored: Kohya passes DoRA to LyCORIS networks only, not to networks.lora"]


def test_gui_lycoris_locon_dora_and_preset_without_conv(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, LoRA_type="LyCORIS/LoCon", dora_wd="true",
                                                 conv_dim="4", LyCORIS_preset="attn-mlp")))
    assert (cfg.lora.type, cfg.lora.dora, cfg.lora.train_conv) == ("lora", True, False)
    notes = notes_by_key(cfg)
    assert notes["dora_wd"] == ["lora.dora = true"] and notes["LoRA_type"] == ["lora.train_conv = false"]
    assert notes["LyCORIS_preset"][0].startswith("no conv layers, so lora.train_conv = false")


def test_gui_network_weights_and_dim_from_weights(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, lora_network_weights="old.safetensors")))
    assert cfg.lora.init_weights == str(tmp_path / "old.safetensors") and cfg.lora.rank == 64
    assert notes_by_key(cfg)["lora_network_weights"] == ['lora.init_weights = "old.safetensors"']
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, lora_network_weights="old.safetensors",
                                                 dim_from_weights=True)))
    assert (cfg.lora.rank, cfg.lora.alpha) == (16, 8.0)  # Kiln's defaults: read from the file when training
    notes = notes_by_key(cfg)
    assert notes["network_dim"][0].startswith("ignored: dim_from_weights reads it")
    assert notes["dim_from_weights"][0].startswith("lora.rank and lora.alpha are left out")


def test_gui_sdxl(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, sdxl=True, max_resolution="1024,1024",
                                                 sdxl_cache_text_encoder_outputs=True, text_encoder_lr=0,
                                                 unet_lr="0.0001", optimizer="Adafactor")))
    assert (cfg.model.arch, cfg.dataset.resolution, cfg.training.optimizer) == ("sdxl", 1024, "adafactor")
    assert cfg.training.cache_text_encoder_outputs and not cfg.lora.train_text_encoder


def test_gui_dreambooth(tmp_path):
    config = {"pretrained_model_name_or_path": "model.safetensors", "v2": True, "v_parameterization": True,
              "train_data_dir": "img", "reg_data_dir": "", "output_dir": "out", "max_resolution": "768,768",
              "learning_rate": "1e-06", "learning_rate_te": "5e-07", "lr_scheduler": "constant", "lr_warmup": 0,
              "train_batch_size": "1", "epoch": "4", "mixed_precision": "fp16", "save_precision": "float",
              "seed": "", "stop_text_encoder_training": 0, "no_token_padding": False, "prior_loss_weight": "1.0",
              "optimizer": "AdamW8bit", "save_model_as": "diffusers", "output_name": "db"}
    cfg = load_job(write_json(tmp_path, config), complete=False)
    assert cfg.method == "dreambooth" and (cfg.model.arch, cfg.model.prediction_type) == ("sd2", "v_prediction")
    assert cfg.model.base == str(tmp_path / "model.safetensors")
    assert (cfg.training.learning_rate, cfg.training.text_encoder_lr, cfg.training.epochs) == (1e-6, 5e-7, 4)
    assert cfg.training.seed == 42  # "" is unset: Kiln's default
    assert cfg.dreambooth.train_text_encoder and not cfg.dreambooth.prior_preservation
    assert (cfg.output.save_precision, cfg.output.save_diffusers) == ("fp32", True)
    with pytest.raises(ConfigError, match="dreambooth.instance_prompt is required"):
        load_job(write_json(tmp_path, config))  # the one thing a Kohya DreamBooth config cannot say


def test_gui_finetune(tmp_path):
    config = {"pretrained_model_name_or_path": "org/model", "image_folder": "imgs", "dataset_repeats": "10",
              "train_text_encoder": True, "learning_rate": "5e-06", "learning_rate_te": "1e-06",
              "max_resolution": "512,512", "caption_extension": ".caption", "train_batch_size": 4.0, "epoch": 2,
              "output_dir": "out", "output_name": "ft", "optimizer": "AdamW"}
    cfg = load_job(write_json(tmp_path, config))  # complete: a fine-tune needs no instance prompt
    assert cfg.method == "finetune" and cfg.dataset.dir == str(tmp_path / "imgs")
    assert (cfg.dataset.repeats, cfg.dataset.caption_extension, cfg.training.batch_size) == (10, ".caption", 4)
    assert cfg.finetune.train_text_encoder
    assert (cfg.training.optimizer, cfg.training.text_encoder_lr) == ("adamw", 1e-6)


def test_gui_textual_inversion(tmp_path):
    config = {"pretrained_model_name_or_path": "org/model", "train_data_dir": "img", "output_dir": "out",
              "token_string": "<kiln>", "init_word": "pottery", "num_vectors_per_token": "2",
              "template": "style template", "learning_rate": "0.005", "max_train_steps": "300",
              "output_name": "emb"}
    cfg = load_job(write_json(tmp_path, config))
    ti = cfg.textual_inversion
    assert cfg.method == "textual_inversion" and (ti.token, ti.init_word, ti.vectors, ti.template) == (
        "<kiln>", "pottery", 2, "style")
    assert cfg.training.max_steps == 300


@pytest.mark.parametrize("changes, named", [
    ({"flux1_checkbox": True, "LoRA_type": "Flux1", "train_t5xxl": True}, "train_t5xxl = true: Kiln keeps T5-XXL"),
    ({"flux1_checkbox": True, "LoRA_type": "Flux1 OFT"}, 'LoRA_type = "Flux1 OFT"'),
    ({"LoRA_type": "LyCORIS/iA3"}, 'LoRA_type = "LyCORIS/iA3"'),
    ({"LoRA_type": "LyCORIS/GLoRA"}, 'LoRA_type = "LyCORIS/GLoRA"'),
])
def test_what_kiln_cannot_train_is_refused_naming_key_and_value(tmp_path, changes, named):
    path = write_json(tmp_path, gui_lora(tmp_path, **changes))
    with pytest.raises(ConfigError) as caught:
        load_job(path)
    assert str(caught.value).startswith(f"{path}: Kohya {named}")


@pytest.mark.parametrize("network, named", [
    ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=ia3"]\n', 'algo = "ia3"'),
    ('network_module = "networks.lora_flux"\nnetwork_args = ["train_t5xxl=True"]\n',
     'network_args train_t5xxl = "True": Kiln keeps T5-XXL frozen'),
    ('network_module = "networks.oft_flux"\n', 'network_module = "networks.oft_flux"'),
])
def test_sd_scripts_networks_kiln_cannot_train_are_refused(tmp_path, network, named):
    (tmp_path / "args.toml").write_text('pretrained_model_name_or_path = "m"\ntrain_data_dir = "d"\n'
                                        'network_dim = 8\n' + network)
    with pytest.raises(ConfigError, match=named):
        load_job(tmp_path / "args.toml")


def sd_scripts(tmp_path, text: str):
    (tmp_path / "args.toml").write_text('pretrained_model_name_or_path = "m"\ntrain_data_dir = "d"\nnetwork_dim = 8\n'
                                        + text)
    return load_job(tmp_path / "args.toml")


def test_sd_scripts_lycoris_loha_keeps_its_conv_settings(tmp_path):
    cfg = sd_scripts(tmp_path, 'network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "conv_dim=4"]\n')
    assert (cfg.lora.type, cfg.lora.train_conv, cfg.lora.conv_rank, cfg.lora.conv_alpha) == ("loha", True, 4, 0.0)
    notes = notes_by_key(cfg)
    assert notes["network_args"] == ['lora.type = "loha", lora.train_conv = true, lora.conv_rank = 4']
    assert notes["network_module"] == ["a LyCORIS network, set up from network_args (algo = loha)"]


def test_sd_scripts_lycoris_lokr_maps_every_network_arg(tmp_path):
    cfg = sd_scripts(tmp_path, 'network_module = "lycoris.kohya"\nnetwork_weights = "start.safetensors"\n'
                               'network_args = ["algo=lokr", "factor=16", "decompose_both=True", "conv_dim=8", '
                               '"conv_alpha=2", "use_tucker=True", "rank_dropout=0"]\n')
    lora = cfg.lora
    assert (lora.type, lora.lokr_factor, lora.lokr_decompose_both, lora.dora) == ("lokr", 16, True, False)
    assert (lora.train_conv, lora.conv_rank, lora.conv_alpha) == (True, 8, 2.0)
    assert lora.init_weights == str(tmp_path / "start.safetensors")
    notes = notes_by_key(cfg)
    assert notes["network_args"] == ['lora.type = "lokr", lora.train_conv = true, lora.conv_rank = 8, '
                                     'lora.conv_alpha = 2.0, lora.lokr_factor = 16, lora.lokr_decompose_both = true'
                                     '; ignored: use_tucker=True (no Kiln equivalent)']
    assert notes["network_weights"] == ['lora.init_weights = "start.safetensors"']


def test_sd_scripts_lycoris_lora_with_dora_and_default_preset(tmp_path):
    # No conv_dim: LyCORIS' full preset adapts the conv layers at network_dim, which is Kiln's conv_rank 0.
    cfg = sd_scripts(tmp_path, 'network_module = "lycoris.kohya"\nnetwork_args = ["algo=locon", "dora_wd=True"]\n')
    assert (cfg.lora.type, cfg.lora.dora, cfg.lora.train_conv, cfg.lora.conv_rank) == ("lora", True, True, 0)
    assert notes_by_key(cfg)["network_args"] == ["lora.train_conv = true, lora.dora = true"]
    cfg = sd_scripts(tmp_path, 'network_module = "lycoris.kohya"\n'
                               'network_args = ["algo=lora", "preset=attn-mlp", "conv_dim=4"]\n')
    assert (cfg.lora.type, cfg.lora.train_conv) == ("lora", False)
    assert notes_by_key(cfg)["network_args"] == ['ignored: conv_dim = "4" (LyCORIS preset attn-mlp has no conv '
                                                 'layers)']
    with pytest.raises(ConfigError, match='network_args dora_wd = "True" with algo = "lokr"'):
        sd_scripts(tmp_path, 'network_module = "lycoris.kohya"\nnetwork_args = ["algo=lokr", "dora_wd=True"]\n')


def test_loss_and_noise_keys_map(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(
        tmp_path, loss_type="huber", huber_c="0.2", huber_schedule="exponential", min_timestep="100",
        max_timestep="900", ip_noise_gamma="0.1", debiased_estimation_loss=True, zero_terminal_snr="True",
        v2=True, v_parameterization=True, noise_offset_type="Multires", multires_noise_iterations="6",
        multires_noise_discount="0.25")))
    t = cfg.training
    assert (t.loss, t.huber_c, t.huber_schedule) == ("huber", 0.2, "exponential")
    assert (t.min_timestep, t.max_timestep, t.ip_noise_gamma) == (100, 900, 0.1)
    assert (t.debiased_estimation, t.zero_terminal_snr) == (True, True)
    assert (t.multires_noise_iterations, t.multires_noise_discount, t.noise_offset) == (6, 0.25, 0.0)
    notes = notes_by_key(cfg)
    assert notes["loss_type"] == ['training.loss = "huber"'] and notes["huber_c"] == ["training.huber_c = 0.2"]
    assert notes["huber_schedule"] == ['training.huber_schedule = "exponential"']
    assert notes["max_timestep"] == ["training.max_timestep = 900"]
    assert notes["ip_noise_gamma"] == ["training.ip_noise_gamma = 0.1"]
    assert notes["debiased_estimation_loss"] == ["training.debiased_estimation = true"]
    assert notes["zero_terminal_snr"] == ["training.zero_terminal_snr = true"]
    assert notes["multires_noise_iterations"] == ["training.multires_noise_iterations = 6"]
    assert notes["multires_noise_discount"] == ["training.multires_noise_discount = 0.25"]
    assert notes["noise_offset_type"] == ["selects multires noise: noise_offset is not used"]
    assert notes["noise_offset"] == ['ignored: noise_offset_type = "Multires" (the GUI passes noise_offset only '
                                     'with "Original")']

    # "Original" passes noise_offset and not the multires keys; huber options need a huber loss.
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, multires_noise_iterations=8, huber_c="0.3",
                                                 loss_type="l2")))
    assert (cfg.training.noise_offset, cfg.training.multires_noise_iterations) == (0.05, 0)
    assert (cfg.training.loss, cfg.training.huber_c) == ("l2", 0.1)
    notes = notes_by_key(cfg)
    assert notes["multires_noise_iterations"][0].startswith('ignored: noise_offset_type = "Original"')
    assert notes["huber_c"] == ['ignored: only used with loss_type "huber" or "smooth_l1"']
    assert "loss_type" not in notes and "noise_offset_type" not in notes
    # sd-scripts has no noise_offset_type: the multires keys count as given.
    cfg = sd_scripts(tmp_path, 'multires_noise_iterations = 10\nmultires_noise_discount = 0.3\nloss_type = "l1"\n')
    assert (cfg.training.multires_noise_iterations, cfg.training.multires_noise_discount) == (10, 0.3)
    assert cfg.training.loss == "l1" and "multires_noise_discount" not in notes_by_key(cfg)


def test_per_epoch_and_kept_saves_map(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, save_every_n_epochs="2", sample_every_n_epochs="1",
                                                 sample_at_first=True, save_last_n_epochs="3")))
    assert (cfg.output.save_every_n_epochs, cfg.output.keep_last_n_saves) == (2, 3)
    assert (cfg.sample.every_n_epochs, cfg.sample.at_first_step) == (1, True)
    notes = notes_by_key(cfg)
    assert notes["save_last_n_epochs"] == ["output.keep_last_n_saves = 3"]
    assert notes["sample_every_n_epochs"] == ["sample.every_n_epochs = 1"]
    assert notes["sample_at_first"] == ["sample.at_first_step = true"]

    # 300 steps at a save every 100: Kohya keeps the saves of the last 300 steps and the one at the edge.
    cfg = sd_scripts(tmp_path, "save_every_n_steps = 100\nsave_last_n_steps = 300\n")
    assert cfg.output.keep_last_n_saves == 4
    assert notes_by_key(cfg)["save_last_n_steps"] == ["output.keep_last_n_saves = 4"]
    cfg = sd_scripts(tmp_path, "save_every_n_steps = 100\nsave_last_n_steps = 250\n")
    assert cfg.output.keep_last_n_saves == 3
    # Both kinds of save on: Kohya prunes them apart, Kiln together, so neither limit converts exactly.
    cfg = sd_scripts(tmp_path, "save_every_n_steps = 100\nsave_last_n_steps = 300\nsave_every_n_epochs = 1\n"
                               "save_last_n_epochs = 2\n")
    assert cfg.output.keep_last_n_saves == 0
    notes = notes_by_key(cfg)
    assert notes["save_last_n_steps"][0].startswith("ignored: Kohya prunes step and epoch saves apart")
    assert notes["save_last_n_epochs"][0].startswith("ignored: Kohya prunes step and epoch saves apart")
    cfg = sd_scripts(tmp_path, "save_last_n_steps = 300\n")
    assert notes_by_key(cfg)["save_last_n_steps"] == ["ignored: without save_every_n_steps there are no step "
                                                      "saves to prune"]


def test_dataset_keys_map(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, reg_data_dir="reg", masked_loss=True, alpha_mask="true",
                                                 caption_tag_dropout_rate="0.1", keep_tokens_separator="|||",
                                                 enable_wildcard=True)))
    d = cfg.dataset
    assert (d.reg_dir, d.masked_training) == (str(tmp_path / "reg"), True)
    assert (d.caption_tag_dropout_rate, d.keep_tokens_separator, d.wildcards) == (0.1, "|||", True)
    notes = notes_by_key(cfg)
    assert notes["reg_data_dir"] == ['dataset.reg_dir = "reg"']
    assert notes["masked_loss"] == ["dataset.masked_training = true"]
    assert notes["alpha_mask"] == ["dataset.masked_training = true (as Kohya masked_loss)"]
    assert notes["caption_tag_dropout_rate"] == ["dataset.caption_tag_dropout_rate = 0.1"]
    assert notes["keep_tokens_separator"] == ['dataset.keep_tokens_separator = "|||"']
    assert notes["enable_wildcard"] == ["dataset.wildcards = true"]
    # DreamBooth's class images stay dreambooth.class_dir (prior preservation on).
    config = {"pretrained_model_name_or_path": "m", "train_data_dir": "img", "reg_data_dir": "class",
              "learning_rate_te": "1e-6", "alpha_mask": True}
    cfg = load_job(write_json(tmp_path, config), complete=False)
    assert cfg.method == "dreambooth" and cfg.dreambooth.class_dir == str(tmp_path / "class")
    assert cfg.dreambooth.prior_preservation and cfg.dataset.masked_training and cfg.dataset.reg_dir == ""


def test_wandb_keys_map_and_the_api_key_is_not_repeated(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, use_wandb=True, wandb_run_name="run-1",
                                                 log_tracker_name="my-project", wandb_api_key="s3cr3t")))
    assert (cfg.logging.wandb, cfg.logging.wandb_run_name, cfg.logging.wandb_project) == (True, "run-1", "my-project")
    notes = notes_by_key(cfg)
    assert notes["use_wandb"] == ["logging.wandb = true"]
    assert notes["wandb_run_name"] == ['logging.wandb_run_name = "run-1"']
    assert notes["log_tracker_name"] == ['logging.wandb_project = "my-project"']
    assert notes["wandb_api_key"] == ["ignored (log in once with `wandb login`; the key is not copied)"]
    assert not any("s3cr3t" in str(n) or getattr(n, "value", None) == "s3cr3t" for n in cfg.migration_notes)
    cfg = sd_scripts(tmp_path, 'log_with = "wandb"\n')
    assert cfg.logging.wandb and notes_by_key(cfg)["log_with"] == ["logging.wandb = true"]
    cfg = sd_scripts(tmp_path, 'log_with = "tensorboard"\n')
    assert not cfg.logging.wandb and "log_with" not in notes_by_key(cfg)


def test_fp8_base_maps(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, fp8_base=True, mixed_precision="bf16")))
    assert cfg.training.base_quantization == "fp8"
    assert notes_by_key(cfg)["fp8_base"] == ['training.base_quantization = "fp8"']
    cfg = sd_scripts(tmp_path, 'fp8_base = true\nmixed_precision = "fp16"\n')
    assert cfg.training.base_quantization == "fp8"


def test_new_keys_at_kohya_defaults_leave_no_note(tmp_path):
    defaults = dict(loss_type="l2", huber_c="0.1", huber_schedule="snr", min_timestep="0", max_timestep="0",
                    ip_noise_gamma="0", debiased_estimation_loss=False, zero_terminal_snr=False,
                    noise_offset_type="Original", multires_noise_iterations="0", multires_noise_discount="0.3",
                    save_every_n_epochs="0", sample_every_n_epochs=0, sample_at_first=False,
                    save_last_n_steps=0, save_last_n_epochs="0", reg_data_dir="", masked_loss=False,
                    alpha_mask=False, caption_tag_dropout_rate="0", keep_tokens_separator="",
                    enable_wildcard=False, use_wandb=False, wandb_run_name="", log_tracker_name="",
                    lora_network_weights="", dim_from_weights=False, factor="-1", decompose_both=False,
                    dora_wd=False, use_tucker=False, LyCORIS_preset="full", fp8_base=False)
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, **defaults)))
    notes = notes_by_key(cfg)
    assert [key for key in defaults if key in notes] == []
    t = cfg.training
    assert (t.loss, t.huber_c, t.min_timestep, t.max_timestep, t.multires_noise_discount) == ("l2", 0.1, 0, 1000, 0.3)
    assert (cfg.output.save_every_n_epochs, cfg.output.keep_last_n_saves, cfg.logging.wandb) == (0, 0, False)


def test_sd_scripts_prompt_file_is_named_in_its_note(tmp_path):
    (tmp_path / "args.toml").write_text('pretrained_model_name_or_path = "m"\ntrain_data_dir = "d"\n'
                                        'network_dim = 8\nsample_prompts = "prompts.txt"\n')
    cfg = load_job(tmp_path / "args.toml")
    assert cfg.sample.prompts == []
    assert notes_by_key(cfg)["sample_prompts"] == ["ignored: it names a prompts file; copy its lines into "
                                                   "sample.prompts"]


def test_sd_scripts_toml_defaults_to_training_the_text_encoder(tmp_path):
    (tmp_path / "args.toml").write_text('pretrained_model_name_or_path = "m"\ntrain_data_dir = "d"\n'
                                        'network_dim = 8\noptimizer_type = "CAME"\nnetwork_train_unet_only = true\n')
    cfg = load_job(tmp_path / "args.toml")
    assert cfg.training.optimizer == "came" and not cfg.lora.train_text_encoder
    (tmp_path / "args.toml").write_text('pretrained_model_name_or_path = "m"\ntrain_data_dir = "d"\n'
                                        'network_dim = 8\noptimizer_type = "AdamWScheduleFree"\n')
    cfg = load_job(tmp_path / "args.toml")
    assert cfg.training.optimizer == "adamwschedulefree" and cfg.lora.train_text_encoder


def test_notes_survive_pickling(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path)))
    again = pickle.loads(pickle.dumps(cfg))
    assert again.migration_notes == cfg.migration_notes
    assert notes_by_key(again) == notes_by_key(cfg)


def test_check_json_prints_one_object(tmp_path, capsys):
    data = tmp_path / "img"
    from tests.helpers import make_dataset

    make_dataset(data / "3_kiln shape", n=2)
    config = gui_lora(tmp_path, pretrained_model_name_or_path="builtin:tiny-sd15", max_resolution="64,64",
                      min_bucket_reso="64", max_bucket_reso="128", bucket_reso_steps="32", epoch="2",
                      train_batch_size="2", gradient_accumulation_steps="1")
    code = main(["check", str(write_json(tmp_path, config)), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK and result["ok"] and result["errors"] == []
    assert result["config"]["training"]["epochs"] == 2 and result["config"]["lora"]["rank"] == 64
    plan = result["plan"]
    assert (plan["images"], plan["images_with_repeats"], plan["batches_per_epoch"]) == (2, 6, 3)
    assert (plan["epochs"], plan["total_steps"]) == (2, 6)
    assert {"source_key": "network_dim", "value": 64.0, "result": "lora.rank = 64"} in result["migration_notes"]
    assert any("Prodigy" in w for w in result["warnings"])

    config["LoRA_type"] = "LyCORIS/iA3"
    code = main(["check", str(write_json(tmp_path, config)), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == EXIT_BAD_INPUT and not result["ok"] and "LyCORIS/iA3" in result["errors"][0]

    config["LoRA_type"] = "Standard"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "my_lora.safetensors").write_bytes(b"mine")
    code = main(["check", str(write_json(tmp_path, config)), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == EXIT_BAD_INPUT and "already exists" in result["errors"][0]
    assert result["config"]["output"]["name"] == "my_lora" and result["migration_notes"]


def test_convert_writes_the_job_with_notes_and_never_replaces_unasked(tmp_path, capsys):
    source = write_json(tmp_path, gui_lora(tmp_path))
    out = tmp_path / "job.toml"
    assert main(["convert", str(source), "-o", str(out)]) == EXIT_OK
    text = out.read_text()
    assert "#   Kohya network_dim = 64.0 -> lora.rank = 64" in text
    assert "#   Kohya save_every_n_epochs = 1 -> output.save_every_n_epochs = 1" in text
    converted = load_job(out)
    assert converted.migration_notes == []  # a plain Kiln job now
    assert converted.to_dict() == load_job(source).to_dict()
    assert tomllib.loads(text)["lora"]["rank"] == 64

    out.write_text("mine")
    assert main(["convert", str(source), "-o", str(out)]) == EXIT_BAD_INPUT
    assert "already exists" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["convert", str(source), "-o", str(out), "--force"]) == EXIT_OK
    assert load_job(out).lora.rank == 64


def test_convert_lists_what_is_still_to_fill_in(tmp_path, capsys):
    source = write_json(tmp_path, {"pretrained_model_name_or_path": "m.safetensors", "train_data_dir": "img",
                                   "learning_rate_te": "1e-6", "output_dir": "out"})
    assert main(["convert", str(source), "-o", str(tmp_path / "db.toml")]) == EXIT_OK
    text = (tmp_path / "db.toml").read_text()
    assert "# Still to do before this job runs:" in text and "dreambooth.instance_prompt is required" in text


def test_sd_scripts_sdxl_fine_tune_keys(tmp_path):
    """sdxl_train.py with a metadata file: a fine-tune; its two text-encoder LRs become Kiln's one, noted."""
    path = tmp_path / "sdxl_ft.toml"
    path.write_text('pretrained_model_name_or_path = "org/sdxl"\nin_json = "meta_lat.json"\ntrain_data_dir = "img"\n'
                    'train_text_encoder = true\nlearning_rate = 4e-6\nlearning_rate_te1 = 1e-6\n'
                    'learning_rate_te2 = 2e-6\n')
    cfg = load_job(path, complete=False)
    assert (cfg.method, cfg.finetune.train_text_encoder, cfg.training.text_encoder_lr) == ("finetune", True, 1e-6)
    notes = "\n".join(cfg.migration_notes)
    assert "learning_rate_te2 = 2e-06: ignored: Kiln trains both text encoders at one" in notes
    assert "in_json" in notes and "caption files beside the images" in notes


# --- Flux.1 / SD 3 / Chroma (sd-scripts' flux_train_network.py, sd3_train_network.py; the GUI's switches) ----

def gui_flux(tmp_path, **changes) -> dict:
    """A GUI LoRA config with the Flux.1 switch on and the keys its Flux panel writes (as strings, as it saves)."""
    flux = {"flux1_checkbox": True, "LoRA_type": "Flux1", "pretrained_model_name_or_path": "flux1-dev.safetensors",
            "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors", "ae": "ae.safetensors",
            "guidance_scale": "1.0", "timestep_sampling": "shift", "discrete_flow_shift": "3.1582",
            "model_prediction_type": "raw", "blocks_to_swap": "18", "fp8_base": True, "network_dim": "16",
            "network_alpha": "16", "apply_t5_attn_mask": True, "t5xxl_max_token_length": "512",
            "split_mode": False, "mem_eff_save": True, "train_blocks": "single",
            "train_single_block_indices": "0-19", "flux1_cache_text_encoder_outputs": True, "sigmoid_scale": "1.0"}
    return gui_lora(tmp_path, **{**flux, **changes})


def test_gui_flux_lora_maps_family_files_and_flow_keys(tmp_path):
    cfg = load_job(write_json(tmp_path, gui_flux(tmp_path)), complete=False)
    model, training, lora = cfg.model, cfg.training, cfg.lora
    assert (cfg.method, model.arch) == ("lora", "flux")
    assert [model.clip_l.rsplit("/", 1)[-1], model.t5xxl.rsplit("/", 1)[-1], model.vae.rsplit("/", 1)[-1]] == [
        "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"]
    assert (training.timestep_sampling, training.discrete_flow_shift, training.guidance_scale) == (
        "shift", pytest.approx(3.1582), 1.0)
    assert (training.blocks_to_swap, training.base_quantization, training.cache_text_encoder_outputs) == (
        18, "fp8", True)
    assert (lora.rank, lora.alpha, lora.train_blocks, lora.train_single_block_indices) == (16, 16.0, "single", "0-19")
    notes = notes_by_key(cfg)
    assert notes["flux1_checkbox"] == ['model.arch = "flux"']
    # the SD options the GUI writes into every config: dropped with the reason, not refused by the family check
    assert "does not apply to Flux.1" in notes["min_snr_gamma"][0] and (training.min_snr_gamma, training.clip_skip) \
        == (0.0, 1)
    assert "does not apply to Flux.1" in notes["noise_offset"][0] and training.noise_offset == 0.0
    assert notes["apply_t5_attn_mask"][0].startswith("ignored (")
    assert "model.clip_g" not in str(cfg.migration_notes)


@pytest.mark.parametrize("prediction, scheme, weighting", [
    ("sigma_scaled", "sigma_sqrt", "sigma_sqrt"),  # sd-scripts weighs the loss only for sigma_scaled
    ("sigma_scaled", "cosmap", "cosmap"),
    ("additive", "sigma_sqrt", "none"),
    ("raw", "cosmap", "none"),
])
def test_gui_flux_prediction_types_import_with_their_loss_weights(tmp_path, prediction, scheme, weighting):
    config = gui_flux(tmp_path, model_prediction_type=prediction, weighting_scheme=scheme)
    cfg = load_job(write_json(tmp_path, config), complete=False)
    assert (cfg.training.model_prediction_type, cfg.training.weighting_scheme) == (prediction, weighting)
    notes = notes_by_key(cfg)
    assert notes["model_prediction_type"] == [f'training.model_prediction_type = "{prediction}"']
    if weighting == "none":
        assert notes["weighting_scheme"][0].startswith("ignored: sd-scripts weighs the loss only with")


def test_flux_without_prediction_type_takes_sd_scripts_default_sigma_scaled(tmp_path):
    config = gui_flux(tmp_path)
    del config["model_prediction_type"]
    cfg = load_job(write_json(tmp_path, config), complete=False)
    assert cfg.training.model_prediction_type == "sigma_scaled"
    assert "model_prediction_type not set: sd-scripts' default" in "\n".join(cfg.migration_notes)


def test_gui_flux_without_guidance_gets_sd_scripts_default_and_logit_options_drop(tmp_path):
    config = gui_flux(tmp_path, timestep_sampling="sigmoid", sigmoid_scale="1.5", logit_mean="-0.5")
    del config["guidance_scale"]
    cfg = load_job(write_json(tmp_path, config), complete=False)
    training = cfg.training
    assert (training.timestep_sampling, training.sigmoid_scale, training.guidance_scale, training.logit_mean) == (
        "logit_normal", 1.5, 3.5, 0.0)  # sd-scripts' sigmoid is Kiln's logit_normal at mean 0, std 1
    notes = notes_by_key(cfg)
    assert "guidance_scale not set: sd-scripts' default 3.5" in "\n".join(cfg.migration_notes)
    assert notes["logit_mean"][0].startswith("ignored: sd-scripts uses it only with timestep_sampling = \"sigma\"")


@pytest.mark.parametrize("scheme, sampling, extra", [
    ("logit_normal", "logit_normal", {"logit_mean": -0.5, "logit_std": 1.2}),
    ("mode", "mode", {"mode_scale": 1.1}),
    ("none", "sigma", {}),
])
def test_sd_scripts_flux_sigma_sampling_takes_the_weighting_schemes_density(tmp_path, scheme, sampling, extra):
    (tmp_path / "args.toml").write_text(
        'pretrained_model_name_or_path = "flux1-dev.safetensors"\ntrain_data_dir = "d"\n'
        'network_module = "networks.lora_flux"\nnetwork_dim = 4\nnetwork_alpha = 2\nmodel_prediction_type = "raw"\n'
        f'timestep_sampling = "sigma"\nweighting_scheme = "{scheme}"\ndiscrete_flow_shift = 1.0\n'
        'logit_mean = -0.5\nlogit_std = 1.2\nmode_scale = 1.1\n')
    training = load_job(tmp_path / "args.toml", complete=False).training
    assert training.timestep_sampling == sampling
    assert {k: getattr(training, k) for k in extra} == extra
    assert (training.logit_mean == -0.5) == ("logit_mean" in extra)  # unused ones are dropped
    assert (training.mode_scale == 1.1) == ("mode_scale" in extra)


def test_sd_scripts_flux_toml_with_network_args(tmp_path):
    (tmp_path / "args.toml").write_text(
        'pretrained_model_name_or_path = "flux1-dev.safetensors"\ntrain_data_dir = "d"\n'
        'clip_l = "clip_l.safetensors"\nt5xxl = "t5xxl_fp8_e4m3fn.safetensors"\nae = "ae.safetensors"\n'
        'network_module = "networks.lora_flux"\nnetwork_dim = 32\nnetwork_alpha = 16\n'
        'network_args = ["train_blocks=double", "train_double_block_indices=0-5,10", "split_qkv=True", '
        '"img_attn_dim=4"]\nmodel_prediction_type = "raw"\ntimestep_sampling = "flux_shift"\n'
        'fp8_base_unet = true\nblocks_to_swap = 8\ngradient_checkpointing = true\ncpu_offload_checkpointing = true\nnetwork_train_unet_only = true\n')
    cfg = load_job(tmp_path / "args.toml", complete=False)
    assert (cfg.model.arch, cfg.lora.rank, cfg.lora.alpha, cfg.lora.train_text_encoder) == ("flux", 32, 16.0, False)
    assert (cfg.lora.train_blocks, cfg.lora.train_double_block_indices) == ("double", "0-5,10")
    assert (cfg.training.timestep_sampling, cfg.training.base_quantization, cfg.training.blocks_to_swap) == (
        "flux_shift", "fp8", 8)
    assert cfg.training.guidance_scale == 3.5  # sd-scripts' default, noted
    notes = notes_by_key(cfg)
    assert notes["network_module"] == ['model.arch = "flux"']
    assert any("img_attn_dim=4" in n and "ignored" in n for n in notes["network_args"])
    assert "set training.blocks_to_swap" in notes["cpu_offload_checkpointing"][0]


def test_fp8_base_also_quantizes_t5_but_fp8_base_unet_does_not(tmp_path):
    """sd-scripts' flux/sd3_train_network.py load T5-XXL as stored (an fp8 file stays fp8) with fp8_base, and in
    the training dtype with fp8_base_unet."""
    cfg = load_job(write_json(tmp_path, gui_flux(tmp_path)), complete=False)
    assert (cfg.training.base_quantization, cfg.training.t5_quantization) == ("fp8", "fp8")
    assert any("T5-XXL" in n for n in notes_by_key(cfg)["fp8_base"])
    cfg = load_job(write_json(tmp_path, gui_flux(tmp_path, fp8_base=False, fp8_base_unet=True)), complete=False)
    assert (cfg.training.base_quantization, cfg.training.t5_quantization) == ("fp8", "none")
    cfg = load_job(write_json(tmp_path, gui_flux(tmp_path, sd3_checkbox=True, flux1_checkbox=False,
                                                  clip_g="clip_g.safetensors")), complete=False)
    assert (cfg.model.arch, cfg.training.t5_quantization) == ("sd3", "fp8")
    cfg = load_job(write_json(tmp_path, gui_lora(tmp_path, fp8_base=True, mixed_precision="bf16")))
    assert cfg.training.t5_quantization == "none"  # SD 1.x/2.x/SDXL have no T5


def test_sd_scripts_chroma(tmp_path):
    (tmp_path / "args.toml").write_text(
        'pretrained_model_name_or_path = "chroma.safetensors"\ntrain_data_dir = "d"\nmodel_type = "chroma"\n'
        't5xxl = "t5xxl.safetensors"\nclip_l = "clip_l.safetensors"\nae = "ae.safetensors"\n'
        'network_module = "networks.lora_flux"\nnetwork_dim = 8\nmodel_prediction_type = "raw"\n'
        'guidance_scale = 0.0\ntimestep_sampling = "sigmoid"\nnetwork_train_unet_only = true\n')
    cfg = load_job(tmp_path / "args.toml", complete=False)
    assert (cfg.model.arch, cfg.model.t5xxl.endswith("t5xxl.safetensors"), cfg.model.clip_l,
            cfg.training.timestep_sampling) == ("chroma", True, "", "logit_normal")
    assert "does not apply to Chroma" in notes_by_key(cfg)["clip_l"][0]


def test_sd_scripts_sd3_lora(tmp_path):
    (tmp_path / "args.toml").write_text(
        'pretrained_model_name_or_path = "sd3.5_large.safetensors"\ntrain_data_dir = "d"\n'
        'clip_l = "clip_l.safetensors"\nclip_g = "clip_g.safetensors"\nt5xxl = "t5xxl_fp16.safetensors"\n'
        'network_module = "networks.lora_sd3"\nnetwork_dim = 16\nnetwork_alpha = 8\n'
        'network_args = ["train_block_indices=0-11"]\nweighting_scheme = "logit_normal"\nlogit_std = 1.5\n'
        'training_shift = 3.0\nguidance_scale = 3.5\ndiscrete_flow_shift = 3.0\nblocks_to_swap = 10\ngradient_checkpointing = true\n')
    cfg = load_job(tmp_path / "args.toml", complete=False)
    training = cfg.training
    assert (cfg.model.arch, cfg.model.clip_g.endswith("/clip_g.safetensors"), cfg.lora.rank, cfg.lora.alpha) == (
        "sd3", True, 16, 8.0)
    # a logit-normal draw at mean 0 shifted by training_shift is Kiln's "shift" draw
    assert (training.timestep_sampling, training.discrete_flow_shift, training.sigmoid_scale) == ("shift", 3.0, 1.5)
    assert (cfg.lora.train_double_block_indices, training.blocks_to_swap, training.guidance_scale) == ("0-11", 10, 1.0)
    notes = notes_by_key(cfg)
    assert "does not apply to SD 3/3.5" in notes["guidance_scale"][0]
    assert notes["logit_std"] == ["training.sigmoid_scale = 1.5"] and notes["training_shift"] == [
        "training.discrete_flow_shift = 3.0"]
    assert notes["network_module"] == ['model.arch = "sd3"']


@pytest.mark.parametrize("scheme, sampling, weighting", [("cosmap", "uniform", "cosmap"), ("mode", "mode", "none"),
                                                         ("uniform", "uniform", "none")])
def test_gui_sd3_weighting_scheme(tmp_path, scheme, sampling, weighting):
    config = gui_lora(tmp_path, sd3_checkbox=True, clip_g="clip_g.safetensors", weighting_scheme=scheme,
                      mode_scale="1.29", logit_std="1")
    cfg = load_job(write_json(tmp_path, config), complete=False)
    assert (cfg.model.arch, cfg.training.timestep_sampling, cfg.training.weighting_scheme) == (
        "sd3", sampling, weighting)


def test_sd_config_with_the_guis_flux_fields_still_imports_as_sd(tmp_path):
    """Newer GUIs write their Flux/SD3 fields (at defaults or not) into every config: an SD 1.5 LoRA imports."""
    config = gui_lora(tmp_path, guidance_scale="3.5", timestep_sampling="sigma", discrete_flow_shift="3.0",
                      model_prediction_type="sigma_scaled", flux1_checkbox=False, sd3_checkbox=False, t5xxl="",
                      clip_l="", logit_mean="0.2", blocks_to_swap="0")
    cfg = load_job(write_json(tmp_path, config), complete=False)
    assert (cfg.model.arch, cfg.training.guidance_scale, cfg.training.logit_mean) == ("auto", 1.0, 0.0)
    notes = notes_by_key(cfg)
    assert "does not apply to SD 1.x" in notes["guidance_scale"][0]
    assert notes["logit_mean"] == ["ignored: sd-scripts reads it for SD 3 and Flux.1 only"]


def test_trainer_check_json_on_a_flux_gui_config(tmp_path, capsys):
    """`trainer check FILE.json --json` on a Flux GUI config naming the separate files people keep passes,
    with the family and the notes."""
    from tests.helpers import make_dataset
    from trainer.cli import main

    files = tmp_path / "flux"
    assert main(["tiny-model", str(files), "--arch", "flux", "--format", "split-files"]) == 0
    make_dataset(tmp_path / "img", n=2)
    config = gui_flux(tmp_path, pretrained_model_name_or_path=str(files / "transformer.safetensors"),
                      clip_l=str(files / "clip_l.safetensors"), t5xxl=str(files / "t5xxl.safetensors"),
                      ae=str(files / "ae.safetensors"), train_data_dir=str(tmp_path / "img"),
                      output_dir=str(tmp_path / "out"), max_resolution="64,64", min_bucket_reso=64,
                      max_bucket_reso=128, blocks_to_swap="0", fp8_base=False, sample_every_n_steps="0")
    path = write_json(tmp_path, config)
    capsys.readouterr()
    assert main(["check", str(path), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"], report["errors"]
    assert report["family"]["id"] == "flux" and report["config"]["model"]["t5xxl"].endswith("t5xxl.safetensors")
    assert {"source_key": "flux1_checkbox", "value": True, "result": 'model.arch = "flux"'} in \
        report["migration_notes"]
    assert report["config"]["training"]["timestep_sampling"] == "shift"
