"""The one error type for anything wrong with a base model (a separate module so every part of the package can
raise it without import cycles)."""


class ModelError(Exception):
    """A base model could not be found, recognised or loaded; the message names the source and what was expected."""
