"""The one error type of captioning."""
from __future__ import annotations


class CaptionError(Exception):
    """A problem the user must fix (a bad option, a model that cannot be loaded, a broken tag list); the message
    names the option, file or model and what was expected."""
