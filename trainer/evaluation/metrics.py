"""Image metrics through torchmetrics: FID and KID (fidelity to the training images), Inception Score
(diversity) and CLIP score (image-prompt agreement), plus a bootstrap interval for FID, which is noisy on the
few dozen images a LoRA run can afford.

Feature extractors:
- Inception-v3 (the standard FID/KID/IS features) needs torch-fidelity, which imports torchvision; Kiln's
  pinned torch has no matching torchvision on every platform, so it is used only when it imports.
- Otherwise FID/KID use CLIP image embeddings (the same CLIP as the CLIP score), which Kynkaanniemi et al.
  (2023) found tracks human judgement better than Inception features; the table then says "FID (CLIP)".
  The Inception Score needs a classifier and is reported as unavailable.
Tests pass tiny random extractors in code; the code path is the same.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

METRICS = ("fid", "kid", "is", "clip")
LOWER_IS_BETTER = {"fid": True, "kid": True, "is": False, "clip": False, "val_loss": True}  # val_loss: the job's own
BOOTSTRAP_ROUNDS = 200


class MetricsUnavailable(RuntimeError):
    """A metric cannot be computed here (weights missing offline, a package not installed); the message says
    what to do."""


class ClipAdapter(nn.Module):
    """A transformers CLIPModel as torchmetrics 1.9 expects it: get_*_features returning tensors.
    transformers 5 returns output objects from those methods, which torchmetrics then fails to normalise."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values):
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        return _pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _pooled(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipImageFeatures(nn.Module):
    """Images (N,3,H,W; floats in 0..1 or uint8) -> CLIP image embeddings, for FID/KID."""

    def __init__(self, model: nn.Module, processor):
        super().__init__()
        self.model = model if isinstance(model, ClipAdapter) else ClipAdapter(model)
        self.processor = processor
        self.num_features = int(model.config.projection_dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float() / 255 if images.dtype == torch.uint8 else images
        pixels = self.processor(images=[image for image in images], return_tensors="pt", do_rescale=False)
        return self.model.get_image_features(pixels["pixel_values"]).float()


class _Precomputed(nn.Module):
    """Hands torchmetrics features computed once (the extractor runs once per image set, and the bootstrap
    reuses them)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@dataclass
class Extractors:
    """What the metrics look through. `features`: images -> feature vectors (FID, KID); `classifier`: images ->
    class logits (IS); `clip`: a callable returning (CLIP model, processor) (CLIP score). None = unavailable,
    with the reason in `missing`."""
    features: nn.Module | None = None
    feature_name: str = ""
    classifier: nn.Module | None = None
    clip: Callable | None = None
    missing: dict[str, str] = field(default_factory=dict)


@dataclass
class Score:
    value: float
    low: float | None = None   # bootstrap 5th percentile (FID only)
    high: float | None = None  # bootstrap 95th percentile

    def text(self) -> str:
        if self.low is None:
            return f"{self.value:.4g}"
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def compute_metrics(real: torch.Tensor, fake: torch.Tensor, prompts: list[str], extractors: Extractors,
                    wanted: tuple[str, ...] = METRICS, seed: int = 0) -> dict[str, Score]:
    """Scores of the generated images `fake` (N,3,H,W, 0..1) made from `prompts`, against the training
    images `real`. Metrics whose extractor is missing are left out (see extractors.missing)."""
    with warnings.catch_warnings():
        # torchmetrics warns that KID/IS keep every feature in memory: a few hundred vectors here.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        warnings.filterwarnings("ignore", message=".*degrees of freedom is <= 0.*")  # IS std of one split
        return _compute(real, fake, prompts, extractors, wanted, seed)


def _compute(real, fake, prompts, extractors, wanted, seed) -> dict[str, Score]:
    from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance
    from torchmetrics.multimodal.clip_score import CLIPScore

    scores: dict[str, Score] = {}
    generator = torch.Generator().manual_seed(seed)
    if extractors.features is not None and ({"fid", "kid"} & set(wanted)):
        real_features, fake_features = extractors.features(real).double(), extractors.features(fake).double()
        n_features = real_features.shape[1]
        if "fid" in wanted:
            fid = FrechetInceptionDistance(feature=_Precomputed(n_features))
            fid.update(real_features, real=True)
            fid.update(fake_features, real=False)
            rounds = []
            for _ in range(BOOTSTRAP_ROUNDS):  # resample both sets: the interval covers both sampling noises
                r = real_features[torch.randint(len(real_features), (len(real_features),), generator=generator)]
                f = fake_features[torch.randint(len(fake_features), (len(fake_features),), generator=generator)]
                rounds.append(float(_compute_fid(r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T))))
            rounds.sort()
            scores["fid"] = Score(float(fid.compute()), rounds[int(0.05 * len(rounds))],
                                  rounds[int(0.95 * len(rounds)) - 1])
        if "kid" in wanted:
            subset = min(50, len(real_features), len(fake_features))
            kid = KernelInceptionDistance(feature=_Precomputed(n_features), subset_size=subset)
            kid.update(real_features, real=True)
            kid.update(fake_features, real=False)
            torch.manual_seed(seed)  # KID draws its subsets from the global generator
            scores["kid"] = Score(float(kid.compute()[0]))
    if extractors.classifier is not None and "is" in wanted:
        inception = InceptionScore(feature=extractors.classifier, splits=1)
        inception.update(fake)
        torch.manual_seed(seed)  # IS shuffles with the global generator
        scores["is"] = Score(float(inception.compute()[0]))
    if extractors.clip is not None and "clip" in wanted:
        clip = CLIPScore(model_name_or_path=extractors.clip)
        clip.update(list(fake), prompts)
        scores["clip"] = Score(float(clip.compute()))
    for name, value in scores.items():
        if not math.isfinite(value.value):
            raise ValueError(f"{name} came out as {value.value}: too few images for it? (n={len(fake)})")
    return scores


def default_extractors(clip_model: str, wanted: tuple[str, ...]) -> Extractors:
    """Real extractors: Inception through torch-fidelity when it imports, CLIP from the Hugging Face cache
    or hub. Raises MetricsUnavailable with what to do when nothing can be loaded."""
    extractors = Extractors()
    if {"fid", "kid", "is", "clip"} & set(wanted):
        try:
            extractors.clip = load_clip(clip_model)
        except MetricsUnavailable as e:
            extractors.missing["clip"] = str(e)
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3  # needs torch-fidelity (and torchvision)

        extractors.features = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        extractors.feature_name = "Inception-v3"
        extractors.classifier = NoTrainInceptionV3(name="inception-v3-compat", features_list=["logits_unbiased"])
    except Exception as e:  # ImportError, or the weights cannot be fetched offline
        reason = ("Inception-v3 features need torch-fidelity and a torchvision that matches torch, which are not "
                  "installed" if isinstance(e, ImportError) else
                  f"Inception-v3 could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
        extractors.missing["is"] = reason + "; the Inception Score has no other classifier to use"
        if extractors.clip is not None:
            model, processor = extractors.clip()
            extractors.features = ClipImageFeatures(model, processor)
            extractors.feature_name = "CLIP"
    for name in ("fid", "kid"):
        if extractors.features is None:
            extractors.missing[name] = "no feature extractor: neither Inception-v3 nor CLIP could be loaded"
    return extractors


def load_clip(name_or_path: str) -> Callable:
    """A callable returning (CLIP model, processor) for torchmetrics, loaded once."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name_or_path).eval()
        processor = CLIPProcessor.from_pretrained(name_or_path)
    except OSError as e:
        raise MetricsUnavailable(
            f"CLIP model '{name_or_path}' is not in the Hugging Face cache and could not be downloaded "
            f"({str(e).splitlines()[0][:160]}); run once online, or pass --clip-model with a local folder") from e
    adapted = ClipAdapter(model)
    return lambda: (adapted, processor)
