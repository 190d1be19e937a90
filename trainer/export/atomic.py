"""Kept as the export package's name for the project-wide helper in trainer/atomic.py."""
from ..atomic import write_atomically

__all__ = ["write_atomically"]
