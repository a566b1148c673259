"""Optional parts of edgekit and the one-line error when one is missing.

The core install (numpy, jinja2, pyserial, flatbuffers, the TFLM interpreter, LiteRT) handles a
`.tflite` end to end. Converting and compressing source models needs the ``convert`` extra:
``pip install 'edgekit[convert]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgekit.errors import EdgekitError

CONVERT = "convert"


class MissingExtra(EdgekitError):
    """A feature needs a package of an optional extra that is not installed."""


def missing(module: str, purpose: str, extra: str = CONVERT) -> MissingExtra:
    return MissingExtra(f"{purpose} needs the '{extra}' extra ({module} is not installed)",
                        f"pip install 'edgekit[{extra}]'")


def require(module: str, purpose: str, extra: str = CONVERT) -> ModuleType:
    """Import ``module`` or raise MissingExtra naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing(module.split(".")[0], purpose, extra) from None
