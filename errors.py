"""The one exception type that the CLI turns into a single clear line.

Every module raises `FastVitNasError` (or a subclass) for bad user input, with a message that names the
offending field; anything else is a bug and keeps its traceback.
"""


class FastVitNasError(ValueError):
    """Bad user input: a malformed spec, space, LUT, data folder or config."""


class SpecError(FastVitNasError):
    """An `ArchSpec` that does not describe a valid FastViT network."""
