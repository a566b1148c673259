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
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class TflmRun:
    """One model's run on the TFLM host interpreter: raw and dequantized outputs, arena figures."""

    raw: np.ndarray
    outputs: np.ndarray
    arena_bytes: int
    trial_arena_bytes: int
    head_bytes: int = 0  # non-persistent part (activations, scratch)
    tail_bytes: int = 0  # persistent part (tensor structs, quantization data, kernel state)
    breakdown: dict[str, int] = field(default_factory=dict)


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


_ARENA_TOO_SMALL = ("failed to resize buffer", "failed to allocate", "failed starting model allocation")


def _load_captured(runtime: Any, libc: Any, data: bytes, arena: int, log: str) -> tuple[Any, str]:
    """``runtime.Interpreter.from_bytes`` with what TFLM prints captured in ``log`` (a file, so the
    parent can read it even when TFLM kills the process): (interpreter or None, TFLM's text)."""
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1), os.dup(2)
    with open(log, "wb") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            try:
                interp = runtime.Interpreter.from_bytes(data, arena_size=arena)
            except RuntimeError:
                interp = None
            libc.fflush(None)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
    return interp, Path(log).read_text(errors="replace")


def _tflm_worker_main() -> int:
    """Child process: one job per stdin line (a spec file); for each model, find an arena, run
    every sample, print the allocation record; then a done marker."""
    import ctypes
    import json

    from tflite_micro.python.tflite_micro import runtime

    libc = ctypes.CDLL(None)  # TFLM prints through C stdio: flush it so records stay in order
    os.dup2(1, 2)  # ... and its records go to stderr: one stream keeps markers and records in order
    print("@@edgekit ready", flush=True)
    for line in sys.stdin:
        spec = json.loads(Path(line.strip()).read_text())
        x = np.load(spec["x"])
        for i, model_path in enumerate(spec["models"]):
            print(f"@@edgekit start {i}", flush=True)
            data = Path(model_path).read_bytes()
            arena = int(spec["arena"])
            while True:
                interp, said = _load_captured(runtime, libc, data, arena, spec["out"] + f".{i}.log")
                if interp is not None:
                    break
                # retry with a larger arena only when TFLM said the arena was too small; a kernel's
                # refusal ("Node X (number N) failed to prepare") is final
                too_small = any(k in said.lower() for k in _ARENA_TOO_SMALL) and "failed to prepare" not in said
                if arena >= int(spec["max_arena"]) or not too_small:
                    print(said, flush=True)
                    print(f"@@edgekit failed {i} {arena} {'small' if too_small else 'refused'}", flush=True)
                    return 3
                arena = min(int(spec["max_arena"]), arena * 2)
            d = interp.get_input_details(0)
            qi = d["quantization_parameters"]
            scale = float(qi["scales"][0]) if len(qi["scales"]) else 0.0
            zp = int(qi["zero_points"][0]) if len(qi["zero_points"]) else 0
            shape = tuple(int(v) for v in d["shape"])
            xs = x[: int(spec["limits"][i])] if spec["limits"][i] else x
            q = _quantize(xs, d["dtype"], scale, zp)
            outs = []
            for j in range(len(xs)):
                interp.set_input(q[j : j + 1].reshape(shape), 0)
                interp.invoke()
                outs.append(interp.get_output(0))
            np.save(spec["out"] + f".{i}.npy", np.concatenate(outs))
            print(f"@@edgekit model {i} trial_arena {arena}", flush=True)
            interp.print_allocations()
            libc.fflush(None)
            print("", flush=True)
        print("@@edgekit done", flush=True)
    return 0


class TflmWorker:
    """The TFLM host interpreter in a long-lived child process: isolated from the CLI (a kernel
    abort kills only the child, which is restarted for the next job), started early so that its
    imports overlap the caller's own work, and reused for every candidate of a search."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.timeout = EVAL_TIMEOUT

    def start(self) -> TflmWorker:
        if self.proc is None or self.proc.poll() is not None:
            self.ready = False
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from edgekit.evaluate import _tflm_worker_main; "
                 "sys.exit(_tflm_worker_main())"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def __enter__(self) -> TflmWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_until(self, marker: bytes, deadline: float) -> tuple[bytes, bool]:
        """Read the child's output up to ``marker``; (text, found). Never blocks past ``deadline``."""
        import selectors
        import time

        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while marker not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.proc.kill()
                    raise MeasurementError(
                        f"the TFLM interpreter did not finish within {self.timeout.value:.0f} s",
                        f"raise EDGEKIT_{self.timeout.name.upper()} for large models or many samples")
                if not sel.select(timeout=min(left, 1.0)):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    return bytes(buf), False
                buf += chunk
        return bytes(buf), True

    def _failure(self, models: list[bytes], text: str, out: Path) -> MeasurementError:
        """The child stopped before its done marker: why, from what it (and TFLM) printed."""
        import re

        from edgekit.analysis.arena import TflmRefusal, _crash_error, _degenerate_op, tflm_reason

        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc, self.ready = None, False
        started = re.findall(r"@@edgekit start (\d+)", text)
        i = int(started[-1]) if started else 0
        section = text[text.rfind("@@edgekit start"):] if started else text
        log = out.with_name(f"{out.name}.{i}.log")
        if "@@edgekit failed" not in section and log.is_file():  # TFLM killed the child while loading
            section += "\n" + log.read_text(errors="replace")
        failed = re.search(r"@@edgekit failed \d+ (\d+) (\w+)", section)
        if failed and failed.group(2) == "small":
            return TflmRefusal(f"the model does not allocate even in a {int(failed.group(1)):,}-byte trial arena",
                               "raise EDGEKIT_ARENA_MAX_BYTES if the model really needs more")
        if failed:
            said = tflm_reason(section[: failed.start()])
            node = re.search(r"Node (\w+) \(number", said)
            return TflmRefusal("TFLM: " + (said or "the interpreter refused the model without a reason"),
                               op=node.group(1) if node else None)
        return _crash_error(code, section, _degenerate_op(models[min(i, len(models) - 1)]))

    def run(self, models: list[bytes], x: np.ndarray, limits: list[int] | None = None,
            timeout: options.Option = EVAL_TIMEOUT) -> list[TflmRun]:
        """Run each model on ``x`` (model i on its first ``limits[i]`` samples; 0 = all)."""
        import json
        import re
        import time

        from edgekit.analysis.arena import parse_allocation_record
        from edgekit.analysis.graph import read_graph

        self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.timeout = timeout
        deadline = time.monotonic() + timeout.value
        start = 64 * 1024
        for m in models:
            start = max(start, 2 * read_graph(m).peak_activation_bytes() + 16 * 1024)
        with tempfile.TemporaryDirectory(prefix="edgekit-tflm-") as tmp:
            paths = []
            for i, m in enumerate(models):
                paths.append(str(Path(tmp) / f"m{i}.tflite"))
                Path(paths[-1]).write_bytes(m)
            np.save(Path(tmp) / "x.npy", np.asarray(x, dtype=np.float32))
            spec = {"models": paths, "x": str(Path(tmp) / "x.npy"), "out": str(Path(tmp) / "y"),
                    "arena": start, "max_arena": int(options.ARENA_MAX_BYTES.value),
                    "limits": limits or [0] * len(models)}
            (Path(tmp) / "spec.json").write_text(json.dumps(spec))
            if not self.ready:
                _, self.ready = self._read_until(b"@@edgekit ready", deadline)
            try:
                self.proc.stdin.write(f"{Path(tmp) / 'spec.json'}\n".encode())
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            raw_out, ok = self._read_until(b"@@edgekit done", deadline)
            text = raw_out.decode(errors="replace")
            if not ok:
                raise self._failure(models, text, Path(tmp) / "y")
            runs = []
            sections = re.split(r"@@edgekit model \d+ ", text)[1:]
            for i, (m, sect) in enumerate(zip(models, sections, strict=True)):
                trial = int(re.search(r"trial_arena (\d+)", sect).group(1))  # type: ignore[union-attr]
                record = parse_allocation_record(sect)
                raw = np.load(Path(tmp) / f"y.{i}.npy")
                out_t = read_graph(m).output_tensors()[0]
                oscale = out_t.scale[0] if out_t.scale else 0.0
                ozp = out_t.zero_point[0] if out_t.zero_point else 0
                runs.append(TflmRun(raw=raw, outputs=_dequantize(raw, oscale, ozp),
                                    arena_bytes=record["total"], trial_arena_bytes=trial, head_bytes=record["head"],
                                    tail_bytes=record["tail"], breakdown=record["breakdown"]))
            return runs


def tflm_session(models: list[bytes], x: np.ndarray, worker: TflmWorker | None = None,
                 limits: list[int] | None = None) -> list[TflmRun]:
    """Run every model on ``x`` with TFLM in an isolated child (``worker``'s, or a new one)."""
    if worker is not None:
        return worker.run(models, x, limits)
    with TflmWorker() as w:
        return w.run(models, x, limits)


def run_tflm(model: bytes, x: np.ndarray, raw: bool = False) -> np.ndarray:
    """Outputs of the TFLM host interpreter (in a child process) for inputs ``x``."""
    run = tflm_session([model], x)[0]
    return run.raw if raw else run.outputs


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
