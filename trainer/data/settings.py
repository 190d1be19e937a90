"""[dataset] settings for scans that are not part of a job (the `caption` command, tests): the schema's own
[dataset] section, so every default is the schema's, with the sizes it leaves at 0 ("native") resolved as for
SD 1.x."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.job import DatasetSection
from ..families.sizes import native_dataset_sizes


def dataset_settings(dir: Path | str, **changes: Any) -> Any:
    """The schema's [dataset] section for folder `dir`, with `changes` (keys of [dataset]) applied."""
    return native_dataset_sizes(DatasetSection(dir=str(dir), **changes), None)
