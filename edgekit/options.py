"""Every tunable, declared once, with its default and help text.

Values can be overridden with environment variables named ``EDGEKIT_<NAME>``
(upper case), which keeps CI and build steps configurable without code.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass

_REGISTRY: dict[str, Option] = {}


@dataclass(frozen=True)
class Option:
    name: str
    default: float
    help: str

    def __post_init__(self) -> None:
        _REGISTRY.setdefault(self.name, self)

    @property
    def env(self) -> str:
        return "EDGEKIT_" + self.name.upper()

    @property
    def source(self) -> str:
        return f"environment ({self.env})" if self.env in os.environ else "default"

    @property
    def value(self) -> float:
        raw = os.environ.get(self.env)
        if raw is None:
            return self.default
        from edgekit.errors import EdgekitError

        try:
            value = type(self.default)(raw)
        except ValueError:
            raise EdgekitError(f"invalid {self.env}={raw!r} (must be a number like {self.default})",
                               "unset it or give a number; `edgekit config` lists every setting") from None
        if not math.isfinite(value) or value < 0:
            raise EdgekitError(f"invalid {self.env}={raw!r} (must be a finite number >= 0)",
                               "`edgekit config` lists every setting and its default")
        return value


@dataclass(frozen=True)
class PathSetting:
    """A setting that names a place rather than a number."""

    env: str
    default: str
    help: str

    @property
    def value(self) -> str:
        return os.environ.get(self.env, self.default)

    @property
    def source(self) -> str:
        return f"environment ({self.env})" if self.env in os.environ else "default"


PATH_SETTINGS = (
    PathSetting("EDGEKIT_CACHE_DIR", str(os.path.join("~", ".cache", "edgekit", "fit")),
                "where fit caches its candidates"),
    PathSetting("EDGEKIT_TARGETS_PATH", "", "extra folders of target profiles (.toml), os.pathsep-separated, "
                                            "searched after the built-in targets/"),
    PathSetting("EDGEKIT_MEASURE_CACHE_DIR", str(os.path.join("~", ".cache", "edgekit", "firmware")),
                "where `analyze --measure qemu` keeps its firmware builds and measurements"),
    PathSetting("EDGEKIT_TFLM_CODE_SIZE", "", "a TFLM code-size table made by tools/gen_tflm_code_size.py from your "
                                              "TFLM build, used before the built-in one"),
)
# modules that declare further options beside their code; imported by all_options()
OPTION_MODULES = ("edgekit.output", "edgekit.data", "edgekit.tflm.worker", "edgekit.transports.base",
                  "edgekit.transports.adb", "edgekit.bench.protocol", "edgekit.bench.runner", "edgekit.fitting.cache",
                  "edgekit.analysis.planner", "edgekit.analysis.placement", "edgekit.analysis.reorder",
                  "edgekit.stages.cluster_tune", "edgekit.measure.build", "edgekit.measure.qemu",
                  "edgekit.fitting.measured", "edgekit.compress.executor", "edgekit.fitting.level3")


def all_options() -> list[Option]:
    """Every numeric option edgekit declares, by name (for `edgekit config`)."""
    for module in OPTION_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
    return sorted(_REGISTRY.values(), key=lambda o: o.name)


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
