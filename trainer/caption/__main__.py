"""`python -m trainer.caption DIR ...`: the caption verb on its own (the same as `python -m trainer caption`)."""
import argparse
import sys

from .cli import add_caption_parser, cmd_caption

_parser = argparse.ArgumentParser(prog="python -m trainer")
add_caption_parser(_parser.add_subparsers(dest="verb"))
sys.exit(cmd_caption(_parser.parse_args(["caption", *sys.argv[1:]])))
