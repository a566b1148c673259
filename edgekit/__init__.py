"""edgekit: take a trained model to phones and microcontrollers.

The public Python API (the CLI is a thin layer over it)::

    import edgekit
    report = edgekit.analyze("model.keras", "cortex-m4", calib="calib.npz")
    report.fits, report.flash_bytes, report.ram_bytes
    profile = edgekit.load_profile("cortex-m7")

Names are resolved lazily so that importing edgekit never imports TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["AnalysisReport", "TargetProfile", "analyze", "list_targets", "load_profile"]

if TYPE_CHECKING:
    from edgekit.analyze import AnalysisReport, analyze
    from edgekit.profiles import TargetProfile, list_targets, load_profile

_LAZY = {
    "analyze": "edgekit.analyze",
    "AnalysisReport": "edgekit.analyze",
    "load_profile": "edgekit.profiles",
    "list_targets": "edgekit.profiles",
    "TargetProfile": "edgekit.profiles",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
