"""JobConfig: a validated job, one typed dataclass per schema section (sections.py, generated from the schema,
so every section attribute, its type and its default come from the one table)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .schema import CURRENT_VERSION, SECTIONS, section_fields
from .sections import (SECTION_CLASSES, DatasetSection, DreamboothSection, FinetuneSection,  # noqa: F401
                       LoggingSection, LoraSection, ModelSection, OutputSection, SampleSection, TextualInversionSection,
                       TrainingSection, ValidationSection)
from .toml_text import job_to_toml


@dataclass
class JobConfig:
    """A whole job. `source` is the job file's absolute path or "<memory>"; `warnings` are suspicious but
    allowed values; `migration_notes` say what was changed when an older or Kohya-style file was read."""
    method: str
    version: int = CURRENT_VERSION
    model: ModelSection = field(default_factory=ModelSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    lora: LoraSection = field(default_factory=LoraSection)
    dreambooth: DreamboothSection = field(default_factory=DreamboothSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    textual_inversion: TextualInversionSection = field(default_factory=TextualInversionSection)
    output: OutputSection = field(default_factory=OutputSection)
    sample: SampleSection = field(default_factory=SampleSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    source: str = "<memory>"
    warnings: list[str] = field(default_factory=list)
    migration_notes: list[str] = field(default_factory=list)

    def get(self, name: str) -> Any:
        """The value of `section.key` (or a top-level key)."""
        section, _, key = name.rpartition(".")
        return getattr(getattr(self, section) if section else self, key)

    def to_dict(self) -> dict[str, Any]:
        """Every schema value: top-level keys, then one dict per section, in schema order."""
        data: dict[str, Any] = {f.key: getattr(self, f.key) for f in section_fields("")}
        for section in SECTIONS[1:]:
            data[section] = {f.key: copy.deepcopy(getattr(getattr(self, section), f.key))
                             for f in section_fields(section)}
        return data

    def to_toml(self) -> str:
        """The job as a TOML document (see toml_text.job_to_toml)."""
        return job_to_toml(self.to_dict())

