"""One family of errors users can catch: every saelib failure is a `SaelibError` (a `ValueError`),
and each message names the fix."""

from __future__ import annotations


class SaelibError(ValueError):
    """Base of every error saelib raises on purpose."""


class BadArgument(SaelibError):
    """An argument is out of range or of the wrong kind (unknown model, layer, arch, empty corpus...)."""


class BadFile(SaelibError):
    """A file or folder saelib needs is missing, corrupt, partial or written with other settings."""


class TrainingDiverged(SaelibError):
    """Training produced NaN/inf; the last good checkpoint is kept."""
