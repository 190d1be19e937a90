"""The one error type of the dataset pipeline."""
from __future__ import annotations


class DatasetError(Exception):
    """A dataset problem the user must fix; the message names the folder or file and what to do."""
