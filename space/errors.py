"""The error a malformed or contradictory space file raises; the CLI prints it as one line."""

from ..errors import FastVitNasError


class SpaceError(FastVitNasError):
    """A space file that does not parse, names an unknown field, or leaves no valid network."""
