"""The buffers TFLM plans in its non-persistent arena, with their lifetimes exactly as TFLM marks them.

From ``micro_allocation_info.cc``: the graph's inputs exist from scope 0, operator k of the execution
order runs at scope k+1 where its inputs and outputs are all live, the graph's outputs live to the last
scope; a tensor never referenced keeps the uninitialized lifetime (-1, -1). A buffer is sized up to the
16-byte ``MicroArenaBufferAlignment``. Constant tensors (data in the flatbuffer), variable tensors (TFLM
keeps them in the persistent tail) and empty tensors are not planned. TFLM's RESHAPE kernel skips its
copy when input and output share memory, and EXPAND_DIMS copies element by element (a no-op onto
itself): an input and an output of equal size of these operators share one buffer. Kernel scratch
buffers (``RequestScratchBufferInArena``) live for one operator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod

import numpy as np

from edgekit.analysis.graph import Graph

ALIGNMENT = 16  # TFLM's MicroArenaBufferAlignment(): every planned size is rounded up to it
ALIASING_OPS = frozenset({"RESHAPE", "EXPAND_DIMS"})  # kernels that are correct with input == output memory


@dataclass(frozen=True)
class Buffer:
    """One block of the arena: a tensor, tensors sharing memory (in-place operators), or kernel scratch."""

    tensors: tuple[int, ...]  # empty for scratch
    size: int  # aligned
    first: int  # TFLM scope of first creation
    last: int  # TFLM scope of last use
    op: int = -1  # scratch: the operator (original index) it belongs to

    @property
    def is_scratch(self) -> bool:
        return not self.tensors


def align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def tensor_bytes(graph: Graph, index: int) -> int:
    """Bytes TFLM allocates for a tensor (element count x type size; 0 for an empty dimension)."""
    t = graph.tensors[index]
    if t.shape and prod(t.shape) == 0:
        return 0
    return t.nbytes


def reference_scratch(graph: Graph, pointer_bytes: int = 8) -> dict[int, list[int]]:
    """Scratch buffers TFLM's reference kernels request, per operator (bytes, in request order).

    From the kernels' Prepare functions: MEAN and SUM (an int32 accumulator per output element for
    int8/int16, then input-rank and axis-count ints), REDUCE_MAX/MIN (rank and axis ints), TRANSPOSE_CONV
    (an int32 accumulator per output element for int8, int64 for int16), MIRROR_PAD (two rank ints), ADD_N
    (a pointer per input: ``pointer_bytes``, 8 on the 64-bit host), and convolutions and fully connected
    layers with int4 filters (the unpacked filter). Other kernels' scratch (SVDF, LSTM, detection
    post-processing) and optimized kernels' (CMSIS-NN) are placed by TFLM around the plan; pass their sizes
    to :func:`plan` to reserve room for them.
    """
    out: dict[int, list[int]] = {}
    for layer in graph.layers:
        ins = [graph.tensors[i] if i >= 0 else None for i in layer.inputs]
        x = ins[0] if ins else None
        y = graph.tensors[layer.outputs[0]] if layer.outputs else None
        req: list[int] = []
        if layer.op in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN") and x is not None and y is not None \
                and len(ins) > 1:
            axis = ins[1]
            if layer.op in ("MEAN", "SUM") and x.dtype in ("int8", "int16"):
                req.append(4 * y.elements)
            req += [4 * len(x.shape), 4 * (axis.elements if axis is not None else 0)]
        elif layer.op == "TRANSPOSE_CONV" and len(ins) > 2 and ins[2] is not None and y is not None:
            if ins[2].dtype == "int16" and len(ins) > 3 and ins[3] is not None and ins[3].dtype == "int16":
                req.append(8 * ins[3].elements)  # a 16-bit bias widened to 64 bits
            req.append({"int8": 4, "int16": 8}.get(ins[2].dtype, 0) * y.elements)
        elif layer.op == "MIRROR_PAD" and x is not None:
            req += [4 * len(x.shape)] * 2
        elif layer.op == "ADD_N" and y is not None and y.dtype in ("float32", "int8"):
            req.append(pointer_bytes * len(ins))
        elif layer.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(ins) > 1:
            w = ins[1]
            if w is not None and w.dtype == "int4":
                req.append(w.elements)
        if any(req):
            out[layer.index] = [r for r in req if r > 0]
    return out


def lifetimes(graph: Graph, order: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(first, last) TFLM scope of every tensor the graph references, for operators run in ``order``."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t in graph.inputs:
        first[t] = last[t] = 0
    for k, op in enumerate(order):
        scope = k + 1
        layer = graph.layers[op]
        for t in layer.outputs:
            first.setdefault(t, scope)
        for t in (*layer.inputs, *layer.outputs):
            if t >= 0:
                last[t] = scope
    end = len(order)
    for t in graph.outputs:
        first.setdefault(t, end)
        last[t] = end
    return {t: (first.get(t, 0), last[t]) for t in last}


def planned_tensors(graph: Graph) -> list[int]:
    """Tensors TFLM places in the head: not constant, not variable, not empty."""
    return [t.index for t in graph.tensors if not t.is_const and not t.is_variable and tensor_bytes(graph, t.index) > 0]


def alias_groups(graph: Graph, planned: Sequence[int]) -> list[tuple[int, ...]]:
    """Planned tensors grouped by shared memory (input and output of an in-place operator)."""
    parent = {t: t for t in planned}

    def find(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for layer in graph.layers:
        if layer.op in ALIASING_OPS and layer.inputs and layer.outputs:
            a, b = layer.inputs[0], layer.outputs[0]
            if a in parent and b in parent and tensor_bytes(graph, a) == tensor_bytes(graph, b):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for t in planned:
        groups.setdefault(find(t), []).append(t)
    return [tuple(sorted(g)) for _, g in sorted(groups.items())]


def build_buffers(graph: Graph, order: Sequence[int], scratch: Mapping[int, Sequence[int]] | None = None,
                  alias: bool = True) -> list[Buffer]:
    """The buffers TFLM plans for ``order``: tensors (in tensor order, grouped when aliased), then scratch."""
    life = lifetimes(graph, order)
    planned = planned_tensors(graph)
    groups = alias_groups(graph, planned) if alias else [(t,) for t in planned]
    buffers = []
    for group in groups:
        spans = [life.get(t, (-1, -1)) for t in group]  # unreferenced: TFLM's uninitialized lifetime (-1, -1)
        buffers.append(Buffer(tensors=group, size=align(max(tensor_bytes(graph, t) for t in group)),
                              first=min(s[0] for s in spans), last=max(s[1] for s in spans)))
    position = {op: k + 1 for k, op in enumerate(order)}
    for op in order:  # TFLM requests scratch in Prepare, which runs in execution order
        for nbytes in (scratch or {}).get(op, ()):
            if align(nbytes):
                buffers.append(Buffer(tensors=(), size=align(nbytes), first=position[op], last=position[op], op=op))
    return buffers


def liveness_bound(buffers: Sequence[Buffer]) -> int:
    """The largest sum of sizes of buffers live at one scope: no placement can use less."""
    if not buffers:
        return 0
    lo, hi = min(b.first for b in buffers), max(b.last for b in buffers)
    live = [0] * (hi - lo + 2)
    for b in buffers:
        live[b.first - lo] += b.size
        live[b.last - lo + 1] -= b.size
    return max(np.cumsum(live).tolist())
