"""Errors of the job layer; every message says what is wrong and with which job or file."""


class JobError(Exception):
    """A job request that cannot be done."""


class UnknownJobError(JobError):
    """No job with that id in the jobs folder."""


class JobFileError(JobError):
    """A job TOML that cannot be read, or that asks for something the launcher cannot do."""


class LinkedJobError(JobError):
    """A job folder that is a symbolic link: listed as damaged, never acted on."""
