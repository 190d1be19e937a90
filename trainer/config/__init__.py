"""Kiln's job configuration: the one schema of parameters, TOML load/validate/save and migration of older
and Kohya-style files. Must not import torch, diffusers or gradio: the UI imports it."""
from .checks import job_problems, job_warnings
from .errors import ConfigError
from .job import (SECTION_CLASSES, DatasetSection, DreamboothSection, JobConfig, LoraSection, ModelSection,
                  OutputSection, SampleSection, TextualInversionSection, TrainingSection)
from .load import load_job, parse_job
from .migrate import MIGRATIONS, MigrationStep
from .presets import list_presets, presets_dir
from .save import save_job
from .schema import (BOOL, CHOICE, CURRENT_VERSION, FIELD_TYPES, FIELDS, FLOAT, INT, METHODS, PATH,
                     SECTION_HELP, SECTIONS, STR, STR_LIST, Field, fields_for, find_field, section_fields,
                     section_methods)
from .values import allowed_text, format_value

__all__ = [
    "BOOL", "CHOICE", "CURRENT_VERSION", "FIELD_TYPES", "FIELDS", "FLOAT", "INT", "METHODS", "MIGRATIONS", "PATH",
    "SECTION_CLASSES", "SECTION_HELP", "SECTIONS", "STR", "STR_LIST", "ConfigError", "DatasetSection",
    "DreamboothSection", "Field", "JobConfig", "LoraSection", "MigrationStep", "ModelSection", "OutputSection",
    "SampleSection", "TextualInversionSection", "TrainingSection", "allowed_text", "fields_for", "find_field",
    "format_value", "job_problems", "job_warnings", "list_presets", "load_job", "parse_job", "presets_dir",
    "save_job", "section_fields", "section_methods",
]
