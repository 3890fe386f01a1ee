"""One project error type, subclassed by kind, for everything a user can get wrong.

:func:`cmikit.harness.cli.dispatch` (and :func:`cmikit.harness.cli.run_cli` for single-command scripts) print a
:class:`CmikitError` as one line, ``error: <message>``, and exit with code 2; anything else is a bug and keeps
its traceback. A message names the key, value or file (with the line number for data files) and says what is
allowed or what to do.
"""

from __future__ import annotations

from pathlib import Path


class CmikitError(Exception):
    """Base class of every error a user can cause and fix."""


class ConfigError(CmikitError, ValueError):
    """A configuration problem: names the key, the value and what is allowed."""


class ModelRefError(CmikitError):
    """A model reference that cannot be resolved or loaded (missing folder, remote code not allowed...)."""


class DataFileError(CmikitError, ValueError):
    """A data file that is missing, empty, not decodable or malformed; names the file and the line."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = None if path is None else Path(path)
        self.line = line


class ThresholdsError(CmikitError, ValueError):
    """A conformal thresholds file that does not fit the run (length, predictor, model, label set)."""


class RunConflictError(CmikitError):
    """An output folder made with other settings, or in use by another run."""
