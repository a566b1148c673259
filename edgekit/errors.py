"""One error tree. The CLI (and only the CLI) maps these to exit codes.

Every message states the value, what was expected, and a hint: one line that a
user can act on without a traceback.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Root of every error edgekit raises on purpose (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class ProfileError(EdgekitError):
    """A target profile is unknown, malformed, or inherits in a cycle."""


class ModelError(EdgekitError):
    """A model file is missing, unreadable, corrupt, or cannot be converted."""


class DataError(EdgekitError):
    """Calibration or evaluation data has the wrong shape, dtype or values."""


class StageError(EdgekitError):
    """A pipeline stage (quantize, convert, ...) failed on this model."""


class MeasurementError(EdgekitError):
    """A measurement (arena, accuracy) could not be taken."""


class TargetRefused(MeasurementError):
    """The firmware built for the target does not run the model: its TFLM (optimized kernels) refuses it."""


class GenerationError(EdgekitError):
    """Code or project generation failed (bad name, existing output, ...)."""


class DoesNotFit(EdgekitError):
    """The model does not fit the target (a budget, an operator or a data type): exit code 1, the same
    verdict `check` and `analyze` give, whichever command finds it."""

    exit_code = 1


class OutputExistsError(GenerationError):
    """An output path exists and --force was not given."""


class TransportError(EdgekitError):
    """A transport (serial, adb, qemu, pty) failed."""


class TransportTimeout(TransportError):
    """A transport read or write did not complete in time."""


class TransportClosed(TransportError):
    """The other side closed the transport."""
