"""Textual inversion learns (issue 6, "learn test as for LoRA"): on a 2-image concept, the denoising loss at a fixed
set of noises and timesteps falls to <= 0.7 of its value before training, for three seeds.

A new word can only help as much as the UNet listens to its text, and the tiny random UNet barely does (directly
optimising 40 vectors against the loss reaches 0.95 of its start). So the base model is made to use its text first,
with Kiln's own training code:
- The tiny model's random VAE gives latents far smaller than the noise, which makes denoising nearly
  image-independent; the base gets a deterministic VAE with unit-scale latents, as in test_dreambooth_prior.py.
- It is the tiny SD 2.x model, whose v-prediction makes the text matter. With epsilon prediction (SD 1.x) and a few
  training images, the noisy latent alone tells which image it came from at every timestep but the noisiest, where
  the epsilon target hardly depends on the image: the fine-tuned base ignored its text (the circles' loss with
  "circle" and with "square" within 2%; textual inversion 0.94-0.96). v-prediction's target at high noise is the
  image itself, which only the text can tell.
- It is fine-tuned in full (DreamBooth, prior preservation off) on three captioned concepts: red circles ("circle"),
  blue squares ("square"), green triangles ("triangle"). Afterwards the circles' loss with "circle" is 0.22-0.29 of
  their loss with "square" (pre-training seeds 7, 8, 9).
- Textual inversion then learns a new token on the two circle images, initialised from "square": a word the base
  knows as something else, as every init word is to a real model. (A word it never saw lands wherever the base's
  text response happens to put it: "car" and "" gave about the circles' own loss, which would test nothing.) The
  circles are the base's own: the tiny UNet memorises its few images rather than learning shapes (on three new
  circles "circle" gave 0.88 of the loss of "square", and textual inversion 0.86).
- The yardstick is trainer.evaluate.fixed_denoising_loss with the method's own prompts; its default draws
  make each image meet every one of EVAL_TIMESTEPS.

Measured (pre-training seed 7): 0.420 -> 0.123, ratio 0.29 for each of the seeds 1, 2, 3, as low as the word
"circle" itself; pre-training seeds 8 and 9 gave 0.23 and 0.28. With the embedding never updated (every row restored
after each step) the ratio is 1.000. About 35 s on two cores.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from tests.helpers import save_unit_scale_tiny_model, write_job
from trainer.config import load_job
from trainer.data import TrainData, scan_dataset
from trainer.evaluate import fixed_denoising_loss
from trainer.loop import default_paths, train
from trainer.methods.textual_inversion import TextualInversionMethod
from trainer.models import load_base_model

TOKEN = "<kiln-shape>"
CONCEPTS = {"circle": ((220, 30, 30), "ellipse"), "square": ((30, 60, 220), "rectangle"),
            "triangle": ((30, 180, 60), "polygon")}
TARGET, INIT_WORD = "circle", "square"
IMAGES_PER_CONCEPT = 2
LATENT_SCALE = 3.0  # the tiny VAE's latent means have std ~0.26: x3 makes them unit-scale, like SD's VAE
PRETRAIN_STEPS, PRETRAIN_LR = 600, 1e-3
TI_STEPS, TI_LR = 30, 5e-2
SEEDS = (1, 2, 3)


def unit_scale_tiny_sd2(folder: Path) -> Path:
    return save_unit_scale_tiny_model(folder, "sd2", LATENT_SCALE)


def draw(concept: str, rng: random.Random) -> Image.Image:
    """A large shape of the concept's colour near the middle of a grey ground, its size and place jittered."""
    colour, kind = CONCEPTS[concept]
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    r, x, y = rng.randint(18, 24), 32 + rng.randint(-4, 4), 32 + rng.randint(-4, 4)
    d = ImageDraw.Draw(image)
    if kind == "ellipse":
        d.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif kind == "rectangle":
        d.rectangle([x - r, y - r, x + r, y + r], fill=colour)
    else:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    return image


def concept_images(root: Path) -> Path:
    """IMAGES_PER_CONCEPT images of each concept, captioned with its word."""
    rng = random.Random(0)
    root.mkdir(parents=True)
    for concept in CONCEPTS:
        for i in range(IMAGES_PER_CONCEPT):
            draw(concept, rng).save(root / f"{concept}_{i}.png")
            (root / f"{concept}_{i}.txt").write_text(concept)
    return root


def token_images(concepts: Path, root: Path) -> Path:
    """The target concept's images, captioned with the new token alone."""
    root.mkdir(parents=True)
    for image in sorted(concepts.glob(f"{TARGET}_*.png")):
        shutil.copy(image, root / image.name)
        (root / image.with_suffix(".txt").name).write_text(TOKEN)
    return root


def test_textual_inversion_learns_a_small_concept(tmp_path):
    tiny = unit_scale_tiny_sd2(tmp_path / "tiny-sd2-unit-scale")
    concepts = concept_images(tmp_path / "concepts")

    # 1. A base that uses its text: the tiny model fine-tuned on the three captioned concepts.
    pretrain = load_job(write_job(tmp_path / "base.toml", tiny, concepts, tmp_path / "base", method="dreambooth",
                                  sections={
        "dreambooth": {"prior_preservation": False, "instance_prompt": "shape"},  # every image has a caption
        "training": {"max_steps": PRETRAIN_STEPS, "batch_size": 4, "learning_rate": PRETRAIN_LR, "seed": 7},
        "output": {"name": "base"}}))
    base_file = train(pretrain, default_paths(pretrain)).outputs[-1]

    # 2. Textual inversion of a new token on the circles, from the base, for several seeds.
    token_data = token_images(concepts, tmp_path / "token-data")
    report, ratios = [], {}
    for seed in SEEDS:
        cfg = load_job(write_job(tmp_path / f"ti-{seed}.toml", base_file, token_data, tmp_path / f"ti-{seed}",
                                 method="textual_inversion", sections={
            "textual_inversion": {"token": TOKEN, "init_word": INIT_WORD, "template": "captions"},
            "training": {"max_steps": TI_STEPS, "batch_size": IMAGES_PER_CONCEPT, "learning_rate": TI_LR,
                         "seed": seed},
            "output": {"name": "ti"}}))
        eval_data = TrainData(scan_dataset(cfg.dataset), cfg.dataset, IMAGES_PER_CONCEPT, seed=0)
        prompts = TextualInversionMethod(cfg).batch_captions  # the token's prompts, as training sees them

        def loss(model, captions=prompts):
            return fixed_denoising_loss(model, eval_data, captions=captions)

        if seed == SEEDS[0]:
            base = load_base_model(cfg.model)
            assert base.prediction_type == "v_prediction" and base.vae.config.scaling_factor == LATENT_SCALE
            TextualInversionMethod(cfg).prepare(base)  # the token exists, initialised from the init word
            before = loss(base)
            with_word = loss(base, lambda batch: [TARGET] * len(batch.captions))
            report.append(f"base: {before:.4f} with the token (= {INIT_WORD!r}), {with_word:.4f} with {TARGET!r}")
            # The premise: the base tells the concepts apart by their words (measured 0.22-0.30).
            assert with_word < 0.6 * before, "the base did not learn to use its text\n" + "\n".join(report)

        after = loss(train(cfg, default_paths(cfg)).model)
        ratios[seed] = after / before
        report.append(f"seed {seed}: {before:.4f} -> {after:.4f} (ratio {ratios[seed]:.3f})")
    print("\n".join(report))
    for seed, ratio in ratios.items():
        assert ratio <= 0.7, f"seed {seed}: the token did not learn the concept\n" + "\n".join(report)
