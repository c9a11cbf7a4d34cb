"""The one base class of every error this project raises on bad input or a bad file, so a caller
can catch them all (`except CompanionError`) and every message names the file, line or field and
what to do. Each error also keeps the built-in type it refines (ValueError, RuntimeError, ...)."""

from __future__ import annotations


class CompanionError(Exception):
    """Base of the project's errors: the message names what is wrong and the fix."""


class RunFileError(CompanionError, OSError):
    """A file of a run directory (checkpoint, record, table, capture) cannot be read as this project
    wrote it: corrupt, truncated, of another shape, or not made by this project. The message names
    the file and what to do (delete the run, or retrain)."""


class RunLockedError(CompanionError, RuntimeError):
    """Another process is training the same run; the message names its pid and the run."""
