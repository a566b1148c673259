"""Run a model the way it will run on the device and score it.

- LiteRT artifacts run in ``ai-edge-litert`` (``tflite_runtime`` as a fallback import).
- TFLM artifacts run in the TFLM host interpreter - the reference kernels the
  firmware runs - in a child process (:mod:`edgekit.tflm.worker`, re-exported here).
- Metrics: ``top1`` (classifiers), ``mse``, ``mae``, or ``module:function``
  taking ``(y_true, y_pred)`` and returning a float (higher is better unless the
  function has ``higher_is_better = False``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit._quiet import quiet_native
from edgekit.errors import DataError
from edgekit.tensors import dequantize, litert_interpreter_class, quantize
from edgekit.tflm.worker import EVAL_TIMEOUT, TflmRun, TflmWorker, run_tflm, tflm_session

_interpreter_class = litert_interpreter_class
_quantize = quantize
_dequantize = dequantize
__all__ = ["EVAL_TIMEOUT", "Metric", "TflmRun", "TflmWorker", "get_metric", "host_latency_ms", "run_litert",
           "run_tflm", "tflm_session"]


def run_litert(model: bytes, x: np.ndarray, threads: int = 1, batch: int = 64) -> np.ndarray:
    """Outputs (dequantized to float) of the LiteRT interpreter for inputs ``x``.

    Runs in batches where the graph allows it; a graph converted with a fixed batch of 1
    (a RESHAPE to a constant shape) is run one sample at a time.
    """
    with quiet_native():
        interp = _interpreter_class()(model_content=model, num_threads=threads)
        try:
            return _run_litert_batched(interp, x, batch)
        except (RuntimeError, ValueError):
            interp = _interpreter_class()(model_content=model, num_threads=threads)
            return _run_litert_batched(interp, x, 1)


def _run_litert_batched(interp: Any, x: np.ndarray, batch: int) -> np.ndarray:
    inp = interp.get_input_details()[0]
    out_detail = interp.get_output_details()[0]
    scale, zp = inp["quantization"]
    oscale, ozp = out_detail["quantization"]
    outs = []
    current = int(inp["shape"][0])
    interp.allocate_tensors()
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) != current:
            interp.resize_tensor_input(inp["index"], [len(chunk), *inp["shape"][1:]])
            interp.allocate_tensors()
            current = len(chunk)
        interp.set_tensor(inp["index"], _quantize(chunk, inp["dtype"], scale, zp))
        interp.invoke()
        outs.append(_dequantize(interp.get_tensor(out_detail["index"]), oscale, ozp))
    return np.concatenate(outs)


def host_latency_ms(model: bytes, x: np.ndarray, threads: int = 1, runs: int = 30, warmup: int = 3) -> float:
    """Median time of one LiteRT inference on this host for the first sample of ``x`` (a proxy)."""
    import time

    with quiet_native():
        interp = _interpreter_class()(model_content=model, num_threads=threads)
        interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    scale, zp = inp["quantization"]
    interp.set_tensor(inp["index"], _quantize(x[:1].reshape(inp["shape"]), inp["dtype"], scale, zp))
    for _ in range(warmup):
        interp.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


# ----------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool
    scale: float = 1.0  # shown value = raw * scale (top-1 in percent)
    unit: str = ""

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """The metric's value (in its shown unit); a metric that raises, or returns anything but a finite
        number, is a one-line DataError naming it."""
        try:
            value = self.fn(y_true, y_pred)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            raise DataError(f"metric {self.name} raised {type(exc).__name__}: {text[0][:200] if text else ''}",
                            "fix the metric function (it is called as fn(y_true, y_pred))") from None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataError(f"metric {self.name} returned {type(value).__name__} {str(value)[:60]!r}, not a number",
                            "return a float") from None
        if not np.isfinite(number):
            raise DataError(f"metric {self.name} returned {number}", "return a finite float") from None
        return number * self.scale

    def drop(self, baseline: float, candidate: float) -> float:
        """How much worse the candidate is (positive = worse), in the metric's shown unit."""
        return baseline - candidate if self.higher_is_better else candidate - baseline


def _top1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    pred = np.argmax(y_pred.reshape(len(y_pred), -1), axis=-1)
    truth = y_true
    if truth.ndim > 1 and truth.shape[-1] > 1:
        truth = np.argmax(truth.reshape(len(truth), -1), axis=-1)
    return float(np.mean(pred == truth.reshape(-1)))


def _mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean((y_pred.reshape(y_true.shape).astype(np.float64) - y_true) ** 2))


def _mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(y_pred.reshape(y_true.shape).astype(np.float64) - y_true)))


BUILTIN_METRICS = {
    "top1": Metric("top1", _top1, True, 100.0, "points"),
    "mse": Metric("mse", _mse, False),
    "mae": Metric("mae", _mae, False),
}


def get_metric(spec: str) -> Metric:
    if spec in BUILTIN_METRICS:
        return BUILTIN_METRICS[spec]
    if ":" not in spec:
        raise DataError(f"unknown metric {spec!r}", "use top1, mse, mae, or module:function")
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"cannot load metric {spec!r}: {exc}", "the module must be importable (PYTHONPATH)") \
            from None
    if not callable(fn):
        raise DataError(f"metric {spec!r} is not callable")
    return Metric(spec, fn, bool(getattr(fn, "higher_is_better", True)))
