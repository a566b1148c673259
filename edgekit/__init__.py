"""edgekit: take a trained model to phones and microcontrollers.

The public Python API (the CLI is a thin layer over it)::

    import edgekit
    report = edgekit.analyze("model.keras", "cortex-m4", calib="calib.npz")
    report.fits, report.flash_bytes, report.ram_bytes
    result = edgekit.fit("model.keras", "cortex-m4", eval_data="eval.npz", out_dir="out/")
    edgekit.codegen("out/model.tflite", "cortex-m4", "gen/")
    edgekit.scaffold("out/model.tflite", "cortex-m4", "cmake", "fw/")
    edgekit.bench("out/model.tflite", "cortex-m4", SerialTransport("/dev/ttyACM0"))
    profile = edgekit.load_profile("cortex-m7")

Names are resolved lazily so that importing edgekit never imports TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["AnalysisReport", "TargetProfile", "analyze", "bench", "codegen", "fit", "list_targets", "load_profile",
           "scaffold"]

if TYPE_CHECKING:
    from edgekit.analyzer import AnalysisReport, analyze
    from edgekit.bench.runner import bench
    from edgekit.codegen.generate import codegen
    from edgekit.codegen.scaffold import scaffold
    from edgekit.fitting import fit
    from edgekit.profiles import TargetProfile, list_targets, load_profile

_LAZY = {
    "analyze": "edgekit.analyzer",
    "AnalysisReport": "edgekit.analyzer",
    "load_profile": "edgekit.profiles",
    "list_targets": "edgekit.profiles",
    "TargetProfile": "edgekit.profiles",
    "fit": "edgekit.fitting",
    "codegen": "edgekit.codegen.generate",
    "scaffold": "edgekit.codegen.scaffold",
    "bench": "edgekit.bench.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
