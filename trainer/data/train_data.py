"""The training data of one run: epochs of bucketed batches, reproducible to the sample.

An epoch is planned before any image is read: every image appears `repeats` times, samples are grouped by
bucket (a batch must be one size), each bucket is shuffled and cut into batches (the last one may be short),
and the batches are shuffled. With dataset.full_batches, images of buckets holding fewer samples than a batch
move to the nearest bucket that holds enough (buckets.fuller_buckets), and each bucket's short last batch is
topped up with other samples of that bucket, drawn by the epoch's generator: every batch is full, and the
number of batches is still ceil(samples / batch_size) per bucket. With DreamBooth class images, an epoch pairs
subject and class samples one to one: both are cycled up to the larger of (subject images x repeats) and (class
images), the same multiset every epoch, and within each bucket they alternate so a batch holds both kinds.
Regularisation images (LoRA) pair the way Kohya's reg_data_dir does: the epoch is the subject samples, and as
many reg samples (cycled, or a seeded subset fixed for the run). All randomness comes from string-seeded
generators named by (seed, epoch) for the plan and (seed, epoch, batch, slot) for a sample's flip, crop and
caption, so batch k of epoch e is the same whether the run started at 0 or resumed at k, and the number of
batches is known in advance.

Words: a "batch index" numbers micro-batches (the loop's global index, or a batch's place in its epoch);
a "step" is always an optimizer step (plan.py), which may consume several batches.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .buckets import (LATENT_FACTOR, Size, bucket_for_image, centre_crop_top_left, fuller_buckets, make_buckets,
                      resize_and_crop)
from .captions import has_wildcard, process_caption
from .errors import DatasetError
from .images import load_image_rgb, load_mask
from ..hashing import file_sha256
from .scan import DatasetIndex, ImageItem, epoch_repeats

if TYPE_CHECKING:  # torch is imported where batches are made: `trainer check` plans with this class, torch-free
    import torch

    from .latent_cache import LatentCache

ProgressFn = Callable[[int, int], None]


@dataclass
class Batch:
    """One micro-batch's samples, all the same size. pixels is None when latents come from the cache.
    Sizes are (height, width); crop_top_lefts are (top, left) in the resized image (SDXL conditioning)."""
    pixels: torch.Tensor | None
    latents: torch.Tensor | None
    captions: list[str]
    original_sizes: list[tuple[int, int]]
    crop_top_lefts: list[tuple[int, int]]
    target_sizes: list[tuple[int, int]]
    is_class: list[bool]
    paths: list[Path]
    flipped: list[bool]
    loss_weights: list[float]  # each sample's concept loss_weight
    # With dataset.masked_training: the loss weight of each latent pixel [B, 1, H/8, W/8] (1 inside the mask,
    # dataset.unmasked_weight outside), following the sample's crop, flip and resize; else None.
    pixel_weights: torch.Tensor | None = None


@dataclass(frozen=True)
class _SampleChoices:
    """The random decisions for one sample."""
    flip: bool
    crop_position: tuple[float, float] | None
    caption: str


class TrainData:
    """Batches for every epoch of a run over a scanned dataset (see module doc)."""

    def __init__(self, index: DatasetIndex, dataset_cfg: Any, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise DatasetError(f"training.batch_size = {batch_size} must be at least 1")
        self.index = index
        self.dataset_cfg = dataset_cfg
        self.batch_size = batch_size
        self.seed = seed
        possible_buckets = make_buckets(dataset_cfg.resolution, dataset_cfg.min_bucket_reso,
                                        dataset_cfg.max_bucket_reso, dataset_cfg.bucket_reso_steps) \
            if dataset_cfg.enable_bucket else []
        # Each item's training size: the one bucket the latent cache, crops and SDXL size conditioning use.
        self.item_buckets: list[Size] = [bucket_for_image(item.width, item.height, dataset_cfg, possible_buckets)
                                         for item in index.items]
        # Item numbers of one epoch's samples, with multiplicity; the same every epoch.
        self.epoch_samples: list[int] = _epoch_samples(index.items, seed, index.reg_pairs_with_subjects)
        samples: Counter[Size] = Counter(self.item_buckets[item_number] for item_number in self.epoch_samples)
        self.full_batches = bool(dataset_cfg.full_batches)
        # (item number, bucket it had) of each image that dataset.full_batches moved to a fuller bucket.
        self.moved: list[tuple[int, Size]] = []
        if self.full_batches:
            self.moved = self._move_out_of_small_buckets(samples)
            samples = Counter(self.item_buckets[item_number] for item_number in self.epoch_samples)
        # (width, height) -> samples per epoch (images x repeats, and class samples) in that bucket.
        self.buckets: dict[Size, int] = dict(sorted(samples.items()))
        self._latent_cache: LatentCache | None = None
        self._latent_keys: dict[tuple[int, bool], str] = {}
        self._plan_cache: tuple[int, list[list[int]]] | None = None
        # With cached latents a sample's crop is fixed, so its pixel weights are too: kept by (item, flip).
        self._fixed_pixel_weights: dict[tuple[int, bool], torch.Tensor] = {}

    @property
    def batches_per_epoch(self) -> int:
        """Batches one epoch yields: per bucket, its samples cut into batches, the last partial one kept (or
        topped up to full with dataset.full_batches, which adds samples but no batch)."""
        return sum(math.ceil(count / self.batch_size) for count in self.buckets.values())

    def fill_count(self, bucket: Size) -> int:
        """Samples dataset.full_batches adds to the bucket's last batch each epoch (0 when it is off)."""
        return -self.buckets[bucket] % self.batch_size if self.full_batches else 0

    @property
    def captions_vary(self) -> bool:
        """True when a caption can differ from one sample to the next (shuffle, dropout, tag dropout,
        wildcards): a cache of text-encoder outputs by caption would then grow without bound."""
        cfg = self.dataset_cfg
        return bool(cfg.caption_dropout_rate or cfg.caption_tag_dropout_rate
                    or any(self._setting(item, "shuffle_caption") for item in self.index.items)
                    or (cfg.wildcards and any(has_wildcard(item.caption) for item in self.index.items)))

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, from batch number `start` on (to resume mid-epoch)."""
        plan = self._epoch_plan(epoch)
        if not 0 <= start <= len(plan):
            raise DatasetError(f"cannot start epoch {epoch} at batch {start}: it has {len(plan)} batches")
        for batch_number in range(start, len(plan)):
            yield self._make_batch(epoch, batch_number, plan[batch_number])

    def epoch_captions(self, epoch: int) -> list[str]:
        """The caption of every sample of `epoch` as its batch will hold it, without reading an image. When
        captions do not vary (captions_vary), epoch 0's are every caption the run can see: what a text-encoder
        output cache can encode before training."""
        return [choice.caption for batch_number, item_numbers in enumerate(self._epoch_plan(epoch))
                for choice in self._batch_choices(epoch, batch_number, item_numbers)]

    def batch_at(self, index: int) -> Batch:
        """Batch number `index` of the endless stream epoch 0, epoch 1, ... (the loop's view of the data)."""
        epoch, batch_number = divmod(index, self.batches_per_epoch)
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            self._plan_cache = (epoch, self._epoch_plan(epoch))
        return self._make_batch(epoch, batch_number, self._plan_cache[1][batch_number])

    def attach_latent_cache(self, cache: LatentCache, progress: ProgressFn | None = None) -> None:
        """Encode (or find cached) the latent of every crop the epochs can use, then serve latents instead of
        pixels. progress(done, total) is called as crops are found or encoded."""
        import torch
        if any(self._setting(item, "random_crop") for item in self.index.items):
            raise DatasetError("dataset.random_crop = true (or a concept's random_crop) cannot be combined with "
                               "training.cache_latents = true: a cached latent holds one fixed crop; turn one "
                               "of them off")
        variants = {number: (False, True) if self._setting(item, "flip") else (False,)
                    for number, item in enumerate(self.index.items)}
        total = sum(len(flips) for flips in variants.values())
        keys: dict[tuple[int, bool], str] = {}
        missing: dict[Size, list[tuple[int, bool]]] = {}
        for item_number, item in enumerate(self.index.items):
            content = _file_sha256_or_error(item.path)
            bucket = self.item_buckets[item_number]
            crop = centre_crop_top_left(item.width, item.height, bucket)
            for flipped in variants[item_number]:
                keys[(item_number, flipped)] = cache.key(content, bucket, crop, flipped)
                if cache.get(keys[(item_number, flipped)]) is None:
                    missing.setdefault(bucket, []).append((item_number, flipped))
        done = total - sum(len(entries) for entries in missing.values())
        if progress is not None:
            progress(done, total)
        for entries in missing.values():
            for first in range(0, len(entries), self.batch_size):
                chunk = entries[first:first + self.batch_size]
                pixels = torch.stack([self._load_sample(item_number, flipped, None)[0]
                                      for item_number, flipped in chunk])
                cache.encode([keys[entry] for entry in chunk], pixels)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        self._latent_cache, self._latent_keys = cache, keys

    def summary(self) -> dict[str, Any]:
        """Plain data for `trainer check` and the UI: counts, subsets, buckets, batches, skipped files."""
        subsets: dict[str, dict[str, int]] = {}
        for item in self.index.instance_items:
            entry = subsets.setdefault(item.subset, {"images": 0, "repeats": item.repeats})
            entry["images"] += 1
        filled = sum(map(self.fill_count, self.buckets))
        return {
            "folder": str(self.index.root),
            "images": self.index.num_images,
            "repeated_images": self.index.num_repeated,
            "class_images": self.index.num_class_images,
            "class_samples_per_epoch": sum(self.index.items[n].is_class for n in self.epoch_samples),
            "subsets": subsets,
            "buckets": [{"width": width, "height": height, "samples": count,
                         "batches": math.ceil(count / self.batch_size), "filled": self.fill_count((width, height))}
                        for (width, height), count in self.buckets.items()],
            "batch_size": self.batch_size,
            "batches_per_epoch": self.batches_per_epoch,
            "full_batches": self.full_batches,
            # dataset.full_batches: samples added per epoch to top up last batches, and the images moved.
            "filled_samples": filled,
            "moved": [{"path": str(self.index.items[item_number].path), "from": list(old),
                       "to": list(self.item_buckets[item_number])} for item_number, old in self.moved],
            "samples_per_epoch": len(self.epoch_samples) + filled,
            "skipped": [{"path": str(path), "reason": reason} for path, reason in self.index.skipped],
            "warnings": list(self.index.warnings),
        }

    def _epoch_plan(self, epoch: int) -> list[list[int]]:
        """Item numbers of each batch of the epoch, in training order."""
        rng = random.Random(f"kiln-epoch/{self.seed}/{epoch}")
        by_bucket: dict[Size, tuple[list[int], list[int]]] = {}
        for item_number in self.epoch_samples:
            instances, classes = by_bucket.setdefault(self.item_buckets[item_number], ([], []))
            (classes if self.index.items[item_number].is_class else instances).append(item_number)
        batches: list[list[int]] = []
        for bucket in sorted(by_bucket):
            instances, classes = by_bucket[bucket]
            rng.shuffle(instances)
            rng.shuffle(classes)
            samples = _interleave(instances, classes)
            cut = [samples[first:first + self.batch_size] for first in range(0, len(samples), self.batch_size)]
            if self.fill_count(bucket):
                cut[-1] += _fillers(cut[-1], instances, classes, self.batch_size, rng)
            batches.extend(cut)
        rng.shuffle(batches)
        return batches

    def _move_out_of_small_buckets(self, samples: Counter[Size]) -> list[tuple[int, Size]]:
        """dataset.full_batches: move the images of buckets with fewer samples than a batch (buckets.
        fuller_buckets); items outside the epoch stay. Returns (item number, old bucket) of those moved."""
        in_epoch = set(self.epoch_samples)
        new = fuller_buckets([(item.width, item.height) for item in self.index.items], self.item_buckets,
                             samples, self.batch_size, bool(self.dataset_cfg.bucket_no_upscale))
        moved = [(number, old) for number, (old, bucket) in enumerate(zip(self.item_buckets, new))
                 if old != bucket and number in in_epoch]
        for number, _ in moved:
            self.item_buckets[number] = new[number]
        return moved

    def _setting(self, item: ImageItem, name: str) -> bool:
        """flip / random_crop / shuffle_caption of an item: its concept's, else the [dataset] one."""
        own = getattr(item, name)
        return bool(getattr(self.dataset_cfg, name) if own is None else own)

    def _sample_choices(self, epoch: int, batch_number: int, slot: int, item: ImageItem) -> _SampleChoices:
        cfg = self.dataset_cfg
        rng = random.Random(f"kiln-sample/{self.seed}/{epoch}/{batch_number}/{slot}")
        # Draw every value whether or not its setting is on, so toggling one setting leaves the others' draws.
        flip = rng.random() < 0.5 and self._setting(item, "flip")
        crop_position = (rng.random(), rng.random())
        caption = process_caption(
            item.caption, self._setting(item, "shuffle_caption"), cfg.keep_tokens, cfg.caption_dropout_rate, rng,
            tag_dropout_rate=cfg.caption_tag_dropout_rate, keep_tokens_separator=cfg.keep_tokens_separator,
            wildcards=cfg.wildcards)
        return _SampleChoices(flip, crop_position if self._setting(item, "random_crop") else None, caption)

    def _batch_choices(self, epoch: int, batch_number: int, item_numbers: list[int]) -> list[_SampleChoices]:
        return [self._sample_choices(epoch, batch_number, slot, self.index.items[item_number])
                for slot, item_number in enumerate(item_numbers)]

    def _make_batch(self, epoch: int, batch_number: int, item_numbers: list[int]) -> Batch:
        import torch
        choices = self._batch_choices(epoch, batch_number, item_numbers)
        items = [self.index.items[item_number] for item_number in item_numbers]
        buckets = [self.item_buckets[item_number] for item_number in item_numbers]
        pixels = latents = None
        if self._latent_cache is not None:
            latents = torch.stack([self._cached_latent(item_number, choice.flip)
                                   for item_number, choice in zip(item_numbers, choices)])
            original_sizes = [(item.height, item.width) for item in items]
            crops = [centre_crop_top_left(item.width, item.height, bucket, choice.flip)
                     for item, bucket, choice in zip(items, buckets, choices)]
        else:
            loaded = [self._load_sample(item_number, choice.flip, choice.crop_position)
                      for item_number, choice in zip(item_numbers, choices)]
            pixels = torch.stack([tensor for tensor, _, _ in loaded])
            original_sizes = [original for _, original, _ in loaded]
            crops = [crop for _, _, crop in loaded]
        return Batch(
            pixels=pixels,
            latents=latents,
            captions=[choice.caption for choice in choices],
            original_sizes=original_sizes,
            crop_top_lefts=crops,
            target_sizes=[(height, width) for width, height in buckets],
            is_class=[item.is_class for item in items],
            paths=[item.path for item in items],
            flipped=[choice.flip for choice in choices],
            loss_weights=[item.loss_weight for item in items],
            pixel_weights=torch.stack([self._pixel_weights(item_number, choice)
                                       for item_number, choice in zip(item_numbers, choices)])
            if self.dataset_cfg.masked_training else None,
        )

    def _pixel_weights(self, item_number: int, choice: _SampleChoices) -> torch.Tensor:
        """[1, H/8, W/8]: 1 inside the image's mask, dataset.unmasked_weight outside (between them on the
        mask's soft edges), cropped, flipped and resized exactly like the image; all 1 without a mask."""
        if self._latent_cache is None:
            return self._load_pixel_weights(item_number, choice)
        key = (item_number, choice.flip)
        if key not in self._fixed_pixel_weights:
            self._fixed_pixel_weights[key] = self._load_pixel_weights(item_number, choice)
        return self._fixed_pixel_weights[key]

    def _load_pixel_weights(self, item_number: int, choice: _SampleChoices) -> torch.Tensor:
        import torch
        item, bucket = self.index.items[item_number], self.item_buckets[item_number]
        latent_size = (bucket[1] // LATENT_FACTOR, bucket[0] // LATENT_FACTOR)
        try:
            mask = load_mask(item.path, item.mask_file)
        except Exception as error:  # the file changed or vanished since the scan
            raise DatasetError(f"cannot read the mask of {item.path} ({item.mask_file or 'its alpha channel'}): "
                               f"{error}") from error
        if mask is None:
            return torch.ones((1, *latent_size))
        # The crop a cached latent holds is the centre one, as for its pixels.
        position = None if self._latent_cache is not None else choice.crop_position
        cropped, _ = resize_and_crop(mask, bucket, position, choice.flip)
        # Averaged over each 8x8 block (one latent pixel): the share of its area that is masked.
        covered = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0)
        covered = covered.reshape(latent_size[0], LATENT_FACTOR, latent_size[1], LATENT_FACTOR).mean(dim=(1, 3))
        unmasked = float(self.dataset_cfg.unmasked_weight)
        return (unmasked + (1.0 - unmasked) * covered).unsqueeze(0)

    def _cached_latent(self, item_number: int, flipped: bool) -> torch.Tensor:
        assert self._latent_cache is not None
        latent = self._latent_cache.get(self._latent_keys[(item_number, flipped)])
        if latent is None:
            raise DatasetError(f"the latent of {self.index.items[item_number].path} is missing from the cache")
        return latent

    def _load_sample(self, item_number: int, flip: bool, crop_position: tuple[float, float] | None
                     ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(pixels [3, H, W] in [-1, 1], original (h, w), crop (top, left)) of one sample."""
        item = self.index.items[item_number]
        try:
            image = load_image_rgb(item.path)
        except Exception as error:  # the file changed or vanished since the scan
            raise DatasetError(f"cannot read {item.path} (it was readable when the dataset was scanned): "
                               f"{error}") from error
        crop, top_left = resize_and_crop(image, self.item_buckets[item_number], crop_position, flip)
        return _to_tensor(crop), (image.height, image.width), top_left


def _epoch_samples(items: list[ImageItem], seed: int, reg_pairs_with_subjects: bool) -> list[int]:
    """Item numbers of one epoch: each subject image `repeats` times (scan.epoch_repeats); with class images,
    subject and class samples are both cycled up to the larger count, or with regularisation images class
    samples are cycled or cut to the subject count (see module doc)."""
    instances = [number for number, (item, count) in enumerate(zip(items, epoch_repeats(items, seed)))
                 if not item.is_class for _ in range(count)]
    classes = [number for number, item in enumerate(items) if item.is_class]
    if not classes:
        return instances
    length = len(instances) if reg_pairs_with_subjects else max(len(instances), len(classes))
    return _cycle_to(instances, length, f"kiln-fill/{seed}/instance") + _cycle_to(classes, length,
                                                                                  f"kiln-fill/{seed}/class")


def _cycle_to(samples: list[int], length: int, rng_name: str) -> list[int]:
    """`samples` repeated to exactly `length`; the partial last round is a seeded choice fixed for the whole
    run, so every epoch has the same buckets (and the step count stays exact)."""
    if not samples:
        return []
    rounds, rest = divmod(length, len(samples))
    return samples * rounds + random.Random(rng_name).sample(samples, rest)


def _fillers(short: list[int], instances: list[int], classes: list[int], batch_size: int,
             rng: random.Random) -> list[int]:
    """Samples of the bucket (its `instances` and `classes`) that top its `short` last batch up to batch_size:
    class samples up to their share of the bucket, so subject and class images stay paired, subject samples
    for the rest. Images not in the batch are drawn first; an image repeats only when its kind has too few."""
    need = batch_size - len(short)
    class_share = len(classes) / (len(instances) + len(classes))
    class_items = set(classes)
    classes_in_batch = sum(number in class_items for number in short)
    want_classes = min(need, max(0, round(batch_size * class_share) - classes_in_batch))
    return (_draw(instances, need - want_classes, set(short), rng)
            + _draw(classes, want_classes, set(short), rng))


def _draw(pool: list[int], count: int, taken: set[int], rng: random.Random) -> list[int]:
    """`count` item numbers of `pool`: images not in `taken` first (a seeded choice), then seeded rounds over
    all of the pool's images when those run out."""
    images = sorted(set(pool))
    fresh = [number for number in images if number not in taken]
    drawn = rng.sample(fresh, min(count, len(fresh)))
    while images and len(drawn) < count:
        drawn += rng.sample(images, min(count - len(drawn), len(images)))
    return drawn


def _interleave(first: list[int], second: list[int]) -> list[int]:
    """Both lists merged so each is spread evenly over the result (a, b, a, b for equal lengths)."""
    positions = [((k + 0.5) / len(first), 0, value) for k, value in enumerate(first)]
    positions += [((k + 0.5) / len(second), 1, value) for k, value in enumerate(second)]
    return [value for _, _, value in sorted(positions)]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB image -> float tensor [3, H, W] in [-1, 1]."""
    import torch
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


def _file_sha256_or_error(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as error:
        raise DatasetError(f"cannot read {path} to cache its latent: {error.strerror or error}") from error
