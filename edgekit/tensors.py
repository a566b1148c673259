"""Moving values in and out of quantized tensors, and the LiteRT interpreter class (one place for all)."""

from __future__ import annotations

from typing import Any

import numpy as np


def litert_interpreter_class() -> Any:
    """LiteRT's Interpreter (``ai-edge-litert``; ``tflite_runtime`` as a fallback)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:  # pragma: no cover - optional fallback
        from tflite_runtime.interpreter import Interpreter

        return Interpreter


def quantize(x: np.ndarray, dtype: Any, scale: float, zp: int) -> np.ndarray:
    """Float values as the tensor's integer type (round half to even, saturated); floats pass through."""
    if np.dtype(dtype).kind == "f":
        return x.astype(dtype)
    if scale == 0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """A tensor's values as float32."""
    if y.dtype.kind == "f" or scale == 0:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)
