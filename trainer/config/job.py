"""JobConfig: a validated job, one plain dataclass per schema section (built from the schema, so every
section attribute and its default come from the one table)."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from .schema import CURRENT_VERSION, SECTIONS, section_fields
from .toml_text import job_to_toml


def _section_class(section: str) -> type:
    attributes = [(f.key, Any, dataclasses.field(default_factory=lambda d=f.default: copy.deepcopy(d)))
                  for f in section_fields(section)]
    class_name = "".join(part.title() for part in section.split("_")) + "Section"
    cls = make_dataclass(class_name, attributes)
    cls.__module__ = __name__
    cls.__doc__ = f"The [{section}] section of a job; attributes and defaults come from the schema."
    return cls


# Module-level names so the classes pickle (jobs cross process boundaries).
ModelSection = _section_class("model")
DatasetSection = _section_class("dataset")
TrainingSection = _section_class("training")
LoraSection = _section_class("lora")
DreamboothSection = _section_class("dreambooth")
TextualInversionSection = _section_class("textual_inversion")
OutputSection = _section_class("output")
SampleSection = _section_class("sample")
ValidationSection = _section_class("validation")
LoggingSection = _section_class("logging")

SECTION_CLASSES: dict[str, type] = {
    "model": ModelSection, "dataset": DatasetSection, "training": TrainingSection, "lora": LoraSection,
    "dreambooth": DreamboothSection, "textual_inversion": TextualInversionSection, "output": OutputSection,
    "sample": SampleSection, "validation": ValidationSection, "logging": LoggingSection,
}


@dataclass
class JobConfig:
    """A whole job. `source` is the job file's absolute path or "<memory>"; `warnings` are suspicious but
    allowed values; `migration_notes` say what was changed when an older or Kohya-style file was read."""
    method: str
    version: int = CURRENT_VERSION
    model: Any = field(default_factory=ModelSection)
    dataset: Any = field(default_factory=DatasetSection)
    training: Any = field(default_factory=TrainingSection)
    lora: Any = field(default_factory=LoraSection)
    dreambooth: Any = field(default_factory=DreamboothSection)
    textual_inversion: Any = field(default_factory=TextualInversionSection)
    output: Any = field(default_factory=OutputSection)
    sample: Any = field(default_factory=SampleSection)
    validation: Any = field(default_factory=ValidationSection)
    logging: Any = field(default_factory=LoggingSection)
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

