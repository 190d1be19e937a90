"""One table from config keys and CLI flags to the labels the page shows, so a message shown in the UI names a
field the way the person sees it ("Smallest bucket side", not `dataset.min_bucket_reso`; "Model (hub id or
local folder)", not `--model`). The CLI keeps its key names: only the UI passes its messages through here.
The keys come from the schema and the caption options, so a new field is covered with no change here."""
from __future__ import annotations

import re
from functools import lru_cache

from trainer.config.schema import FIELDS


@lru_cache(maxsize=1)
def _table() -> dict[str, str]:
    from .caption_panel import caption_fields  # the caption panel's labels, by the option's CLI flag

    table = {f.name: f.label for f in FIELDS}
    table.update({f"--{f.name.replace('_', '-')}": f.label for f in caption_fields()})
    return table


@lru_cache(maxsize=1)
def _pattern() -> re.Pattern:
    # Longest first, so `dataset.min_bucket_reso` is not read as a shorter key; a key inside a longer word or
    # path (`foo.dataset.dir`, `dataset.dir_x`) is left alone.
    names = sorted(_table(), key=len, reverse=True)
    return re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(n) for n in names) + r")(?![\w\-])")


def label_of(key: str) -> str | None:
    """The UI label of a config key (`section.key`) or caption flag (`--model`), or None."""
    return _table().get(key)


def in_ui_words(text: str) -> str:
    """`text` with every config key and caption flag it names replaced by its label, in quotes."""
    if not text:
        return text
    return _pattern().sub(lambda m: f"“{_table()[m.group(1)]}”", text)
