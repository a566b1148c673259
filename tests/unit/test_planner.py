"""The memory planner on graphs built in the test (no TensorFlow): TFLM's lifetime rules and greedy
placement reproduced, placements valid and at the bound, the exact search against exhaustive
enumeration, the best operator order against every topological order, and the time limit."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence

import pytest

from edgekit.analysis import liveness, placement, planner, reorder
from edgekit.analysis.graph import Graph, Layer, Tensor
from edgekit.analysis.liveness import Buffer
from edgekit.errors import ModelError
from edgekit.stages import memplan

Spec = tuple[tuple[int, ...], str] | tuple[tuple[int, ...], str, str]


def make_graph(tensors: Sequence[Spec], layers: Sequence[tuple[str, Sequence[int], Sequence[int]]],
               inputs: Sequence[int], outputs: Sequence[int], subgraphs: int = 1) -> Graph:
    """A Graph as read_graph returns it; a third tensor field 'const' or 'var' marks weights/state."""
    ts = []
    for i, spec in enumerate(tensors):
        shape, dtype = spec[0], spec[1]
        kind = spec[2] if len(spec) > 2 else ""  # type: ignore[misc]
        t = Tensor(index=i, name=f"t{i}", shape=shape, dtype=dtype, is_const=kind == "const", const_bytes=0,
                   is_variable=kind == "var")
        if kind == "const":
            t = Tensor(index=i, name=f"t{i}", shape=shape, dtype=dtype, is_const=True, const_bytes=t.nbytes,
                       is_variable=False)
        ts.append(t)
    ls = [Layer(index=k, op=op, inputs=tuple(ins), outputs=tuple(outs), input_shapes=(), output_shapes=(), params=0,
                weight_bytes=0, macs=0) for k, (op, ins, outs) in enumerate(layers)]
    return Graph(size_bytes=0, tensors=ts, layers=ls, inputs=list(inputs), outputs=list(outputs), subgraphs=subgraphs)


def assert_valid(buffers: Sequence[Buffer], offsets: Sequence[int]) -> int:
    """No two buffers live at the same scope share a byte; offsets aligned; returns the arena."""
    top = 0
    for i, a in enumerate(buffers):
        assert offsets[i] >= 0 and offsets[i] % liveness.ALIGNMENT == 0
        top = max(top, offsets[i] + a.size)
        for j in range(i):
            b = buffers[j]
            if a.first <= b.last and b.first <= a.last:
                assert offsets[i] + a.size <= offsets[j] or offsets[j] + b.size <= offsets[i], (a, b)
    return top


def budget(seconds: float, steps: int = 1 << 30) -> placement.Budget:
    return placement.Budget(steps, time.monotonic() + seconds)


def random_buffers(rng: random.Random, n: int) -> list[Buffer]:
    out = []
    for i in range(n):
        first = rng.randint(0, 5)
        out.append(Buffer((i,), 16 * rng.randint(1, 6), first, first + rng.randint(0, 3)))
    return out


def exhaustive(buffers: Sequence[Buffer]) -> int:
    """The optimum: every placement can be pushed down to one that some order reaches by lowest fit."""
    p = placement._Problem(buffers)
    return min(placement._place(p, perm, False)[1] for perm in itertools.permutations(range(p.n)))


# ------------------------------------------------------------------ TFLM's rules


def test_lifetimes_are_tflm_allocation_scopes() -> None:
    # x -> A -> a -> B(a, x) -> y ; u is an unused graph input; w a weight
    g = make_graph([((1, 8), "int8"), ((1, 8), "int8"), ((1, 8), "int8"), ((1, 4), "int8"), ((8, 8), "int8", "const")],
                   [("FULLY_CONNECTED", [0, 4], [1]), ("ADD", [1, 0], [2])], inputs=[0, 3], outputs=[2])
    life = liveness.lifetimes(g, [0, 1])
    assert life[0] == (0, 2)  # a graph input exists from scope 0, until its last reader (operator 1 runs at scope 2)
    assert life[1] == (1, 2) and life[2] == (2, 2)  # the graph output lives to the last scope
    assert life[3] == (0, 0)  # unused input: scope 0 only
    assert [b.tensors for b in liveness.build_buffers(g, [0, 1])] == [(0,), (1,), (2,), (3,)]  # not the weight


def test_constant_variable_and_empty_tensors_are_not_planned() -> None:
    g = make_graph([((1, 8), "int8"), ((8,), "int8", "const"), ((1, 8), "int8", "var"), ((1, 0), "int8"),
                    ((1, 8), "int8")],
                   [("ADD", [0, 1], [4]), ("ADD", [4, 2], [3])], inputs=[0], outputs=[4])
    assert liveness.planned_tensors(g) == [0, 4]
    assert liveness.tensor_bytes(g, 3) == 0


def test_in_place_operators_share_one_buffer_others_do_not() -> None:
    # RESHAPE skips its copy onto shared memory and EXPAND_DIMS copies element by element (a no-op onto itself);
    # SQUEEZE memcpy's (undefined onto itself in C) and stays apart, as does any operator that computes
    g = make_graph([((1, 4, 4, 2), "int8"), ((1, 32), "int8"), ((1, 1, 32), "int8"), ((1, 16), "int8"),
                    ((16,), "int8"), ((2,), "int32", "const")],
                   [("RESHAPE", [0, 5], [1]), ("EXPAND_DIMS", [1, 5], [2]), ("FULLY_CONNECTED", [2], [3]),
                    ("SQUEEZE", [3], [4])], inputs=[0], outputs=[4])
    assert liveness.alias_groups(g, liveness.planned_tensors(g)) == [(0, 1, 2), (3,), (4,)]
    merged = liveness.build_buffers(g, range(4))
    assert (merged[0].first, merged[0].last) == (0, 3)  # the union of the members' lifetimes
    assert liveness.liveness_bound(merged) == 48  # the shared 32 B and the 16 B output of FULLY_CONNECTED
    assert liveness.liveness_bound(liveness.build_buffers(g, range(4), alias=False)) == 64


def test_tflm_greedy_is_reproduced_with_its_tie_order() -> None:
    # the first five activations of MLPerf Tiny's VWW model: TFLM's greedy planner takes equal sizes last-added
    # first (it files online buffers from the back of its list), which costs 9,216 B here; TFLM reports 73,728 B
    chain = [Buffer((0,), 27648, 0, 1), Buffer((1,), 18432, 1, 2), Buffer((2,), 18432, 2, 3),
             Buffer((3,), 36864, 3, 4), Buffer((4,), 9216, 4, 5)]
    offsets, top = placement.simulate_tflm(chain)
    assert top == 73728 and offsets[2] == 36864 and offsets[1] == 55296
    assert liveness.liveness_bound(chain) == 55296
    best, arena, _, optimal = placement.place(chain, budget(1, 3000))
    assert arena == 55296 and optimal
    assert_valid(chain, best)


def test_offline_offsets_are_fixed_and_scratch_goes_around_them() -> None:
    bufs = [Buffer((0,), 64, 0, 1), Buffer((1,), 64, 1, 2), Buffer((), 32, 1, 1, op=0), Buffer((2,), 32, 2, 2)]
    offsets, top = placement.simulate_tflm(bufs, fixed={0: 0, 1: 96, 3: 0})
    assert offsets[:2] == [0, 96] and offsets[2] == 64  # the scratch fits the gap the plan left at scope 1
    assert top == 160


def test_reference_scratch_of_mean() -> None:
    g = make_graph([((1, 4, 4, 8), "int8"), ((2,), "int32", "const"), ((1, 8), "int8")],
                   [("MEAN", [0, 1], [2])], inputs=[0], outputs=[2])
    # an int32 accumulator per output element, then input-rank and axis-count ints (reduce_common.cc)
    assert liveness.reference_scratch(g) == {0: [32, 16, 8]}
    bufs = liveness.build_buffers(g, [0], liveness.reference_scratch(g))
    assert [b.size for b in bufs if b.is_scratch] == [32, 16, 16]


# ------------------------------------------------------------------ placement


def test_placements_are_valid_and_never_below_the_bound() -> None:
    rng = random.Random(11)
    for _ in range(200):
        bufs = random_buffers(rng, rng.randint(1, 30))
        offsets, arena, _, optimal = placement.place(bufs, budget(1, 3000))
        assert assert_valid(bufs, offsets) == arena >= liveness.liveness_bound(bufs)
        if len(bufs) <= 5:  # small enough for the exact search to finish, and to check it
            assert optimal and arena == exhaustive(bufs)
        assert arena <= placement.simulate_tflm(bufs)[1]


def test_exact_search_finds_the_optimum_where_every_heuristic_misses() -> None:
    sizes_lives = [(16, 0, 0), (16, 4, 6), (16, 3, 3), (96, 5, 5), (80, 2, 4), (64, 4, 6), (96, 3, 3)]
    bufs = [Buffer((i,), s, a, b) for i, (s, a, b) in enumerate(sizes_lives)]
    p = placement._Problem(bufs)
    assert placement._heuristics(p)[1] == 256
    offsets, arena, method, optimal = placement.place(bufs, budget(2, 3000))
    assert (arena, method, optimal) == (192, "branch-and-bound", True)
    assert exhaustive(bufs) == 192
    assert_valid(bufs, offsets)


def test_exact_search_agrees_with_exhaustive_enumeration() -> None:
    rng = random.Random(5)
    for _ in range(60):
        bufs = random_buffers(rng, rng.randint(2, 6))
        p = placement._Problem(bufs)
        offsets, arena, finished = placement._branch_and_bound(p, 1 << 30, budget(5))
        assert finished and offsets is not None
        assert arena == exhaustive(bufs) == assert_valid(bufs, offsets)


# ------------------------------------------------------------------ operator order


def two_branches(big: int = 64, small: int = 1) -> Graph:
    """x -> a1 -> A (wide, kept to the end) and x -> b1 (wide) -> B (narrow); A + B -> y.

    Written branch A first, as a converter following definition order does: then b1 is computed while A
    is held. Branch B first is better."""
    shp = (1, 16, 16)
    return make_graph(
        [((*shp, 4), "int8"), ((*shp, 4), "int8"), ((*shp, 32), "int8"), ((*shp, big), "int8"),
         ((*shp, small), "int8"), ((*shp, 32), "int8"), ((1, 10), "int8")],
        [("CONV_2D", [0], [1]), ("CONV_2D", [1], [2]), ("CONV_2D", [0], [3]), ("CONV_2D", [3], [4]),
         ("ADD", [2, 4], [5]), ("FULLY_CONNECTED", [5], [6])],
        inputs=[0], outputs=[6])


def topological_orders(g: Graph) -> list[tuple[int, ...]]:
    producer = {t: layer.index for layer in g.layers for t in layer.outputs}
    orders = []
    for perm in itertools.permutations(range(len(g.layers))):
        pos = {op: k for k, op in enumerate(perm)}
        if all(pos[producer[t]] < pos[layer.index] for layer in g.layers for t in layer.inputs if t in producer):
            orders.append(perm)
    return orders


def test_best_order_is_the_best_topological_order() -> None:
    g = two_branches()
    order, bound, exact = reorder.best_order(g, {}, budget(5))
    every = {o: liveness.liveness_bound(liveness.build_buffers(g, o)) for o in topological_orders(g)}
    assert exact and bound == min(every.values()) == every[order]
    written = every[tuple(range(len(g.layers)))]
    assert bound < written  # 17,664 B against 25,600 B
    plan = planner.plan(g)
    assert plan.reordered and plan.order == order and plan.arena_bytes == plan.bound_bytes == bound
    assert plan.original_bound_bytes == written and plan.greedy_bytes >= written


def test_beam_search_still_returns_a_topological_order() -> None:
    g = two_branches()
    order, bound, exact = reorder.best_order(g, {}, budget(5), max_states=1)
    assert order in topological_orders(g) and not exact
    assert bound == liveness.liveness_bound(liveness.build_buffers(g, order))


def test_graphs_with_state_keep_their_order() -> None:
    g = make_graph([((1, 8), "int8"), ((1, 8), "int8", "var"), ((1, 8), "int8"), ((1, 8), "int8")],
                   [("ADD", [0, 1], [2]), ("ADD", [0, 0], [3])], inputs=[0], outputs=[2, 3])
    assert reorder.best_order(g, {}, budget(1))[0] == (0, 1)


def test_multi_subgraph_models_are_refused_with_a_reason() -> None:
    g = make_graph([((1, 8), "int8"), ((1, 8), "int8")], [("ADD", [0, 0], [1])], [0], [1], subgraphs=2)
    with pytest.raises(ModelError, match="2 subgraphs"):
        planner.plan(g)


# ------------------------------------------------------------------ scale


def synthetic_network(blocks: int, seed: int = 0) -> Graph:
    """Inception/residual-like blocks of random widths: 3 branches of 1-3 convolutions, concatenated."""
    rng = random.Random(seed)
    tensors: list[Spec] = [((1, 24, 24, 8), "int8")]
    layers: list[tuple[str, list[int], list[int]]] = []

    def new(ch: int, hw: int) -> int:
        tensors.append(((1, hw, hw, ch), "int8"))
        return len(tensors) - 1

    x, hw = 0, 24
    for b in range(blocks):
        if b and b % 6 == 0 and hw > 3:
            hw //= 2
        ends = []
        for _ in range(3):
            t = x
            for _ in range(rng.randint(1, 3)):
                out = new(rng.choice([4, 8, 16, 32, 48]), hw)
                layers.append(("CONV_2D", [t], [out]))
                t = out
            ends.append(t)
        cat = new(rng.choice([8, 16, 24]), hw)
        layers.append(("CONCATENATION", ends, [cat]))
        x = cat
    return make_graph(tensors, layers, inputs=[0], outputs=[x])


def test_two_hundred_tensors_are_planned_within_the_time_limit() -> None:
    g = synthetic_network(26)
    assert 190 <= len(g.tensors) <= 230
    t0 = time.monotonic()
    plan = planner.plan(g, time_limit=1.0)
    wall = time.monotonic() - t0
    assert wall <= 1.0, f"planning took {wall:.2f} s"
    assert plan.bound_bytes <= plan.arena_bytes <= plan.greedy_bytes
    assert plan.arena_bytes <= plan.bound_bytes * 1.02
    assert_valid(list(plan.buffers), [plan.offsets[b.tensors[0]] for b in plan.buffers])
    assert sorted(plan.order) == list(range(len(g.layers)))


def wide_network(branches: int, depth: int, seed: int = 0) -> Graph:
    """``branches`` parallel chains of ``depth`` convolutions from one input, concatenated: the number of
    partial orders explodes, so the reordering search runs as a beam search against its deadline."""
    rng = random.Random(seed)
    tensors: list[Spec] = [((1, 16, 16, 8), "int8")]
    layers: list[tuple[str, list[int], list[int]]] = []
    ends = []
    for _ in range(branches):
        t = 0
        for _ in range(depth):
            tensors.append(((1, 16, 16, rng.choice([2, 8, 32, 64])), "int8"))
            layers.append(("CONV_2D", [t], [len(tensors) - 1]))
            t = len(tensors) - 1
        ends.append(t)
    tensors.append(((1, 16, 16, 16), "int8"))
    layers.append(("CONCATENATION", ends, [len(tensors) - 1]))
    return make_graph(tensors, layers, inputs=[0], outputs=[len(tensors) - 1])


def test_plans_do_not_depend_on_timing() -> None:
    g = synthetic_network(26)  # needs the reordering search and the local search
    first, second = planner.plan(g), planner.plan(g)
    assert not first.time_limited and first.method == "local-search" and first.reordered
    assert (first.offsets, first.order, first.arena_bytes) == (second.offsets, second.order, second.arena_bytes)


def test_wide_graphs_stay_within_the_time_limit() -> None:
    g = wide_network(50, 4)
    t0 = time.monotonic()
    plan = planner.plan(g, time_limit=1.0)
    assert time.monotonic() - t0 <= 1.0
    # the beam keeps the model's own order alive, so reordering never makes the bound worse
    assert plan.bound_bytes <= plan.original_bound_bytes and plan.arena_bytes <= plan.greedy_bytes


def test_offline_offsets_buffer_layout() -> None:
    raw = memplan.encode_offsets([0, -1, 48])
    assert raw == bytes.fromhex("01000000" "00000000" "03000000" "00000000" "ffffffff" "30000000")
