"""Offsets for buffers with lifetimes: TFLM's greedy planner reproduced, heuristics, local search and an
exact branch-and-bound search.

Placement takes the best of several orderings (TFLM's own, size, lifetime, area, conflict degree, first
use, breadth) with first-fit and best-fit; above the liveness bound, a local search over the sequence
(many buffers) or an exact branch-and-bound search (up to ``EXACT_MAX_BUFFERS``) continues within a
:class:`Budget`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgekit import options
from edgekit.analysis.liveness import Buffer, liveness_bound

EXACT_MAX_BUFFERS = 60  # above this the exact search rarely finishes; a local search improves the heuristics
PLAN_PLACE_STEPS = options.Option(
    "plan_place_steps", 3000, "nodes of the exact placement search, or 1/20 of that in local-search moves, per "
    "operator order (a fixed amount of work, so that a plan does not depend on the machine's speed)")


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
