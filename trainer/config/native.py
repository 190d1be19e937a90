"""Sizes left at 0 in a job mean "what suits the model": filled in once the model's family is known, when the
job is also checked against that family (options that do not apply to it are refused; `trainer check` and
`trainer run` both come through here, so they refuse the same things)."""
from __future__ import annotations

from ..families import FAMILIES
from ..families.sizes import native_dataset_sizes
from .checks import family_problems, job_problems
from .errors import ConfigError

NATIVE_RESOLUTION = {f.id: f.native_resolution for f in FAMILIES.values()}


def apply_native_sizes(cfg, arch: str | None) -> None:
    """Resolve the dataset sizes left at 0 for family `arch` (None: unknown), in place, and re-check the job with
    the real numbers and against the family."""
    cfg.dataset = native_dataset_sizes(cfg.dataset, NATIVE_RESOLUTION.get(arch or ""))
    problems = job_problems(cfg, complete=False)
    if arch in FAMILIES and cfg.model.arch not in FAMILIES:  # a named family: job_problems asked already
        problems += family_problems(cfg, FAMILIES[arch])
    if problems:
        raise ConfigError(problems)
