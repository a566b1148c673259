"""Embed a memory plan in a .tflite model, and prove on the TFLM interpreter that it holds.

TFLM reads an offline plan from the model metadata named ``OfflineMemoryAllocation``
(``micro_allocation_info.cc``, ``docs/memory_management.md``): a buffer of little-endian int32
``[version, subgraph, n, offset_0 … offset_{n-1}]`` with one byte offset from the start of the
non-persistent arena per tensor of every subgraph (``n`` must equal the model's tensor count), ``-1``
where TFLM's own planner places the tensor. TFLM then uses the offsets as given and fits its kernels'
scratch buffers around them. :func:`apply` also writes the operators in the plan's order; :func:`verify`
runs the original and the planned model on the TFLM host interpreter and compares outputs bit for bit
and the arena figures.

The plan must be applied last: :func:`edgekit.stages.strip.strip_for_micro` removes all metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgekit.analysis.schema import schema_fb
from edgekit.errors import StageError

if TYPE_CHECKING:
    from edgekit.analysis.planner import MemoryPlan
    from edgekit.evaluate import TflmWorker

METADATA_NAME = "OfflineMemoryAllocation"
FORMAT_VERSION = 1  # TFLM's own tests write version 1; TFLM ignores the version and subgraph fields
VERIFY_SAMPLES = 16  # random inputs on which planned and original outputs must agree bit for bit


def encode_offsets(offsets: list[int], subgraph: int = 0) -> bytes:
    """The metadata buffer: version, subgraph, count, then one int32 offset per tensor (-1 = online)."""
    return np.array([FORMAT_VERSION, subgraph, len(offsets), *offsets], dtype="<i4").tobytes()


def read_offsets(model: bytes) -> list[int] | None:
    """The offline offsets embedded in ``model`` (as TFLM reads them), or None when there are none."""
    m = schema_fb.Model.GetRootAsModel(model, 0)
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        if (md.Name() or b"") == METADATA_NAME.encode():
            raw = m.Buffers(md.Buffer()).DataAsNumpy()
            words = np.frombuffer(bytes(raw), dtype="<i4")
            return [int(v) for v in words[3 : 3 + int(words[2])]]
    return None


def apply(model: bytes, plan: MemoryPlan) -> bytes:
    """``model`` with its operators in ``plan.order`` and the plan's offsets embedded as TFLM reads them.

    Every buffer is repacked 16-byte aligned (the offsets are read in place as int32, and weights from
    flash); an existing offline plan is replaced.
    """
    import flatbuffers

    from edgekit.stages.strip import AlignedBuffer

    m = schema_fb.ModelT.InitFromPackedBuf(bytearray(model), 0)
    if len(m.subgraphs or []) != 1:
        raise StageError(f"a memory plan covers single-subgraph models; this one has {len(m.subgraphs or [])}")
    sg = m.subgraphs[0]
    ops = sg.operators or []
    if len(sg.tensors or []) != plan.tensor_count or sorted(plan.order) != list(range(len(ops))):
        raise StageError("the memory plan was made for a different model (tensor or operator count differs)",
                         "plan the model you apply it to")
    if any(b.offset and b.offset > 1 for b in m.buffers or []):
        raise StageError("models larger than 2 GB (external buffers) cannot carry an offline memory plan")
    sg.operators = [ops[i] for i in plan.order]
    data = np.frombuffer(encode_offsets(plan.offline_offsets()), dtype=np.uint8)
    existing = [md for md in m.metadata or [] if (md.name or b"") in (METADATA_NAME, METADATA_NAME.encode())]
    if existing:
        m.buffers[existing[0].buffer].data = data
        for md in existing[1:]:
            m.metadata.remove(md)
    else:
        buf = schema_fb.BufferT()
        buf.data = data
        m.buffers.append(buf)
        md = schema_fb.MetadataT()
        md.name = METADATA_NAME
        md.buffer = len(m.buffers) - 1
        m.metadata = [*(m.metadata or []), md]
    m.buffers = [AlignedBuffer(b) for b in m.buffers]
    builder = flatbuffers.Builder(len(model) + len(data) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@dataclass(frozen=True)
class Verification:
    """The original and the planned model on the TFLM host interpreter."""

    bit_exact: bool
    samples: int
    head_before: int  # non-persistent arena TFLM reports for the original model
    head_after: int  # ... and for the planned one
    tail_before: int
    tail_after: int

    @property
    def saved_bytes(self) -> int:
        return self.head_before - self.head_after

    def to_dict(self) -> dict[str, object]:
        return {"bit_exact": self.bit_exact, "samples": self.samples, "head_before": self.head_before,
                "head_after": self.head_after, "tail_before": self.tail_before, "tail_after": self.tail_after}


def sample_inputs(model: bytes, n: int = VERIFY_SAMPLES, seed: int = 0) -> np.ndarray:
    """Random float inputs spanning the input's quantized range (every int8 code is reached)."""
    from edgekit.analysis.graph import read_graph

    t = read_graph(model).input_tensors()[0]
    shape = tuple(max(d, 1) for d in t.shape)[1:]
    rng = np.random.default_rng(seed)
    if t.scale and t.dtype in ("int8", "int16", "uint8"):
        info = np.iinfo(t.dtype)
        q = rng.integers(info.min, int(info.max) + 1, size=(n, *shape))
        return ((q - (t.zero_point[0] if t.zero_point else 0)) * t.scale[0]).astype(np.float32)
    return rng.standard_normal((n, *shape)).astype(np.float32)


def verify(original: bytes, planned: bytes, x: np.ndarray | None = None,
           worker: TflmWorker | None = None) -> Verification:
    """Run both models on TFLM (an isolated child) on ``x`` (default: random inputs over the input's
    quantized range); outputs must be equal bit for bit."""
    from edgekit.evaluate import tflm_session

    xs = sample_inputs(original) if x is None else x
    before, after = tflm_session([original, planned], xs, worker)
    exact = before.raw.dtype == after.raw.dtype and np.array_equal(before.raw, after.raw)
    return Verification(bit_exact=bool(exact), samples=len(xs), head_before=before.head_bytes,
                        head_after=after.head_bytes, tail_before=before.tail_bytes, tail_after=after.tail_bytes)


@dataclass(frozen=True)
class Planned:
    """The outcome of :func:`optimize`: the model to deploy and why."""

    data: bytes  # the planned model, or the input unchanged
    applied: bool
    note: str  # one line for reports
    plan: MemoryPlan | None = None
    verification: Verification | None = None

    def to_dict(self) -> dict[str, object]:
        return {"applied": self.applied, "note": self.note,
                "plan": self.plan.to_dict() if self.plan else None,
                "verification": self.verification.to_dict() if self.verification else None}


def optimize(model: bytes, x: np.ndarray | None = None, worker: TflmWorker | None = None,
             time_limit: float | None = None) -> Planned:
    """Plan, embed and verify: the planned model when TFLM confirms a smaller arena with bit-exact outputs,
    else ``model`` unchanged (with the reason). Call it on the final bytes (after stripping)."""
    from edgekit.analysis.planner import plan as make_plan
    from edgekit.errors import ModelError

    try:
        plan = make_plan(model, time_limit=time_limit)
    except ModelError as exc:
        return Planned(model, False, f"memory plan not applied: {exc.message}")
    if plan.arena_bytes >= plan.greedy_bytes:
        return Planned(model, False, f"TFLM's own plan is as small as the planner's ({plan.greedy_bytes:,} B; "
                                     f"liveness bound {plan.bound_bytes:,} B): nothing to embed", plan)
    planned = apply(model, plan)
    v = verify(model, planned, x, worker)
    if not v.bit_exact:
        return Planned(model, False, "memory plan not applied: the planned model's outputs differ on TFLM", plan, v)
    if v.head_after >= v.head_before:
        return Planned(model, False, f"memory plan not applied: TFLM reports {v.head_after:,} B, not less than "
                                     f"its own {v.head_before:,} B", plan, v)
    order = ", operators reordered" if plan.reordered else ""
    timing = "; the search hit its time limit, so the plan may differ on another machine" if plan.time_limited else ""
    return Planned(planned, True, f"non-persistent arena {v.head_before:,} -> {v.head_after:,} B (liveness bound "
                                  f"{plan.bound_bytes:,} B{order}), outputs bit-exact on TFLM{timing}", plan, v)
