"""The project's own error types: what a user can cause and fix, reported in one line.

`core.cli.entry` turns these into `error: <message>` and exit status 1; every other exception
(a real bug) keeps its traceback. Each subclasses the built-in type it refines, so callers
that catch FileNotFoundError or ValueError keep working.
"""


class SegDAError(Exception):
    """Base class: an error a user can act on (the message says what and where)."""


class DataError(SegDAError, ValueError):
    """A dataset file or folder that cannot be used: undecodable, wrong size, no valid pixel."""


class MissingDataError(SegDAError, FileNotFoundError):
    """A dataset root, split, image or label that is not where the layout says it should be."""


class CheckpointError(SegDAError, RuntimeError):
    """A checkpoint that cannot be read, or does not fit the run or the network."""


class PretrainedWeightsError(SegDAError, RuntimeError):
    """Backbone weights missing from the cache, unreadable, or not fitting the backbone."""


class NonFiniteLossError(SegDAError, RuntimeError):
    """The loss became NaN or infinite: the run stops without overwriting a good checkpoint."""


class RunFolderError(SegDAError, RuntimeError):
    """The run folder is in use by another run, or holds another run."""


class ConfigError(SegDAError, ValueError):
    """A combination of flags (or of flags and data) that cannot work."""
