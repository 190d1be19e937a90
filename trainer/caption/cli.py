"""`python -m trainer caption DIR --method basic|blip|wd14|florence2|joycaption|qwen-vl [...]`: the argument parser and the verb. Importing
this module is cheap (argparse only); the work is imported when the verb runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..worker import EXIT_BAD_INPUT
from .errors import CaptionError
from .options import METHODS, NAME_SOURCES, PRECISIONS, QUANTIZE, CaptionOptions
from .prompts import LENGTHS, STYLES, TEMPLATES


def add_caption_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `caption` verb. Every option defaults to "not given" (SUPPRESS), so values from a job file
    (--job) are replaced only by flags actually typed; the real defaults live in CaptionOptions."""
    parser = subparsers.add_parser(
        "caption", help="write caption files for a dataset (basic, BLIP, WD14 tags, Florence-2, JoyCaption, "
                                "Qwen-VL) or report its tags",
        description="Caption the images of a dataset folder. Images are never modified; existing captions are "
                    "kept unless --overwrite or --append says otherwise.", argument_default=argparse.SUPPRESS)
    parser.add_argument("dir", nargs="?", help="dataset folder (searched recursively)")
    parser.add_argument("--method", choices=METHODS)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--skip-existing", dest="mode", action="store_const", const="skip-existing",
                       help="keep existing captions (the default)")
    modes.add_argument("--overwrite", dest="mode", action="store_const", const="overwrite",
                       help="replace existing captions")
    modes.add_argument("--append", dest="mode", action="store_const", const="append",
                       help="add the new caption after an existing one (tags it already has are left out)")
    parser.add_argument("--extension", help="caption file extension (default .txt)")
    parser.add_argument("--only", metavar="IMAGE", help="caption just this image (its path relative to DIR)")

    edits = parser.add_argument_group("edits (applied to every caption written; kept ones with --edit-kept)")
    edits.add_argument("--prefix", help="put TEXT first, unless the caption already starts with it")
    edits.add_argument("--suffix", help="put TEXT last, unless the caption already ends with it")
    edits.add_argument("--find", help="text to replace (exact, case-sensitive)")
    edits.add_argument("--replace", help="what --find becomes (default: nothing, i.e. delete it)")
    edits.add_argument("--clean", action="store_true", help="trim tags, drop empty and repeated tags")
    edits.add_argument("--replace-underscores", action="store_true",
                       help='"long_hair" -> "long hair" (short emoticons like "^_^" are kept)')
    edits.add_argument("--edit-kept", action="store_true",
                       help="also apply the edits to captions that skip-existing keeps (by default a kept caption "
                            "is left exactly as it is, unless the run only edits)")
    edits.add_argument("--trigger", help="the trigger word: put first (joined with \", \"), unless the caption "
                                         "already holds it, or in place of a --trigger-replaces phrase")
    edits.add_argument("--trigger-replaces", help='comma-separated phrases ("a woman, the woman"): the trigger word '
                                                  'replaces the first mention; none found: trigger first')
    edits.add_argument("--drop", help='comma-separated phrases removed from every caption ("a photo of, The image '
                                      'shows"); any letter case')

    basic = parser.add_argument_group("basic")
    basic.add_argument("--text", help="this caption for every image")
    basic.add_argument("--from-name", choices=NAME_SOURCES,
                       help='caption from the file name ("red_car_01.png" -> "red car") or the folder name '
                            '("10_sks dog" -> "sks dog")')

    models = parser.add_argument_group("blip, wd14, florence2, joycaption and qwen-vl")
    models.add_argument("--model", help="hub id or local folder (default per method: see docs/captioning.md)")
    models.add_argument("--batch-size", type=int, help="images per batch (default 4)")

    blip = parser.add_argument_group("blip")
    blip.add_argument("--beams", type=int, help="beam search width (default 3)")
    blip.add_argument("--min-length", type=int, help="minimum caption length in tokens (default 5)")
    blip.add_argument("--max-length", type=int, help="maximum caption length in tokens (default 75)")

    wd14 = parser.add_argument_group("wd14")
    wd14.add_argument("--general-threshold", type=float, help="confidence for general tags (default 0.35)")
    wd14.add_argument("--character-threshold", type=float, help="confidence for character tags (default 0.85)")
    wd14.add_argument("--exclude-tags", help="comma-separated tags never written")
    wd14.add_argument("--rating", action="store_true", help="put the most likely rating tag first")

    vlm = parser.add_argument_group("florence2, joycaption and qwen-vl")
    vlm.add_argument("--length", choices=LENGTHS, help="how much to say (default medium; Florence-2: <CAPTION>, "
                                                      "<DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>)")
    vlm.add_argument("--max-tokens", type=int, help="new tokens at most (default 0: 48, 160 or 320 by length)")
    vlm.add_argument("--precision", choices=PRECISIONS,
                     help="auto (default): bf16 on a GPU that has it, else fp16; fp32 on the CPU")
    vlm.add_argument("--quantize", choices=QUANTIZE, help="load the model in 8 or 4 bits (bitsandbytes, CUDA only) "
                                                         "to fit a large one in less memory (default none)")

    chat = parser.add_argument_group("joycaption and qwen-vl")
    chat.add_argument("--style", choices=STYLES, help="natural language (default), booru tags, or both")
    chat.add_argument("--template", choices=tuple(TEMPLATES),
                      help="what to focus on (default describe: everything); e.g. outfit-not-face, "
                           "style-not-subject")
    chat.add_argument("--prompt", help="your own instruction, used as written instead of length/style/template")

    parser.add_argument("--report", action="store_true",
                        help="print how many images carry each tag (after captioning, when --method is given)")
    parser.add_argument("--job", type=Path, help='a caption job file (task = "caption" and a [caption] table)')
    parser.add_argument("--job-dir", type=Path, help="job folder for status.json/events.jsonl (used by the UI)")
    return parser


def options_from_args(args: argparse.Namespace) -> CaptionOptions:
    """The job file's [caption] values (with --job), replaced by the flags given, on top of the defaults."""
    from .job import read_caption_job
    from .options import options_from_mapping

    given = {name: value for name, value in vars(args).items() if name not in ("job", "job_dir", "verb")}
    values = read_caption_job(args.job) if getattr(args, "job", None) else {}
    return options_from_mapping({**values, **given}, "command line")


def cmd_caption(args: argparse.Namespace) -> int:
    from .job import run_caption_job

    try:
        options = options_from_args(args)
    except CaptionError as error:
        print(f"kiln: error: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    return run_caption_job(options, getattr(args, "job_dir", None))
