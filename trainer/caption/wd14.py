"""WD14 tagging through onnxruntime: SmilingWolf's wd-v1-4 / wd-*-tagger-v3 models (a hub repo, or a local
folder holding model.onnx and selected_tags.csv).

What the models expect (as the WD14 tagger projects and Kohya's tag_images_by_wd14_tagger.py feed them): the
image padded to a square on white (centred), resized to the model's input side (448 for the published models),
channels in BGR order, float32 values 0..255 without normalisation, laid out NHWC. The output is one
probability per row of selected_tags.csv (already through a sigmoid). The CSV's category column says what a row
is: 9 rating, 0 general, 4 character.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.captions import split_tags
from .errors import CaptionError
from .text import underscores_to_spaces

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
DEFAULT_INPUT_SIZE = 448
RATING, GENERAL, CHARACTER = 9, 0, 4
_CSV_COLUMNS = ("tag_id", "name", "category", "count")
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class TagTable:
    """The rows of selected_tags.csv, in the order of the model's outputs."""
    names: list[str]
    categories: list[int]


def read_tag_table(path: Path) -> TagTable:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as error:
        raise CaptionError(f"cannot read the WD14 tag list {path}: {error.strerror or error}") from None
    if not rows or tuple(column.strip() for column in rows[0][:4]) != _CSV_COLUMNS:
        raise CaptionError(f"{path} is not a WD14 tag list: its first line should be {','.join(_CSV_COLUMNS)}")
    names, categories = [], []
    for line, row in enumerate(rows[1:], start=2):
        try:
            names.append(row[1])
            categories.append(int(row[2]))
        except (IndexError, ValueError):
            raise CaptionError(f"{path} line {line}: expected tag_id,name,category,count, got {row!r}") from None
    return TagTable(names, categories)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """An RGB image as the tagger's input: (size, size, 3) float32 BGR, 0..255, padded on white."""
    side = max(image.size)
    square = Image.new("RGB", (side, side), _WHITE)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    # Box filtering averages like OpenCV's INTER_AREA when shrinking; Lanczos when enlarging.
    resample = Image.Resampling.BOX if side > size else Image.Resampling.LANCZOS
    pixels = np.asarray(square.resize((size, size), resample), dtype=np.float32)
    return np.ascontiguousarray(pixels[:, :, ::-1])


def select_tags(probabilities: Sequence[float], table: TagTable, general_threshold: float,
                character_threshold: float, exclude: set[str], rating: bool) -> list[str]:
    """Character and general tags at or above their thresholds, most confident first, excluded tags left out;
    with `rating`, the most likely rating tag goes first."""
    chosen: list[tuple[float, str]] = []
    ratings: list[tuple[float, str]] = []
    for name, category, probability in zip(table.names, table.categories, probabilities):
        if _normalised(name) in exclude:
            continue
        if category == RATING:
            ratings.append((float(probability), name))
        elif (category == GENERAL and probability >= general_threshold) or \
                (category == CHARACTER and probability >= character_threshold):
            chosen.append((float(probability), name))
    tags = [name for _, name in sorted(chosen, key=lambda pair: -pair[0])]
    if rating and ratings:
        tags.insert(0, max(ratings)[1])
    return tags


class Wd14Tagger:
    needs_images = True

    def __init__(self, model: str, batch_size: int, general_threshold: float, character_threshold: float,
                 exclude_tags: str, rating: bool):
        import onnxruntime

        model_path, tags_path = resolve_model_files(model)
        self.table = read_tag_table(tags_path)
        available = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = onnxruntime.InferenceSession(str(model_path), providers=providers)
        except Exception as error:  # onnxruntime raises its own error types for a bad file
            raise CaptionError(f"cannot load the WD14 model {model_path}: {error}") from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        batch, height, width, channels = model_input.shape
        if channels != 3 or height != width:
            raise CaptionError(f"{model_path}: expected an NHWC input with 3 channels and a square image, "
                               f"found shape {model_input.shape}")
        self.input_size = height if isinstance(height, int) else DEFAULT_INPUT_SIZE
        # Some exported taggers have a fixed batch dimension: they are fed exactly that many images.
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.batch_size = self.fixed_batch or batch_size
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.table.names):
            raise CaptionError(f"{model_path} gives {outputs} scores but {tags_path} lists "
                               f"{len(self.table.names)} tags: they do not belong together")
        self.thresholds = (general_threshold, character_threshold)
        self.exclude = {_normalised(tag) for tag in split_tags(exclude_tags)}
        self.rating = rating

    def caption_batch(self, paths: Sequence[Path], images: Sequence[Image.Image]) -> list[str]:
        batch = np.stack([preprocess(image, self.input_size) for image in images])
        if self.fixed_batch and len(batch) < self.fixed_batch:  # the last, short batch: pad with copies
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.fixed_batch - len(batch), axis=0)])
        probabilities = self.session.run(None, {self.input_name: batch})[0][:len(images)]
        return [", ".join(select_tags(row, self.table, *self.thresholds, self.exclude, self.rating))
                for row in probabilities]


def resolve_model_files(model: str) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) from a local folder, or downloaded from a hub repo (then cached)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        files = folder / MODEL_FILE, folder / TAGS_FILE
        missing = [path.name for path in files if not path.is_file()]
        if missing:
            raise CaptionError(f"WD14 model folder {folder} lacks {' and '.join(missing)}")
        return files
    if folder.exists() or model.count("/") != 1:
        raise CaptionError(f"--model {model!r} is neither a folder holding {MODEL_FILE} and {TAGS_FILE} nor a "
                           "hub repo id like SmilingWolf/wd-v1-4-convnext-tagger-v2")
    from huggingface_hub import hf_hub_download

    try:
        return (Path(hf_hub_download(model, MODEL_FILE)), Path(hf_hub_download(model, TAGS_FILE)))
    except (OSError, ValueError) as error:
        raise CaptionError(f"could not get the WD14 model {model!r} from the hub (offline, or no such repo?): "
                           f"{error}. Download {MODEL_FILE} and {TAGS_FILE} into a folder and pass "
                           "--model FOLDER") from None


def _normalised(tag: str) -> str:
    """Tags compare alike whether written with underscores or spaces, in any letter case."""
    return underscores_to_spaces(tag.strip()).lower()
