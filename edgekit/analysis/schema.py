"""The TFLite flatbuffer schema, from the TFLM package (imports in milliseconds, no TensorFlow)."""

from __future__ import annotations

try:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb
except ImportError:  # pragma: no cover - fallback when tflite-micro is absent
    from ai_edge_litert import schema_py_generated as schema_fb  # type: ignore[no-redef,unused-ignore]

__all__ = ["schema_fb"]
