"""Tensor arena measured with the real TFLM interpreter, in a child process.

The TFLM host interpreter aborts the whole process on some models (a
``TFLITE_CHECK`` in a kernel's parameter set-up), so it never runs inside the
CLI's own process: the TFLM worker (:class:`edgekit.tflm.worker.TflmWorker`)
loads the model, allocates with a recording allocator, runs one inference, and
prints the allocator's figures, which are parsed here.  A crash becomes a
:class:`MeasurementError` naming the operator and the likely cause.

The arena is sized properly: the worker starts from twice the model's peak
activation memory and doubles the trial arena until the model allocates (the
TFLM Python runtime's default of 10x the model size fails on models with large
activations and small weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgekit import options
from edgekit.tflm.record import TflmRefusal, parse_allocation_record, tflm_reason
from edgekit.tflm.record import crash_error as _crash_error
from edgekit.tflm.record import degenerate_op as _degenerate_op

__all__ = ["ArenaMeasurement", "TflmRefusal", "_crash_error", "_degenerate_op", "measure_arena",
           "parse_allocation_record", "reserved_arena_bytes", "tflm_reason"]

def reserved_arena_bytes(measured: int) -> int:
    """The tensor arena the firmware reserves (``kTensorArenaSize``) for an arena measured on the
    host: measured plus ARENA_MARGIN, rounded up to 16 bytes.

    The one RAM figure compared with a TFLM target's budget - by analyze, check, codegen and fit
    alike - so a model `check` passes is one `codegen` generates.
    """
    return int(math.ceil(measured * (1 + options.ARENA_MARGIN.value) / 16.0) * 16)


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


def measure_arena(model: bytes) -> ArenaMeasurement:
    """Measure the TFLM tensor arena of a .tflite model (bytes) in an isolated TFLM worker process."""
    import numpy as np

    from edgekit.analysis.graph import read_graph
    from edgekit.tflm.worker import TflmWorker, take_prestarted

    shape = tuple(max(d, 1) for d in read_graph(model).input_tensors()[0].shape)
    with take_prestarted() or TflmWorker() as worker:
        run = worker.run([model], np.zeros((1, *shape[1:]), dtype=np.float32), timeout=options.ARENA_MEASURE_TIMEOUT)[0]
    return ArenaMeasurement(total_bytes=run.arena_bytes, head_bytes=run.head_bytes, tail_bytes=run.tail_bytes,
                            trial_arena_bytes=run.trial_arena_bytes, breakdown=run.breakdown)


