"""The operator order with the smallest liveness bound: a dynamic programme over executed-operator sets."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from edgekit import options
from edgekit.analysis.graph import Graph
from edgekit.analysis.liveness import build_buffers, liveness_bound
from edgekit.analysis.placement import Budget

STATEFUL_OPS = frozenset({"ASSIGN_VARIABLE", "READ_VARIABLE", "VAR_HANDLE", "CALL_ONCE", "IF", "WHILE"})
PLAN_REORDER_STATES = options.Option(
    "plan_reorder_states", 256, "operator sets kept per step by the reordering search (beyond: a beam search)")
PLAN_REORDER_STEPS = options.Option(
    "plan_reorder_steps", 12000, "operator-set expansions the reordering search may make (a fixed amount of work, "
    "so that a plan does not depend on the machine's speed; the time limit is a safety net)")


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
