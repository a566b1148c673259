"""The operators the real TFLM registers, read from the installed TFLM runtime.

The Cortex-M profiles' operator lists are generated from this (see
``tools/gen_tflm_ops.py``), never typed from memory, and a test checks that the
shipped list still equals what the installed interpreter registers.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

# Itanium-mangled `tflite::Register_X()` or `tflite::micro::Register_X()`
_REGISTER = re.compile(rb"_ZN6tflite(?:5micro)?(\d+)Register_([A-Z0-9_]+)Ev")


def runtime_library() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("tflite_micro")
    if spec is None or not spec.submodule_search_locations:
        from edgekit.errors import MeasurementError

        raise MeasurementError("the tflite-micro package is not installed", "pip install tflite-micro")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "python" / "tflite_micro" / "_runtime.so"


def builtin_operator_names() -> dict[int, str]:
    from edgekit.analysis.schema import schema_fb

    return {
        v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
    }


@lru_cache(maxsize=1)
def registered_builtin_ops() -> tuple[str, ...]:
    """Sorted builtin operator names whose TFLM kernels the runtime library registers."""
    data = runtime_library().read_bytes()
    names = set()
    for match in _REGISTER.finditer(data):
        length, name = int(match.group(1)), match.group(2).decode()
        if length == len("Register_" + name):
            names.add(name)
    builtin = set(builtin_operator_names().values())
    return tuple(sorted(names & builtin))
