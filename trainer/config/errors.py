"""The one exception of the config package."""
from __future__ import annotations


class ConfigError(Exception):
    """A job file or override is wrong. Each entry of `problems` is one complete line that names where
    (file or override), the key as `section.key`, the bad value and what is allowed; all problems found in one
    pass are reported together."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
