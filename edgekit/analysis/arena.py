"""Tensor arena measured with the real TFLM interpreter, in a child process.

The TFLM host interpreter aborts the whole process on some models (a
``TFLITE_CHECK`` in a kernel's parameter set-up), so it never runs inside the
CLI's own process: the TFLM worker (:class:`edgekit.evaluate.TflmWorker`)
loads the model, allocates with a recording allocator, runs one inference, and
prints the allocator's figures, which are parsed here.  A crash becomes a
:class:`MeasurementError` naming the operator and the likely cause.

The arena is sized properly: the worker starts from twice the model's peak
activation memory and doubles the trial arena until the model allocates (the
TFLM Python runtime's default of 10x the model size fails on models with large
activations and small weights).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgekit import options
from edgekit.errors import MeasurementError

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")
_ITEM = re.compile(r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+)")
_KERNEL_FILE = re.compile(r"kernels/(?:[a-z_]+/)?([a-z0-9_]+?)(?:_common|_ref)?\.(?:cc|h)")
_NODE = re.compile(r"Node (\w+) \(number (\d+)f?\) failed to (\w+)")


@dataclass(frozen=True)
class ArenaMeasurement:
    total_bytes: int
    head_bytes: int  # non-persistent (activations, scratch) - the planner's part
    tail_bytes: int  # persistent (tensor structs, quantization data, kernel state)
    trial_arena_bytes: int
    breakdown: dict[str, int]
    pointer_bytes: int = 8  # measured on the 64-bit host

    def to_dict(self) -> dict[str, object]:
        return {
            "total_bytes": self.total_bytes,
            "head_bytes": self.head_bytes,
            "tail_bytes": self.tail_bytes,
            "measured_on": "host TFLM interpreter (64-bit, RecordingMicroAllocator)",
            "breakdown": self.breakdown,
        }


def parse_allocation_record(text: str) -> dict[str, Any]:
    """The RecordingMicroAllocator's printout: total, head, tail and per-kind bytes."""
    total = _TOTAL.search(text)
    if not total:
        raise MeasurementError("the TFLM interpreter printed no allocation record", text.strip()[-200:] or None)
    head, tail = _HEAD.search(text), _TAIL.search(text)
    return {"total": int(total.group(1)), "head": int(head.group(1)) if head else 0,
            "tail": int(tail.group(1)) if tail else 0,
            "breakdown": {m.group(1): int(m.group(2)) for m in _ITEM.finditer(text)}}


def measure_arena(model: bytes) -> ArenaMeasurement:
    """Measure the TFLM tensor arena of a .tflite model (bytes) in an isolated TFLM worker process."""
    import numpy as np

    from edgekit.analysis.graph import read_graph
    from edgekit.evaluate import TflmWorker

    shape = tuple(max(d, 1) for d in read_graph(model).input_tensors()[0].shape)
    with TflmWorker() as worker:
        run = worker.run([model], np.zeros((1, *shape[1:]), dtype=np.float32), timeout=options.ARENA_MEASURE_TIMEOUT)[0]
    return ArenaMeasurement(total_bytes=run.arena_bytes, head_bytes=run.head_bytes, tail_bytes=run.tail_bytes,
                            trial_arena_bytes=run.trial_arena_bytes, breakdown=run.breakdown)


def _degenerate_op(model: bytes) -> str | None:
    """The first operator whose activation input has a collapsed quantization scale."""
    from edgekit.analysis.graph import read_graph

    try:
        g = read_graph(model)
    except Exception:
        return None
    for layer in g.layers:
        for t in layer.inputs:
            if t < 0 or g.tensors[t].is_const:
                continue
            scale = g.tensors[t].scale
            if scale and min(scale) < 1e-6:
                return f"{layer.op} (operator #{layer.index}, input scale {min(scale):.3g})"
    return None


def _crash_error(code: int, out: str, suspect: str | None = None) -> MeasurementError:
    node = _NODE.search(out)
    kernel = _KERNEL_FILE.search(out)
    op = node.group(1) if node else (kernel.group(1).upper() if kernel else None)
    if op is None and suspect:
        op = suspect
    if code < 0 or "TFLITE_CHECK" in out or "Aborted" in out or code == 134:
        where = f"in the {op} kernel" if op else "in a kernel"
        cause = (
            "its quantization parameters are degenerate - usually calibration collapsed a tensor's "
            "scale (an untrained model, or calibration data that does not resemble real inputs)"
        )
        if op and op.startswith("SOFTMAX"):
            cause = (
                "the softmax input scale collapsed during calibration (an untrained classifier, or "
                "calibration data unlike real inputs)"
            )
        return MeasurementError(
            f"the TFLM interpreter aborted {where} (signal/exit {code}): {cause}",
            "calibrate with real samples via --calib, or train the model before converting",
        )
    detail = _last_lines(out)
    if node:
        return MeasurementError(
            f"TFLM could not {node.group(3)} operator {node.group(1)} (node {node.group(2)}): {detail}",
            "check that the operator's data types are supported by TFLM",
        )
    return MeasurementError(f"the TFLM interpreter failed (exit {code}): {detail}")


def _last_lines(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("@@edgekit")]
    return " / ".join(lines[-n:]) if lines else "no output"
