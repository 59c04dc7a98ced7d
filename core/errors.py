"""Errors that reach the user.

Every error raised on purpose by raresynth is a :class:`RaresynthError`: its message
is one line that names what is wrong (a file, a config field, a plugin) and, where
there is one, the fix. The CLI prints the message alone, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RaresynthError(Exception):
    """Base class: a problem the user can fix; the message says which and how."""


class ConfigError(RaresynthError):
    """The run config is invalid. The message starts with the field path."""


class PluginError(RaresynthError):
    """A plugin is unknown, broken, or registers something invalid."""


class DataError(RaresynthError):
    """A data file or folder cannot be used. The message starts with the path."""


class TrainingError(RaresynthError):
    """Training cannot go on (for example a non-finite loss)."""


class RunDirError(RaresynthError):
    """The run directory is missing, incomplete, or would be overwritten."""


class LockError(RunDirError):
    """Another process writes this folder (a run directory, a benchmark's out_dir). The message names it."""


class FileWriteError(RaresynthError):
    """A file could not be written (a full disk, no permission); the previous version is left as it was."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
