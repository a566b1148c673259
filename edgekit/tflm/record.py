"""Reading what the TFLM host interpreter prints: its allocation record, a kernel's refusal, a crash.

The worker (:mod:`edgekit.tflm.worker`) captures TFLM's own output; these turn it into figures or into
one-line errors that quote TFLM (``Node OP (number N) failed to prepare: why (file.cc:line)``).
"""

from __future__ import annotations

import re
import signal
from typing import Any

from edgekit.errors import MeasurementError

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")
_ITEM = re.compile(r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+)")
_KERNEL_FILE = re.compile(r"kernels/(?:[a-z_]+/)?([a-z0-9_]+?)(?:_common|_ref)?\.(?:cc|h)")
_NODE = re.compile(r"Node (\w+) \(number (\d+)f?\) failed to (\w+)")
_SOURCE_PREFIX = re.compile(r"^(?:\S*/)?([\w.]+\.(?:cc|h|cpp))(?::(\d+))?:?\s+")



class TflmRefusal(MeasurementError):
    """The TFLM interpreter refused the model, or crashed on it: a property of the model (an operator
    or data type TFLM cannot run as converted), reported as a finding by analyze and check."""

    def __init__(self, message: str, hint: str | None = None, op: str | None = None) -> None:
        super().__init__(message, hint)
        self.op = op


def parse_allocation_record(text: str) -> dict[str, Any]:
    """The RecordingMicroAllocator's printout: total, head, tail and per-kind bytes."""
    total = _TOTAL.search(text)
    if not total:
        raise MeasurementError("the TFLM interpreter printed no allocation record", text.strip()[-200:] or None)
    head, tail = _HEAD.search(text), _TAIL.search(text)
    return {"total": int(total.group(1)), "head": int(head.group(1)) if head else 0,
            "tail": int(tail.group(1)) if tail else 0,
            "breakdown": {m.group(1): int(m.group(2)) for m in _ITEM.finditer(text)}}


def degenerate_op(model: bytes) -> str | None:
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


def _signal_name(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return "SIGABRT" if code == 134 else f"exit {code}"


def crash_error(code: int, out: str, suspect: str | None = None) -> MeasurementError:
    """The error for a TFLM child that died (``code``) after printing ``out``.

    ``suspect`` is an operator whose input scale really is collapsed (:func:`degenerate_op`): only
    then is calibration blamed (an error, exit 2: the fix is better calibration data). Any other
    crash is a refusal of the model by TFLM, with what TFLM said.
    """
    node = _NODE.search(out)
    kernel = _KERNEL_FILE.search(out)
    op = node.group(1) if node else (kernel.group(1).upper() if kernel else None)
    crashed = code < 0 or "TFLITE_CHECK" in out or "Aborted" in out or code == 134
    if crashed and suspect:
        where = f"in the {op} kernel" if op else f"at {suspect}"
        cause = (
            f"its quantization parameters are degenerate ({suspect}) - usually calibration collapsed a "
            "tensor's scale (an untrained model, or calibration data that does not resemble real inputs)"
        )
        if (op or suspect).startswith("SOFTMAX"):
            cause = (
                "the softmax input scale collapsed during calibration (an untrained classifier, or "
                "calibration data unlike real inputs)"
            )
        return MeasurementError(
            f"the TFLM interpreter aborted {where} ({_signal_name(code)}): {cause}",
            "calibrate with real samples via --calib, or train the model before converting",
        )
    said = tflm_reason(out)
    if crashed:
        where = f"in the {op} kernel" if op else "while loading or running the model"
        return TflmRefusal(f"TFLM crashed {where} ({_signal_name(code)})"
                           + (f": {said}" if said else ""), op=op)
    if said:
        return TflmRefusal(f"TFLM: {said}", op=op)
    return TflmRefusal(f"TFLM failed ({_signal_name(code)}) without saying why", op=op)


def _clean(line: str) -> str:
    """A TFLM message line without its source-path prefix: 'reason (file.cc:42)'."""
    m = _SOURCE_PREFIX.match(line)
    if not m:
        return line.strip()
    where = f"{m.group(1)}:{m.group(2)}" if m.group(2) else m.group(1)
    return f"{line[m.end():].strip()} ({where})"


def _is_noise(line: str) -> bool:
    """Python traceback frames and markers: never part of a reason."""
    s = line.strip()
    return (not s or s.startswith(("@@edgekit", "Traceback", "File \"", "During handling"))
            or set(s) <= set("^~ ") or line.startswith("    "))


def tflm_reason(text: str) -> str:
    """TFLM's own reason from its printout, one line: 'Node OP (number N) failed to PHASE: why (file.cc:line)'.

    The kernel's message lines precede the 'Node ... failed' line; a Python exception (the worker's
    own) is reduced to its last line.
    """
    lines = [ln for ln in text.splitlines() if not _is_noise(ln)]
    lines = [ln for ln in lines if ln.strip() != "TFLM failed to allocate tensors"
             and not ln.startswith("RuntimeError: TFLM failed")]
    for i, line in enumerate(lines):
        node = _NODE.search(line)
        if node:
            why = [_clean(ln) for ln in lines[max(0, i - 2) : i] if not _NODE.search(ln)]
            head = f"Node {node.group(1)} (number {node.group(2)}) failed to {node.group(3)}"
            return (head + (": " + " / ".join(why) if why else ""))[:400]
    return " / ".join(_clean(ln) for ln in lines[-2:])[:400]
