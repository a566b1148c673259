"""Memory planning for TFLM's non-persistent arena (the "head"): at the liveness bound where possible.

TFLM places every activation tensor with a greedy planner (largest first, each at the lowest gap) over
the operator order the converter wrote. :func:`plan` plans the same buffers better and says how far from
optimal the result is:

- the buffers and their lifetimes exactly as TFLM marks them, in-place operators sharing memory, kernel
  scratch (:mod:`edgekit.analysis.liveness`);
- the liveness bound (the largest sum of simultaneously live buffers at any scope), a lower bound for
  any placement in that order;
- placement by the best of several heuristics, then a local search or an exact branch-and-bound search
  (:mod:`edgekit.analysis.placement`), which also reproduces TFLM's own greedy figure to the byte;
- the topological operator order with the smallest bound (:mod:`edgekit.analysis.reorder`); a reordered
  graph computes the same values, which :func:`edgekit.stages.memplan.verify` proves bit for bit on TFLM.

Searches run on a fixed amount of work (the same plan on every machine) under a time limit (1 s by
default) that only a slow or loaded machine reaches; ``MemoryPlan.time_limited`` says when it did.
:mod:`edgekit.stages.memplan` embeds the plan as the ``OfflineMemoryAllocation`` metadata TFLM reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit import options
from edgekit.analysis.graph import Graph, read_graph
from edgekit.analysis.liveness import Buffer, build_buffers, liveness_bound, reference_scratch
from edgekit.analysis.placement import PLAN_PLACE_STEPS, Budget, place, simulate_tflm
from edgekit.analysis.reorder import PLAN_REORDER_STEPS, best_order
from edgekit.errors import ModelError

PLAN_TIME_LIMIT = options.Option("plan_time_limit", 1.0, "seconds the memory planner may search (reorder + place)")


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
