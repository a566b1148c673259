"""Run a model the way it will run on the device and score it.

- LiteRT artifacts run in ``ai-edge-litert`` (``tflite_runtime`` as a fallback import).
- TFLM artifacts run in the TFLM host interpreter - the reference kernels the
  firmware runs - in a child process, isolated as in ``analyze``.
- Metrics: ``top1`` (classifiers), ``mse``, ``mae``, or ``module:function``
  taking ``(y_true, y_pred)`` and returning a float (higher is better unless the
  function has ``higher_is_better = False``).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import options
from edgekit._quiet import quiet_native
from edgekit.errors import DataError, MeasurementError

EVAL_TIMEOUT = options.Option("eval_timeout", 900.0, "seconds one TFLM evaluation child process may take")


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:  # pragma: no cover - optional fallback
        from tflite_runtime.interpreter import Interpreter

        return Interpreter


def _quantize(x: np.ndarray, dtype: Any, scale: float, zp: int) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return x.astype(dtype)
    if scale == 0:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, scale: float, zp: int) -> np.ndarray:
    if y.dtype.kind == "f" or scale == 0:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)


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


def _tflm_child(model_path: str, x_path: str, out_path: str, raw: str, arena: str) -> int:
    from tflite_micro.python.tflite_micro import runtime

    data = Path(model_path).read_bytes()
    x = np.load(x_path)
    interp = runtime.Interpreter.from_bytes(data, arena_size=int(arena))
    d = interp.get_input_details(0)
    od = interp.get_output_details(0)
    qi, qo = d["quantization_parameters"], od["quantization_parameters"]
    scale = float(qi["scales"][0]) if len(qi["scales"]) else 0.0
    zp = int(qi["zero_points"][0]) if len(qi["zero_points"]) else 0
    oscale = float(qo["scales"][0]) if len(qo["scales"]) else 0.0
    ozp = int(qo["zero_points"][0]) if len(qo["zero_points"]) else 0
    shape = tuple(int(s) for s in d["shape"])
    outs = []
    for i in range(len(x)):
        interp.set_input(_quantize(x[i : i + 1].reshape(shape), d["dtype"], scale, zp), 0)
        interp.invoke()
        y = np.array(interp.get_output(0))
        outs.append(y if raw == "1" else _dequantize(y, oscale, ozp))
    np.save(out_path, np.concatenate(outs))
    return 0


def run_tflm(model: bytes, x: np.ndarray, raw: bool = False, arena_bytes: int | None = None) -> np.ndarray:
    """Outputs of the TFLM host interpreter (in a child process) for inputs ``x``."""
    from edgekit.analysis.arena import _crash_error, _degenerate_op, measure_arena

    arena = arena_bytes or int(measure_arena(model).trial_arena_bytes)
    with tempfile.TemporaryDirectory(prefix="edgekit-eval-") as tmp:
        mp, xp, op = Path(tmp) / "m.tflite", Path(tmp) / "x.npy", Path(tmp) / "y.npy"
        mp.write_bytes(model)
        np.save(xp, np.asarray(x, dtype=np.float32))
        cmd = [sys.executable, "-c",
               "import sys; from edgekit.evaluate import _tflm_child; "
               "sys.exit(_tflm_child(*sys.argv[1:6]))",
               str(mp), str(xp), str(op), "1" if raw else "0", str(arena)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=EVAL_TIMEOUT.value)
        except subprocess.TimeoutExpired:
            raise MeasurementError(f"TFLM evaluation did not finish within {EVAL_TIMEOUT.value:.0f} s",
                                   "raise EDGEKIT_EVAL_TIMEOUT or evaluate fewer samples") from None
        if proc.returncode != 0:
            raise _crash_error(proc.returncode, proc.stdout + proc.stderr, _degenerate_op(model))
        return np.load(op)


# ----------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool
    scale: float = 1.0  # shown value = raw * scale (top-1 in percent)
    unit: str = ""

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(self.fn(y_true, y_pred)) * self.scale

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
