"""Memory planning for TFLM's non-persistent arena (the "head"): at the liveness bound where possible.

TFLM places every activation tensor with a greedy planner (largest first, each at the lowest gap) over
the operator order the converter wrote. This module plans the same buffers better and says how far
from optimal the result is:

- **Lifetimes exactly as TFLM marks them** (``micro_allocation_info.cc``): the graph's inputs exist
  from scope 0, operator k of the execution order runs at scope k+1 where its inputs and outputs are
  all live, the graph's outputs live to the last scope. A buffer is sized up to the 16-byte
  ``MicroArenaBufferAlignment``. Constant tensors (data in the flatbuffer), variable tensors (TFLM
  keeps them in the persistent tail) and empty tensors are not planned.
- **In-place operators**: TFLM's RESHAPE kernel skips its copy when input and output share memory, and
  EXPAND_DIMS copies element by element (a no-op onto itself); an input and an output of equal size of
  these operators share one buffer.
- **Kernel scratch buffers** (``RequestScratchBufferInArena``) live for one operator. TFLM places them
  itself, around the offline offsets, in the gaps the plan leaves; the plan reserves room for the sizes
  it is given (:func:`reference_scratch` gives the host reference kernels').
- **The liveness bound** (the largest sum of simultaneously live buffers at any scope) is a lower bound
  for any placement in that order. Placement takes the best of several orderings (size, lifetime, area,
  conflict degree, first use, breadth) with first-fit and best-fit, then, if that is above the bound,
  an exact branch-and-bound search (buffers placed in order of offset, each resting on the highest
  buffer below it) until it proves the optimum or the time limit passes.
- **Reordering**: a dynamic programme over the sets of executed operators finds the topological order
  with the smallest bound (exact while the number of states stays small, a beam search beyond that).
  A reordered graph computes the same values; :func:`edgekit.stages.memplan.verify` proves it bit for
  bit on the TFLM interpreter.

``plan(model_bytes)`` returns a :class:`MemoryPlan`; :mod:`edgekit.stages.memplan` embeds it as the
``OfflineMemoryAllocation`` metadata TFLM reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from edgekit import options
from edgekit.analysis.graph import Graph, read_graph
from edgekit.errors import ModelError

ALIGNMENT = 16  # TFLM's MicroArenaBufferAlignment(): every planned size is rounded up to it
ALIASING_OPS = frozenset({"RESHAPE", "EXPAND_DIMS"})  # kernels that are correct with input == output memory
EXACT_MAX_BUFFERS = 60  # above this the exact search rarely finishes; a local search improves the heuristics
STATEFUL_OPS = frozenset({"ASSIGN_VARIABLE", "READ_VARIABLE", "VAR_HANDLE", "CALL_ONCE", "IF", "WHILE"})

PLAN_TIME_LIMIT = options.Option("plan_time_limit", 1.0, "seconds the memory planner may search (reorder + place)")
PLAN_REORDER_STATES = options.Option(
    "plan_reorder_states", 256, "operator sets kept per step by the reordering search (beyond: a beam search)")
PLAN_REORDER_STEPS = options.Option(
    "plan_reorder_steps", 12000, "operator-set expansions the reordering search may make (a fixed amount of work, "
    "so that a plan does not depend on the machine's speed; the time limit is a safety net)")
PLAN_PLACE_STEPS = options.Option(
    "plan_place_steps", 3000, "nodes of the exact placement search, or 1/20 of that in local-search moves, per "
    "operator order (a fixed amount of work, as plan_reorder_steps)")


class Budget:
    """Work a search may do: a count of steps, so that results are the same on every machine, and a deadline
    that cuts it short on a slow or loaded one (``timed_out`` then says the result depends on timing)."""

    def __init__(self, steps: int, deadline: float) -> None:
        self.steps, self.deadline = steps, deadline
        self.spent, self.started, self.timed_out = 0, time.monotonic(), False

    def affords(self, steps: int = 1) -> bool:
        """Whether ``steps`` more steps fit both the count and (at the rate seen so far) the deadline."""
        if self.spent + steps > self.steps:
            return False
        now = time.monotonic()
        rate = (now - self.started) / self.spent if self.spent >= 100 else 0.0  # too few steps to tell: 0
        if now + rate * steps > self.deadline:
            self.timed_out = True
            return False
        return True

    def spend(self, steps: int = 1) -> bool:
        """Take ``steps`` if affordable; False when the search must stop."""
        if not self.affords(steps):
            return False
        self.spent += steps
        return True


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


@dataclass(frozen=True)
class MemoryPlan:
    """Offsets for the non-persistent arena and how good they are."""

    offsets: dict[int, int]  # tensor index -> byte offset from the start of the head
    arena_bytes: int  # the head TFLM will use with this plan embedded (scratch placed by TFLM around it)
    bound_bytes: int  # liveness lower bound of the chosen order: no placement in that order can do better
    greedy_bytes: int  # TFLM's own greedy planner on the model as given (same scratch sizes)
    original_bound_bytes: int  # liveness bound of the model's own operator order
    order: tuple[int, ...]  # operators in execution order (indices in the model as given)
    method: str  # the placement that won ("size/first-fit", "branch-and-bound", ...)
    optimal: bool  # arena_bytes is proven minimal for this order (it equals the bound, or the search finished)
    seconds: float
    tensor_count: int  # tensors in the subgraph (the metadata carries one offset per tensor)
    time_limited: bool = False  # the time limit, not the fixed work budget, ended a search: may vary by machine
    buffers: tuple[Buffer, ...] = field(repr=False, default=())

    @property
    def reordered(self) -> bool:
        return self.order != tuple(range(len(self.order)))

    @property
    def saved_bytes(self) -> int:
        return self.greedy_bytes - self.arena_bytes

    def offline_offsets(self) -> list[int]:
        """One offset per tensor, -1 where TFLM plans (or does not need to plan) the tensor itself."""
        return [self.offsets.get(i, -1) for i in range(self.tensor_count)]

    def to_dict(self) -> dict[str, Any]:
        return {"arena_bytes": self.arena_bytes, "bound_bytes": self.bound_bytes, "greedy_bytes": self.greedy_bytes,
                "original_bound_bytes": self.original_bound_bytes, "reordered": self.reordered,
                "method": self.method, "optimal": self.optimal, "time_limited": self.time_limited,
                "seconds": round(self.seconds, 4)}


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


# ------------------------------------------------------------------ the problem: buffers and lifetimes


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


# ------------------------------------------------------------------ placement


class _Problem:
    def __init__(self, buffers: Sequence[Buffer]) -> None:
        self.buffers = list(buffers)
        self.n = len(buffers)
        self.size = [b.size for b in buffers]
        first = np.array([b.first for b in buffers], dtype=np.int64)
        last = np.array([b.last for b in buffers], dtype=np.int64)
        overlap = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
        np.fill_diagonal(overlap, False)
        self.overlap = overlap
        self.conf = [np.flatnonzero(row).tolist() for row in overlap]
        self.bound = liveness_bound(buffers)
        lo = int(first.min()) if self.n else 0
        hi = int(last.max()) if self.n else 0
        scopes = np.arange(lo, hi + 1)
        self.live = (first[:, None] <= scopes[None, :]) & (scopes[None, :] <= last[:, None])  # buffer x scope


def _place(p: _Problem, sequence: Sequence[int], best_fit: bool, fixed: Mapping[int, int] | None = None
           ) -> tuple[list[int], int]:
    """Place buffers in ``sequence`` each at the lowest (first-fit) or tightest (best-fit) gap among the
    already placed buffers it overlaps in time; ``fixed`` offsets are placed first, as given."""
    off = [-1] * p.n
    top = 0
    for i, o in (fixed or {}).items():
        off[i] = o
        top = max(top, o + p.size[i])
    for i in sequence:
        if off[i] >= 0:
            continue
        size = p.size[i]
        spans = sorted((off[j], off[j] + p.size[j]) for j in p.conf[i] if off[j] >= 0)
        cand, chosen, chosen_gap = 0, -1, -1
        for start, end in spans:
            gap = start - cand
            if gap >= size:
                if not best_fit:
                    chosen = cand
                    break
                if chosen < 0 or gap < chosen_gap:
                    chosen, chosen_gap = cand, gap
            cand = max(cand, end)
        if chosen < 0:
            chosen = cand
        off[i] = chosen
        top = max(top, chosen + size)
    return off, top


def _orderings(p: _Problem) -> dict[str, list[int]]:
    idx = range(p.n)
    b = p.buffers
    span = [x.last - x.first + 1 for x in b]
    degree = [p.size[i] + sum(p.size[j] for j in p.conf[i]) for i in idx]
    breadth: list[int] = []
    seen: set[int] = set()
    sums = (p.live * np.array(p.size)[:, None]).sum(axis=0) if p.n else np.zeros(0)
    for scope in np.argsort(-sums, kind="stable"):
        for i in sorted(np.flatnonzero(p.live[:, scope]).tolist(), key=lambda i: (-p.size[i], i)):
            if i not in seen:
                seen.add(i)
                breadth.append(i)
    return {
        "tflm": sorted(reversed(idx), key=lambda i: -p.size[i]),  # TFLM's own order (see simulate_tflm)
        "size": sorted(idx, key=lambda i: (-p.size[i], i)),
        "size-lifetime": sorted(idx, key=lambda i: (-p.size[i], -span[i], i)),
        "lifetime": sorted(idx, key=lambda i: (-span[i], -p.size[i], i)),
        "area": sorted(idx, key=lambda i: (-p.size[i] * span[i], i)),
        "conflict": sorted(idx, key=lambda i: (-degree[i], -p.size[i], i)),
        "first-use": sorted(idx, key=lambda i: (b[i].first, -p.size[i], i)),
        "breadth": breadth,
    }


def _heuristics(p: _Problem) -> tuple[list[int], int, str, list[int], bool]:
    """The best of every ordering with first-fit and best-fit: (offsets, arena, name, sequence, best-fit)."""
    best: tuple[list[int], int, str, list[int], bool] | None = None
    for name, seq in _orderings(p).items():
        for best_fit in (False, True):
            off, top = _place(p, seq, best_fit)
            if best is None or top < best[1]:
                best = (off, top, f"{name}/{'best' if best_fit else 'first'}-fit", seq, best_fit)
            if top <= p.bound:
                return best
    assert best is not None
    return best


def _local_search(p: _Problem, seq: list[int], best_fit: bool, top: int, budget: Budget,
                  seed: int = 0) -> tuple[list[int] | None, int]:
    """Iterated local search over the placement sequence: move a buffer that reaches the top of the arena
    (or, one time in four, any buffer) earlier; keep the change when the arena does not grow (plateaus are
    crossed); stop at the bound or when the budget is spent."""
    rng = np.random.default_rng(seed)
    current, current_top = list(seq), top
    off, _ = _place(p, current, best_fit)
    best_off: list[int] | None = None
    n = len(seq)
    while current_top > p.bound and n > 1 and budget.spend(20):
        trial = list(current)
        position = {b: k for k, b in enumerate(trial)}
        at_top = [b for b in range(n) if off[b] + p.size[b] == current_top and position[b] > 0]
        i = position[at_top[int(rng.integers(len(at_top)))]] if at_top and rng.random() < 0.75 \
            else int(rng.integers(1, n))
        trial.insert(int(rng.integers(0, i)), trial.pop(i))
        trial_off, t = _place(p, trial, best_fit)
        if t <= current_top:
            if t < top:
                best_off, top = trial_off, t
            current, current_top, off = trial, t, trial_off
    return best_off, top


def _branch_and_bound(p: _Problem, upper: int, budget: Budget) -> tuple[list[int] | None, int, bool]:
    """Exact search below ``upper``: (offsets or None, arena, finished).

    Any placement can be pushed down until every buffer rests on the highest buffer below it that it
    overlaps in time; listing those buffers by offset gives a sequence in which each one sits exactly on
    the current skyline over its lifetime, at non-decreasing offsets. The search enumerates such
    sequences: a buffer may come next only if every unplaced buffer with a lower skyline overlaps it
    (else that one could never be placed), equal-offset neighbours that do not overlap come in index order
    (the other order is the same placement), and a node is cut when a lower bound reaches the best arena.
    """
    n = p.n
    size = np.array(p.size, dtype=np.int64)
    live = p.live
    overlap = p.overlap
    height = np.zeros(n, dtype=np.int64)
    unplaced = np.ones(n, dtype=bool)
    off = [-1] * n
    best: list[Any] = [None, upper]
    big = np.iinfo(np.int64).max // 4
    state = {"timeout": False}

    def lower_bound(level: int, top: int) -> int:
        rem = live & unplaced[:, None]
        sums = size @ rem
        lowest = np.where(rem, height[:, None], big).min(axis=0)
        lb = np.where(sums > 0, np.maximum(lowest, level) + sums, 0)
        return max(top, int(lb.max()) if lb.size else 0)

    def dfs(level: int, top: int, prev: int) -> None:
        if not unplaced.any():
            if top < best[1]:
                best[0], best[1] = list(off), top
            return
        if not budget.spend():
            state["timeout"] = True
        if state["timeout"] or lower_bound(level, top) >= best[1]:
            return
        cand = np.flatnonzero(unplaced)
        h_c = height[cand]
        ok = (h_c >= level) & (h_c + size[cand] < best[1])
        # a buffer below it that it does not overlap could never be placed after it
        ok &= ~((h_c[None, :] < h_c[:, None]) & ~overlap[np.ix_(cand, cand)]).any(axis=1)
        picks = cand[ok]
        for b in picks[np.lexsort((picks, -size[picks], height[picks]))].tolist():
            h = int(height[b])
            if prev >= 0 and h == off[prev] and not overlap[prev, b] and b < prev:
                continue
            touched = [c for c in p.conf[b] if unplaced[c]]
            saved = height[touched].copy()
            height[touched] = np.maximum(saved, h + p.size[b])
            unplaced[b] = False
            off[b] = h
            dfs(h, max(top, h + p.size[b]), b)
            off[b] = -1
            unplaced[b] = True
            height[touched] = saved
            if state["timeout"] or best[1] <= p.bound:
                return

    dfs(0, 0, -1)
    return best[0], int(best[1]), not state["timeout"]


def place(buffers: Sequence[Buffer], budget: Budget) -> tuple[list[int], int, str, bool]:
    """Offsets for ``buffers``: (offsets, arena, method, proven optimal)."""
    p = _Problem(buffers)
    if not p.n:
        return [], 0, "empty", True
    off, top, method, seq, best_fit = _heuristics(p)
    if top <= p.bound:
        return off, top, method, True
    if p.n > EXACT_MAX_BUFFERS:  # too many for the exact search to finish: improve the best sequence instead
        better, better_top = _local_search(p, seq, best_fit, top, budget)
        if better is not None:
            return better, better_top, "local-search", better_top <= p.bound
        return off, top, method, False
    exact, exact_top, finished = _branch_and_bound(p, top, budget)
    if exact is not None and exact_top < top:
        return exact, exact_top, "branch-and-bound", finished
    return off, top, method, finished


def simulate_tflm(buffers: Sequence[Buffer], fixed: Mapping[int, int] | None = None) -> tuple[list[int], int]:
    """TFLM's greedy planner: ``fixed`` (offline) buffers where given, then the rest largest first, each in
    the lowest gap it fits. TFLM adds buffers in order (tensors by index, then scratch), files the online
    ones from the back of its list and sorts that stably, so among equal sizes the last added comes first."""
    p = _Problem(buffers)
    sequence = sorted(reversed(range(p.n)), key=lambda i: -p.size[i])
    return _place(p, sequence, best_fit=False, fixed=fixed)


# ------------------------------------------------------------------ operator order


def _reorderable(graph: Graph) -> bool:
    return not any(t.is_variable for t in graph.tensors) and not any(
        layer.op in STATEFUL_OPS or layer.op.startswith("CUSTOM") for layer in graph.layers)


def best_order(graph: Graph, scratch: Mapping[int, Sequence[int]] | None, budget: Budget,
               max_states: int | None = None) -> tuple[tuple[int, ...], int, bool]:
    """The topological operator order with the smallest liveness bound: (order, bound, exact).

    A dynamic programme over downward-closed sets of executed operators: the buffers resident after a
    set depend only on the set, so the best peak to reach each set is kept once. Beyond ``max_states``
    sets per step only the best are kept (a beam search) and the result is no longer proven.
    """
    m = len(graph.layers)
    identity = tuple(range(m))
    base = build_buffers(graph, identity, scratch)
    if m < 2 or not _reorderable(graph):
        return identity, liveness_bound(base), True
    cap = int(max_states if max_states is not None else PLAN_REORDER_STATES.value)
    producer: dict[int, int] = {}
    for layer in graph.layers:
        for t in layer.outputs:
            producer.setdefault(t, layer.index)
    preds = [0] * m
    succs: list[set[int]] = [set() for _ in range(m)]
    for layer in graph.layers:
        for t in layer.inputs:
            src = producer.get(t, -1) if t >= 0 else -1
            if src >= 0 and src != layer.index:
                preds[layer.index] |= 1 << src
                succs[src].add(layer.index)
    inputs, outputs = set(graph.inputs), set(graph.outputs)
    made_by: dict[int, int] = {}  # tensor -> mask of the operators writing it
    used_by: dict[int, int] = {}  # tensor -> mask of the operators reading or writing it
    for layer in graph.layers:
        for t in layer.outputs:
            made_by[t] = made_by.get(t, 0) | 1 << layer.index
        for t in (*layer.inputs, *layer.outputs):
            if t >= 0:
                used_by[t] = used_by.get(t, 0) | 1 << layer.index
    creates: list[list[tuple[int, int]]] = [[] for _ in range(m)]  # (size, producers mask)
    frees: list[list[tuple[int, int]]] = [[] for _ in range(m)]  # (size, users mask)
    resident0 = 0
    scratch_at = [0] * m
    for b in base:
        if b.is_scratch:
            scratch_at[b.op] += b.size
            continue
        if b.first < 0:  # never referenced: live before scope 0 only, whatever the order
            continue
        prod_mask = users = 0
        for t in b.tensors:
            prod_mask |= made_by.get(t, 0)
            users |= used_by.get(t, 0)
        is_input = any(t in inputs for t in b.tensors)
        is_output = any(t in outputs for t in b.tensors)
        if is_input:
            if users or is_output:
                resident0 += b.size
        else:
            for v in range(m):
                if prod_mask >> v & 1:
                    creates[v].append((b.size, prod_mask))
        if not is_output:
            for v in range(m):
                if users >> v & 1:
                    frees[v].append((b.size, users))
    fixed = max(sum(b.size for b in base if b.first <= scope <= b.last) for scope in (-1, 0))  # before any op
    ready0 = sum(1 << v for v in range(m) if preds[v] == 0)
    layer_states: dict[int, tuple[int, int, int]] = {0: (fixed, resident0, ready0)}  # mask -> peak, resident, ready
    back: list[dict[int, tuple[int, int]]] = []
    exact = True
    written = 0  # the set of the first k operators in the model's own order: always kept, so never worse
    budget.started = time.monotonic()  # the rate of expansions, not of the set-up above
    for k in range(m):
        nxt: dict[int, tuple[int, int, int]] = {}
        steps: dict[int, tuple[int, int]] = {}
        items = sorted(layer_states.items(), key=lambda kv: (kv[0] != written, kv[1][0], kv[1][1]))
        finish = (m - k) * 2 * (bin(items[0][1][2]).count("1") + 1)  # the rest with two sets per step
        for count, (mask, (peak, resident, ready)) in enumerate(items):
            width = bin(ready).count("1")
            if count > 1 and not budget.affords(width + finish):  # the model's order and the best go on
                exact = False
                break
            budget.spent += width
            r = ready
            while r:
                low = r & -r
                v = low.bit_length() - 1
                r ^= low
                done = mask | low
                mem = resident + scratch_at[v] + sum(s for s, pm in creates[v] if not pm & mask)
                after = mem - scratch_at[v] - sum(s for s, um in frees[v] if not um & ~done)
                new_peak = max(peak, mem)
                old = nxt.get(done)
                if old is None or new_peak < old[0]:
                    new_ready = ready & ~low
                    for w in succs[v]:
                        if preds[w] & ~done == 0:
                            new_ready |= 1 << w
                    nxt[done] = (new_peak, after, new_ready)
                    steps[done] = (mask, v)
        written |= 1 << k
        if written not in nxt:  # the model's own order is not topological: leave it alone
            return identity, liveness_bound(base), True
        if len(nxt) > cap:
            kept = sorted(nxt.items(), key=lambda kv: (kv[1][0], kv[1][1]))[:cap]
            nxt = {**dict(kept), written: nxt[written]}
            exact = False
        back.append(steps)
        layer_states = nxt
    final_mask, (peak, _, _) = min(layer_states.items(), key=lambda kv: kv[1][0])
    order: list[int] = []
    mask = final_mask
    for steps in reversed(back):
        mask, v = steps[mask]
        order.append(v)
    return tuple(reversed(order)), peak, exact


# ------------------------------------------------------------------ the API


def plan(model: bytes | Graph, time_limit: float | None = None, reorder: bool = True,
         scratch: Mapping[int, Sequence[int]] | None = None, alias: bool = True) -> MemoryPlan:
    """Plan the non-persistent arena of a single-subgraph .tflite model (bytes or a read graph).

    ``scratch`` maps an operator (index in the model as given) to the scratch buffer sizes its kernels
    request; default: :func:`reference_scratch` (TFLM's reference kernels, as on the host interpreter).
    """
    t0 = time.monotonic()
    limit = float(PLAN_TIME_LIMIT.value if time_limit is None else time_limit)
    deadline = t0 + 0.85 * limit  # the rest covers building the result, also on a loaded machine
    graph = read_graph(model) if isinstance(model, bytes | bytearray) else model
    if graph.subgraphs != 1:
        raise ModelError(f"the model has {graph.subgraphs} subgraphs; memory planning covers single-subgraph models",
                         "control flow (IF, WHILE) models keep TFLM's own planner")
    scr = reference_scratch(graph) if scratch is None else scratch
    identity = tuple(range(len(graph.layers)))
    plain = build_buffers(graph, identity, scr, alias=False)
    _, greedy = simulate_tflm(plain)
    original = build_buffers(graph, identity, scr, alias=alias)
    original_bound = liveness_bound(original)
    orders = [identity]
    budgets = []
    if reorder:
        budgets.append(Budget(int(PLAN_REORDER_STEPS.value), t0 + 0.35 * limit))
        found, bound, _ = best_order(graph, scr, budgets[-1])
        if bound < original_bound:
            orders.append(found)
    candidates = []
    for k, order in enumerate(orders):
        buffers = original if k == 0 else build_buffers(graph, order, scr, alias=alias)
        share = time.monotonic() + (deadline - time.monotonic()) / (len(orders) - k)
        budgets.append(Budget(int(PLAN_PLACE_STEPS.value), share))
        offsets, top, method, finished = place(buffers, budgets[-1])
        fixed = {i: o for i, o in enumerate(offsets) if not buffers[i].is_scratch}
        _, head = simulate_tflm(buffers, fixed)  # TFLM places the scratch buffers around the plan
        bound = liveness_bound(buffers)
        candidates.append((head, k, buffers, offsets, method, head <= bound or (finished and head == top), order))
    head, _, buffers, offsets, method, optimal, order = min(candidates, key=lambda c: (c[0], c[1]))
    if head > greedy:  # never worse than TFLM's own plan: embed TFLM's own offsets then
        offsets, head = simulate_tflm(plain)
        buffers, method, optimal, order = plain, "tflm-greedy", False, identity
    tensor_offsets = {t: offsets[i] for i, b in enumerate(buffers) for t in b.tensors}
    return MemoryPlan(offsets=tensor_offsets, arena_bytes=head, bound_bytes=liveness_bound(buffers),
                      greedy_bytes=greedy, original_bound_bytes=original_bound, order=order, method=method,
                      optimal=optimal, seconds=time.monotonic() - t0, tensor_count=len(graph.tensors),
                      time_limited=any(b.timed_out for b in budgets), buffers=tuple(buffers))
