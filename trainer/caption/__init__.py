"""Dataset captioning: basic (names, fixed text, edits), BLIP and WD14 tags, and the tag-frequency report.

Never imports gradio. Importing this package is cheap (no torch), so the CLI parser and the UI can use it; the
work lives in submodules imported when needed: runner.caption_dataset, methods.make_captioner, blip, wd14,
report.dataset_tag_frequency."""
from .cli import add_caption_parser, cmd_caption
from .errors import CaptionError
from .job import caption_job_toml, run_caption_job
from .options import DEFAULT_MODELS, METHODS, MODES, CaptionOptions

__all__ = [
    "DEFAULT_MODELS", "METHODS", "MODES", "CaptionError", "CaptionOptions", "add_caption_parser",
    "caption_job_toml", "cmd_caption", "run_caption_job",
]
