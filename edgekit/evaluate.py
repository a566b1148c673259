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
    """A score of a model's outputs. ``reference`` says what ``y_true`` is: the data's labels (``labels``)
    or the float source model's own outputs on the same inputs (``float``: agreement metrics, which need
    no labels)."""

    name: str
    fn: Callable[..., float]
    higher_is_better: bool
    scale: float = 1.0  # shown value = raw * scale (top-1 in percent)
    unit: str = ""
    reference: str = "labels"  # labels | float
    kind: str = "any"  # what the labels must be: classes | binary | any (checked before any work)

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, x: np.ndarray | None = None) -> float:
        """The metric's value (in its shown unit); a metric that raises, or returns anything but a finite
        number, is a one-line DataError naming it. ``x`` (the inputs) reaches the built-in ``auc``, which
        scores an autoencoder by its reconstruction error as MLPerf Tiny does."""
        try:
            value = self.fn(y_true, y_pred, x) if self.name == "auc" else self.fn(y_true, y_pred)
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


def _classes(y: np.ndarray) -> np.ndarray:
    """Class indices from labels given as indices or as one-hot / score rows."""
    if y.ndim > 1 and int(np.prod(y.shape[1:])) > 1:
        return np.argmax(y.reshape(len(y), -1), axis=-1)
    return y.reshape(-1).astype(np.int64)


def _top1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    pred = np.argmax(y_pred.reshape(len(y_pred), -1), axis=-1)
    return float(np.mean(pred == _classes(y_true)))


def _top5(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    scores = y_pred.reshape(len(y_pred), -1)
    k = min(5, scores.shape[1])
    top = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == _classes(y_true)[:, None], axis=1)))


def _f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the classes present in the labels or the predictions."""
    truth = _classes(y_true)
    scores = y_pred.reshape(len(y_pred), -1)
    pred = np.argmax(scores, axis=-1) if scores.shape[1] > 1 else (scores[:, 0] >= 0.5).astype(np.int64)
    f1s = []
    for c in np.union1d(truth, pred):
        tp = float(np.sum((pred == c) & (truth == c)))
        fp = float(np.sum((pred == c) & (truth != c)))
        fn = float(np.sum((pred != c) & (truth == c)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(f1s))


def anomaly_scores(y_pred: np.ndarray, x: np.ndarray | None) -> np.ndarray:
    """One score per sample, higher = more likely positive/anomalous: a single output as it is, the second
    of two (class-1 probability), or - when the model reproduces its input (an autoencoder) - the mean
    squared reconstruction error, as MLPerf Tiny's anomaly-detection benchmark scores it."""
    flat = y_pred.reshape(len(y_pred), -1).astype(np.float64)
    if x is not None and flat.shape[1] > 2 and flat.shape[1] == int(np.prod(x.shape[1:])):
        return np.mean((x.reshape(len(x), -1).astype(np.float64) - flat) ** 2, axis=1)
    if flat.shape[1] == 1:
        return flat[:, 0]
    if flat.shape[1] == 2:
        return flat[:, 1]
    raise ValueError(f"auc needs one score per sample (1 or 2 outputs, or an autoencoder); the model gives "
                     f"{flat.shape[1]}")


def _auc(y_true: np.ndarray, y_pred: np.ndarray, x: np.ndarray | None = None) -> float:
    """ROC AUC by the rank statistic (ties count half): the chance a positive outranks a negative."""
    truth = y_true.reshape(-1).astype(np.int64)
    s = anomaly_scores(y_pred, x)
    pos, neg = s[truth == 1], s[truth == 0]
    if not len(pos) or not len(neg):
        raise ValueError("auc needs both classes (0 and 1) in the labels")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), dtype=np.float64)
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):  # average ranks of ties
        tie = allv == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean((y_pred.reshape(y_true.shape).astype(np.float64) - y_true) ** 2))


def _mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(y_pred.reshape(y_true.shape).astype(np.float64) - y_true)))


BUILTIN_METRICS = {
    "top1": Metric("top1", _top1, True, 100.0, "points", kind="classes"),
    "top5": Metric("top5", _top5, True, 100.0, "points", kind="classes"),
    "f1": Metric("f1", _f1, True, 100.0, "points (macro F1 x 100)", kind="classes"),
    "auc": Metric("auc", _auc, True, 100.0, "points (ROC AUC x 100)", kind="binary"),
    "mse": Metric("mse", _mse, False),
    "mae": Metric("mae", _mae, False),
    "agreement": Metric("agreement", _top1, True, 100.0, "points (top-1 agreement with the float model)",
                        reference="float"),
    "mse-to-float": Metric("mse-to-float", _mse, False, reference="float"),
}


def get_metric(spec: str) -> Metric:
    if spec in BUILTIN_METRICS:
        return BUILTIN_METRICS[spec]
    if ":" not in spec:
        raise DataError(f"unknown metric {spec!r}", "use " + ", ".join(BUILTIN_METRICS) + ", or module:function")
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"cannot load metric {spec!r}: {exc}", "the module must be importable (PYTHONPATH)") \
            from None
    if not callable(fn):
        raise DataError(f"metric {spec!r} is not callable")
    return Metric(spec, fn, bool(getattr(fn, "higher_is_better", True)))


def get_metrics(spec: str) -> list[Metric]:
    """``--metric top1,f1``: every named metric, in order (the first one governs --max-drop)."""
    names = [n.strip() for n in spec.split(",")]
    if not spec.strip() or any(not n for n in names):
        raise DataError(f"--metric {spec!r} names an empty metric", "e.g. --metric top1 or --metric top1,f1")
    if len(set(names)) != len(names):
        raise DataError(f"--metric {spec!r} names a metric twice")
    return [get_metric(n) for n in names]
