"""Each method's torch-free spec is the one place of its rules: the config checks, `trainer check` and the
training classes read it (requirements, warnings, learning-rate groups, what is trained, planned dataset)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import make_dataset
from trainer.config import parse_job
from trainer.methods import spec_for


def job(method="lora", **sections):
    data = {"method": method, "model": {"base": "builtin:tiny-sd15"}, "dataset": {"dir": "/data"}}
    for name, values in sections.items():
        data[name] = values
    return parse_job(data, complete=False)


def test_specs_load_without_torch():
    code = ("import sys; from trainer.methods import spec_for; from trainer.config import parse_job; "
            "[spec_for(m) for m in ('lora', 'dreambooth', 'textual_inversion')]; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("method, sections, expected", [
    ("lora", {}, []),
    ("dreambooth", {}, ["dreambooth.instance_prompt is required when method = \"dreambooth\" (it is empty)",
                        "dreambooth.class_prompt is required when dreambooth.prior_preservation = true (it is empty)"]),
    ("dreambooth", {"dreambooth": {"prior_preservation": False, "instance_prompt": "sks"}}, []),
    ("textual_inversion", {"textual_inversion": {"token": "<x>"}},
     ['textual_inversion.init_word is required when method = "textual_inversion" (it is empty)']),
])
def test_requirements(method, sections, expected):
    assert spec_for(method).requirements(job(method, **sections)) == expected


@pytest.mark.parametrize("method, sections, rates", [
    ("lora", {}, {"unet": 1e-4}),
    ("lora", {"lora": {"train_text_encoder": True}}, {"unet": 1e-4, "text_encoder": 1e-4}),
    ("lora", {"lora": {"train_text_encoder": True}, "training": {"text_encoder_lr": 5e-5}},
     {"unet": 1e-4, "text_encoder": 5e-5}),
    ("dreambooth", {"dreambooth": {"train_text_encoder": True}, "training": {"learning_rate": 2e-6}},
     {"unet": 2e-6, "text_encoder": 2e-6}),
    ("dreambooth", {"lora": {"train_text_encoder": True}}, {"unet": 1e-4}),  # DreamBooth reads its own switch
    ("textual_inversion", {"training": {"learning_rate": 5e-3}}, {"unet": 5e-3}),
])
def test_learning_rate_groups(method, sections, rates):
    assert spec_for(method).learning_rates(job(method, **sections)) == rates


def test_what_each_method_trains():
    lora, db, db_lora = job(), job("dreambooth"), job("dreambooth", dreambooth={"use_lora": True})
    assert [spec_for(c.method).trains_lora(c) for c in (lora, db, db_lora)] == [True, False, True]
    assert [spec_for(c.method).trains_full_unet(c) for c in (lora, db, db_lora)] == [False, True, False]
    ti = job("textual_inversion")
    assert not spec_for("textual_inversion").trains_text_encoder(ti)


def test_lr_warnings_follow_the_kind_of_training():
    assert "unusually high for LoRA" in job(training={"learning_rate": 0.05}).warnings[0]
    assert "high for full DreamBooth" in spec_for("dreambooth").warnings(job("dreambooth",
                                                                           training={"learning_rate": 1e-4}))[0]
    assert spec_for("dreambooth").warnings(job("dreambooth", dreambooth={"use_lora": True},
                                               training={"learning_rate": 1e-4})) == []
    lr_free = job(training={"optimizer": "dadaptadam", "learning_rate": 1.0, "text_encoder_lr": 1e-5},
                  lora={"train_text_encoder": True})
    assert lr_free.warnings == ['training.text_encoder_lr = 1e-05 is ignored with training.optimizer = '
                                '"dadaptadam": D-Adaptation Adam finds one step size for everything it trains']


def test_training_classes_take_their_rules_from_the_spec(tiny_sd15_dir, tmp_path):
    from trainer.methods import make_method
    from trainer.models import load_base_model

    cfg = parse_job({"method": "lora", "model": {"base": str(tiny_sd15_dir)}, "dataset": {"dir": str(tmp_path)},
                     "lora": {"rank": 2, "train_text_encoder": True}, "training": {"text_encoder_lr": 3e-5}})
    method = make_method(cfg)
    assert method.spec is spec_for("lora") and method.trains_text_encoder
    groups = method.prepare(load_base_model(cfg.model))
    assert [g["lr"] for g in groups] == [1e-4, 3e-5]


def test_planned_dataset_of_dreambooth_counts_the_class_images(tmp_path):
    data = make_dataset(tmp_path / "subject", n=2)
    cfg = parse_job({"method": "dreambooth", "model": {"base": "builtin:tiny-sd15"},
                     "dataset": {"dir": str(data), "resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128},
                     "dreambooth": {"instance_prompt": "sks", "class_prompt": "a shape",
                                    "class_images_per_instance": 3, "class_dir": str(tmp_path / "class")}})
    index = spec_for("dreambooth").planned_dataset(cfg)
    assert (index.num_images, index.num_class_images) == (2, 6)
    assert spec_for("lora").planned_dataset(cfg).num_class_images == 0


def test_schedule_free_with_a_decaying_schedule_is_pointed_out():
    assert 'schedule-free AdamW replaces the schedule' in job(training={"optimizer": "adamwschedulefree",
                                                                        "lr_scheduler": "cosine"}).warnings[0]
    assert job(training={"optimizer": "adamwschedulefree"}).warnings == []
