"""Tensor arena measured with the real TFLM interpreter, in a child process.

The TFLM host interpreter aborts the whole process on some models (a
``TFLITE_CHECK`` in a kernel's parameter set-up), so it never runs inside the
CLI's own process: a child loads the model, allocates with a recording
allocator, runs one inference, and prints the allocator's figures.  A crash
becomes a :class:`MeasurementError` naming the operator and the likely cause.

The arena is sized properly: the child starts from the model's own activation
needs, and grows the trial arena by what TFLM reports missing until the model
allocates (the TFLM Python runtime's default of 10x the model size fails on
models with large activations and small weights).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def _child_main(model_path: str, start_arena: int, max_arena: int) -> int:
    """Runs in the child: find an arena that allocates, invoke once, print the record."""
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    data = Path(model_path).read_bytes()
    arena = start_arena
    while True:
        try:
            interp = runtime.Interpreter.from_bytes(data, arena_size=arena)
            break
        except RuntimeError as exc:
            text = str(exc)
            if arena >= max_arena:
                print(json.dumps({"error": "arena", "arena": arena, "detail": text}), flush=True)
                return 3
            if "Failed" not in text and "arena" not in text.lower() and "alloc" not in text.lower():
                print(json.dumps({"error": "init", "detail": text}), flush=True)
                return 4
            arena = min(max_arena, arena * 2)
    i = 0
    while True:
        try:
            details = interp.get_input_details(i)
        except Exception:
            break
        shape = tuple(int(d) for d in details["shape"])
        interp.set_input(np.zeros(shape, dtype=details["dtype"]), i)
        i += 1
    interp.invoke()
    print(json.dumps({"ok": True, "arena": arena}), flush=True)
    sys.stdout.flush()
    interp.print_allocations()
    return 0


def measure_arena(model: bytes, activation_hint: int = 0, timeout: float | None = None) -> ArenaMeasurement:
    """Measure the TFLM tensor arena of a .tflite model (bytes) in a child process."""
    timeout = options.ARENA_MEASURE_TIMEOUT.value if timeout is None else timeout
    start = max(64 * 1024, 2 * activation_hint + 16 * 1024)
    max_arena = int(options.ARENA_MAX_BYTES.value)
    with tempfile.TemporaryDirectory(prefix="edgekit-arena-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        cmd = [sys.executable, "-c",
               "import sys; from edgekit.analysis.arena import _child_main; "
               "sys.exit(_child_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))",
               str(path), str(start), str(max_arena)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise MeasurementError(
                f"the TFLM interpreter did not finish within {timeout:.0f} s",
                "raise EDGEKIT_ARENA_MEASURE_TIMEOUT for very large models",
            ) from None
    out = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        raise _crash_error(proc.returncode, out, _degenerate_op(model))
    total = _TOTAL.search(out)
    if not total:
        raise MeasurementError("the TFLM interpreter printed no allocation record", out.strip()[-200:])
    head = _HEAD.search(out)
    tail = _TAIL.search(out)
    trial = start
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            trial = int(json.loads(line).get("arena", start))
    return ArenaMeasurement(
        total_bytes=int(total.group(1)),
        head_bytes=int(head.group(1)) if head else 0,
        tail_bytes=int(tail.group(1)) if tail else 0,
        trial_arena_bytes=trial,
        breakdown={m.group(1): int(m.group(2)) for m in _ITEM.finditer(out)},
    )


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
    for line in out.splitlines():
        if line.startswith("{") and '"error"' in line:
            info = json.loads(line)
            if info["error"] == "arena":
                return MeasurementError(
                    f"the model does not allocate even in a {info['arena']} byte trial arena",
                    "raise EDGEKIT_ARENA_MAX_BYTES if the model really needs more",
                )
            return MeasurementError(f"the TFLM interpreter refused the model: {_last_lines(info['detail'])}")
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
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("{")]
    return " / ".join(lines[-n:]) if lines else "no output"
