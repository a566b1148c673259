"""Every tunable, declared once, with its default and help text.

Values can be overridden with environment variables named ``EDGEKIT_<NAME>``
(upper case), which keeps CI and build steps configurable without code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    name: str
    default: float
    help: str

    @property
    def value(self) -> float:
        raw = os.environ.get("EDGEKIT_" + self.name.upper())
        if raw is None:
            return self.default
        try:
            return type(self.default)(raw)
        except ValueError:
            from edgekit.errors import EdgekitError

            raise EdgekitError(
                f"invalid EDGEKIT_{self.name.upper()}={raw!r} (must be a number like {self.default})"
            ) from None


ARENA_MEASURE_TIMEOUT = Option(
    "arena_measure_timeout", 120.0, "seconds the child process measuring the TFLM arena may take"
)
ARENA_MAX_BYTES = Option(
    "arena_max_bytes", float(1 << 30), "largest trial arena when searching for one that allocates"
)
ARENA_MARGIN = Option(
    "arena_margin", 0.10,
    "fraction added to the measured arena for generated code (covers heap alignment and "
    "kernel scratch differences between host and target builds)",
)
SYNTHETIC_CALIB_SAMPLES = Option(
    "synthetic_calib_samples", 32, "samples drawn for synthetic calibration when no --calib data is given"
)
CALIB_MAX_SAMPLES = Option(
    "calib_max_samples", 200, "calibration samples used at most by the int8 converter"
)
CONVERT_TIMEOUT = Option(
    "convert_timeout", 900.0, "seconds an onnx2tf conversion child process may take"
)
SEED = Option("seed", 0, "random seed for synthetic data and every stochastic step")
MODEL_MAX_BYTES = Option(
    "model_max_bytes", float(2 << 30), "largest model file edgekit reads (bytes); a bigger one is refused"
)
FLASH_HOPELESS_FACTOR = Option(
    "flash_hopeless_factor", 10.0,
    "a model whose flash lower bound (parameters x smallest bytes per weight) exceeds the flash budget "
    "this many times is reported as not fitting before any conversion or TFLM run",
)
