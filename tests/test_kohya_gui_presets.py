"""Every preset the Kohya_ss GUI ships (tests/fixtures/kohya_gui_presets, see its README) imports with its key
fields right, or is refused naming what Kiln cannot train."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import ConfigError, load_job

PRESETS = Path(__file__).parent / "fixtures" / "kohya_gui_presets"
ADAFACTOR_RELATIVE = 1e-4  # Kiln's default LR: Kohya's relative-step Adafactor ignores the file's learning rate

# preset -> (method, network type, train_conv, rank, alpha, learning_rate, epochs, max_steps, optimizer, resolution)
# or ("refused", the words the refusal must hold). Network fields are None where the method has no network.
# The GUI's SD3 presets are DreamBooth-tab ones (sd3_train.py, a full fine-tune), which Kiln does not train for SD 3
SD3_DREAMBOOTH = ('sd3_checkbox = true with method = "dreambooth" (Kohya\'s DreamBooth training): DreamBooth (full or '
                  'LoRA with prior preservation) is not available for SD 3/3.5 yet; train a LoRA')
EXPECTED = {
    "dreambooth/sd3_bdsqlsz_v1": ("refused", SD3_DREAMBOOTH),
    "dreambooth/sd3_bdsqlsz_v2": ("refused", SD3_DREAMBOOTH),
    "finetune/SDXL - AI_Now PagedAdamW8bit v1.0": ("finetune", None, None, None, None, 5e-5, 240, 0,
                                                   "pagedadamw8bit", 1024),
    "finetune/SDXL - Essenz series by AI_Characters_Training v1.0": ("finetune", None, None, None, None, 1e-6, 100,
                                                                     0, "adamw8bit", 1024),
    "finetune/adafactor": ("finetune", None, None, None, None, ADAFACTOR_RELATIVE, 2, 0, "adafactor", 512),
    "finetune/lion": ("finetune", None, None, None, None, 1.66666666e-05, 2, 0, "lion8bit", 512),
    "lora/SDXL - 1 image LoRA v1.0": ("lora", "lokr", True, 1024, 1024, 1.0, 100, 160, "prodigy", 1024),
    "lora/SDXL - LoHA AI_Characters v1.0": ("lora", "loha", True, 32, 32, 1e-3, 100, 0, "adamw8bit", 1024),
    "lora/SDXL - LoHA by AI_Characters": ("lora", "loha", True, 32, 32, 1e-3, 100, 0, "adamw8bit", 1024),
    "lora/SDXL - LoKR v1.0": ("lora", "lokr", True, 64, 64, 1.0, 20, 0, "prodigy", 1024),
    "lora/SDXL - LoRA AI_Now ADamW v1.0": ("lora", "lora", False, 32, 32, 1e-4, 160, 320, "adamw", 1024),
    "lora/SDXL - LoRA AI_Now prodigy v1.0": ("lora", "lora", False, 32, 16, 1.0, 160, 0, "prodigy", 1024),
    "lora/SDXL - LoRA AI_characters standard v1.0": ("lora", "lora", False, 32, 32, 2e-5, 100, 0, "adamw8bit", 1024),
    "lora/SDXL - LoRA AI_characters standard v1.1": ("lora", "lora", False, 32, 32, 3e-5, 50, 0, "adamw", 1024),
    "lora/SDXL - LoRA adafactor v1.0": ("lora", "lora", False, 128, 128, ADAFACTOR_RELATIVE, 30, 0, "adafactor",
                                        1024),
    "lora/SDXL - LoRA aitrepreneur clothing v1.0": ("lora", "lora", False, 128, 1, 9e-4, 15, 0, "adafactor", 1024),
    "lora/SDXL - LoRA by malcolmrey training v1.0": ("lora", "lora", False, 32, 13, 1e-4, 16, 0, "adamw8bit", 1024),
    "lora/SDXL - LoRA dogu_cat v1.0": ("lora", "lora", False, 92, 46, 1e-4, 10, 0, "adamw8bit", 1024),
    "lora/SDXL - LoRA face dogu_cat v1.0": ("lora", "lora", False, 92, 46, 1e-4, 10, 0, "adamw8bit", 1024),
    "lora/SDXL - LoRA finetuning phase 1_v1.1": ("lora", "lora", False, 128, 128, 1e-4, 8, 0, "adamw", 1024),
    # dim_from_weights: rank and alpha stay at Kiln's defaults, to be read from lora.init_weights
    "lora/SDXL - LoRA finetuning phase 2_v1.1": ("lora", "lora", False, 16, 8, 1e-4, 1, 0, "adamw", 1024),
    "lora/SDXL - LoRA kudou-reira dadaptadam v1.1": ("lora", "lora", False, 64, 64, 1.0, 25, 0, "dadaptadam", 1024),
    "lora/SDXL - LoRA kudou-reira prodigy v4.0": ("lora", "lora", False, 256, 256, 1.0, 30, 0, "prodigy", 1024),
    "lora/SDXL - LoRA prodigy AI_Now v1.0": ("lora", "lora", False, 32, 16, 1.0, 160, 0, "prodigy", 1024),
    "lora/SDXL - edgLoRAXL AI_Now": ("lora", "lora", False, 32, 32, 1.0, 160, 320, "prodigy", 1024),
    "lora/SDXL - lokr_v1.0": ("lora", "lokr", True, 64, 64, 1.0, 20, 0, "prodigy", 1024),
    "lora/dadaptation": ("lora", "loha", True, 8, 8, 1.0, 1, 0, "dadaptadam", 576),
    # max_train_epochs wins over epoch and max_train_steps; unet_lr over learning_rate
    "lora/flux1D - adamw8bit fp8": ("lora", "lora", False, 8, 8, 1e-4, 25, 0, "adamw8bit", 512),
    "lora/iA3-Prodigy-sd15": ("refused", 'LoRA_type = "LyCORIS/iA3": Kiln cannot train this network type'),
    "lora/ia3-sd15": ("refused", 'LoRA_type = "LyCORIS/iA3": Kiln cannot train this network type'),
    "lora/lion_optimizer": ("lora", "lora", False, 128, 128, 3.333e-5, 1, 0, "adamw", 512),
    "lora/locon-dadaptation-sdxl": ("lora", "lora", False, 64, 64, 4e-7, 4, 0, "adafactor", 512),
    "lora/loha-sd15": ("lora", "loha", True, 32, 16, 1e-4, 2, 0, "adamw", 512),
    "lora/lokr-sd15": ("lora", "lokr", True, 64, 64, 1.0, 1, 0, "prodigy", 512),
    "lora/sd15 - EDG_LoConOptiSettings": ("lora", "lora", True, 64, 64, 1e-4, 1, 0, "adamw8bit", 576),
    "lora/sd15 - EDG_LoraOptiSettings": ("lora", "lora", False, 64, 64, 1e-4, 1, 0, "adamw8bit", 576),
    "lora/sd15 - LoKR v1.0": ("lora", "lokr", True, 1024, 1024, 1e-4, 20, 150, "adamw", 768),
    "lora/sd15 - LoKr v1.1": ("lora", "lokr", True, 1024, 1024, 1e-4, 20, 113, "adamw", 768),
    "lora/sd15 - LoKr v2.0": ("lora", "lokr", True, 1024, 1024, 1.0, 150, 0, "prodigy", 512),
    "lora/sd15-EDG_LoHaOptiSettings": ("lora", "loha", True, 32, 32, 1e-4, 1, 0, "adamw8bit", 576),
    "lora/sdxl-24GB-loha-prodigy_v1": ("lora", "loha", True, 32, 16, 1.0, 20, 0, "prodigy", 1024),
    "lora/sdxl-24GB-lokr_v1": ("lora", "lokr", True, 64, 64, 1.0, 20, 0, "prodigy", 1024),
    "lora/sdxl-loha-AdamW8bit-kBlueLeafv1": ("lora", "loha", True, 8, 8, 2e-3, 10, 0, "adamw8bit", 1024),
    "lora/sdxl-loha-prodigy_v1": ("lora", "loha", True, 32, 16, 1.0, 20, 0, "prodigy", 1024),
}


def test_every_fixture_has_an_expectation():
    found = {str(p.relative_to(PRESETS).with_suffix("")) for p in PRESETS.glob("*/*.json")}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_gui_preset_imports_with_its_key_fields(name):
    path = PRESETS / f"{name}.json"
    expected = EXPECTED[name]
    if expected[0] == "refused":
        with pytest.raises(ConfigError) as refused:
            load_job(path, complete=False)
        assert expected[1] in str(refused.value)
        return
    cfg = load_job(path, complete=False)  # complete=False: the presets name no base model or image folder
    method, kind, conv, rank, alpha, lr, epochs, max_steps, optimizer, resolution = expected
    training = cfg.training
    assert (cfg.method, training.learning_rate, training.epochs, training.max_steps, training.optimizer,
            cfg.dataset.resolution) == (method, pytest.approx(lr), epochs, max_steps, optimizer, resolution)
    if kind is not None:
        assert (cfg.lora.type, cfg.lora.train_conv, cfg.lora.rank, cfg.lora.alpha) == (kind, conv, rank, alpha)
    assert cfg.dataset.bucket_reso_steps % 8 == 0  # 1 (sd15 LoKr, finetune presets) became 8
    notes = [str(n) for n in cfg.migration_notes]
    assert len(notes) == len(set(notes)) and all(notes), notes


def notes_of(name: str) -> str:
    return "\n".join(load_job(PRESETS / f"{name}.json", complete=False).migration_notes)


def test_translations_are_noted():
    """What Kohya accepts and Kiln trains another way says so in the key's note."""
    lokr = notes_of("lora/sd15 - LoKr v2.0")
    assert "network_dim = 100000 -> lora.rank = 1024, lora.alpha = 1024.0; LyCORIS's full-matrix LoKr" in lokr
    assert "network_alpha = 1: ignored: a full-matrix LoKr is scaled by 1" in lokr
    assert "bucket_reso_steps = 1 -> dataset.bucket_reso_steps = 8; Kiln's bucket sides are multiples of 8" in lokr
    assert "optimizer = \"Lion\" -> training.optimizer = \"lion8bit\"; Kiln's Lion is bitsandbytes' 8-bit Lion" \
        in notes_of("finetune/lion")
    assert "Kohya's Adafactor takes its relative step" in notes_of("lora/SDXL - LoRA adafactor v1.0")
    kudou = load_job(PRESETS / "lora/SDXL - LoRA kudou-reira prodigy v4.0.json", complete=False)
    assert not kudou.lora.train_text_encoder  # --network_train_unet_only in the GUI's extra-arguments box
    assert "read as sd-scripts arguments" in "\n".join(kudou.migration_notes)
    blue = load_job(PRESETS / "lora/sdxl-loha-AdamW8bit-kBlueLeafv1.json", complete=False)
    assert (blue.dataset.min_bucket_reso, blue.dataset.max_bucket_reso) == (512, 2048)
    assert load_job(PRESETS / "lora/sdxl-24GB-loha-prodigy_v1.json", complete=False).training.max_grad_norm == 0
    assert 'training.optimizer = "adamw": sd-scripts\' optimizer when the file names none' in \
        notes_of("lora/lion_optimizer")


def test_flux_preset_arrives_as_a_flux_lora():
    """The GUI's Flux.1-dev preset: the family, its separate model files and flow options, fp8; the SD options it
    also writes (min-SNR, multires noise) are dropped with the reason."""
    cfg = load_job(PRESETS / "lora/flux1D - adamw8bit fp8.json", complete=False)
    model, training = cfg.model, cfg.training
    assert model.arch == "flux"
    assert [Path(p.replace("\\", "/")).name for p in (model.clip_l, model.t5xxl, model.vae)] == [
        "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.sft"]
    assert (training.timestep_sampling, training.discrete_flow_shift, training.guidance_scale) == ("sigma", 1.0, 3.5)
    assert (training.base_quantization, training.cache_text_encoder_outputs, training.mixed_precision) == (
        "fp8", True, "bf16")
    assert (training.min_snr_gamma, training.multires_noise_iterations, cfg.lora.train_text_encoder) == (0.0, 0, False)
    notes = notes_of("lora/flux1D - adamw8bit fp8")
    assert 'Kohya flux1_checkbox = true -> model.arch = "flux"' in notes
    assert "Kohya min_snr_gamma = 10: ignored: training.min_snr_gamma does not apply to Flux.1" in notes
    assert 'Kohya model_prediction_type = "raw" -> training.model_prediction_type = "raw"' in notes


def test_trainer_check_reads_a_gui_finetune_preset(tmp_path):
    """`trainer check FILE.json` with the model and images supplied imports the preset as a fine-tune job."""
    images = tmp_path / "images"
    images.mkdir()
    from tests.helpers import make_dataset

    make_dataset(images, n=2)
    out = subprocess.run([sys.executable, "-m", "trainer", "check", str(PRESETS / "finetune/lion.json"), "--json",
                          "--set", "model.base=builtin:tiny-sd15", "--set", f"dataset.dir={images}",
                          "--set", f"output.dir={tmp_path / 'out'}", "--set", "dataset.resolution=64",
                          "--set", "dataset.min_bucket_reso=64", "--set", "dataset.max_bucket_reso=128"],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    report = json.loads(out.stdout)
    assert report["ok"], report["errors"]
    assert report["config"]["method"] == "finetune" and report["config"]["finetune"]["train_text_encoder"]
    assert {"source_key": "dataset_repeats", "value": "10", "result": "dataset.repeats = 10"} in \
        report["migration_notes"]
