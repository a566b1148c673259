"""Choosing the winner among the candidates that meet every budget, and the closest when none does."""

from __future__ import annotations

import math
from collections.abc import Callable

from edgekit.fitting.types import Candidate

LATENCY_TIE = 0.25


def flash_used(c: Candidate) -> int:
    """What the candidate takes of flash: on TFLM targets the model and TFLM's code for its operators (the
    flash budget's figure), else the artifact's bytes."""
    used = c.budgets.get("flash", {}).get("used")
    return int(used) if isinstance(used, int) else c.flash_bytes


def rank_key(goal: str) -> Callable[[Candidate], tuple[float, ...]]:
    def key(c: Candidate) -> tuple[float, ...]:
        lat = c.latency_ms if c.latency_ms is not None else float("inf")
        drop = c.drop if c.drop is not None else float("inf")
        if goal == "latency":
            # latencies within LATENCY_TIE of each other are a tie (host timing noise): then size decides
            bucket = math.floor(math.log(lat) / math.log(1 + LATENCY_TIE)) if 0 < lat < float("inf") else lat
            return (bucket, flash_used(c), drop)
        if goal == "ram":
            return (c.ram_bytes, flash_used(c), drop)
        return (flash_used(c), c.ram_bytes, drop)
    return key


def select(cands: list[Candidate], goal: str) -> Candidate | None:
    eligible = [c for c in cands if c.eligible]
    return min(eligible, key=rank_key(goal)) if eligible else None


def _overshoot(c: Candidate) -> float:
    """How far a candidate is from fitting: summed relative overruns (drop counts per point)."""
    total = 0.0
    for b in c.budgets.values():
        if not b["fits"]:
            limit = b["limit"] or 1
            total += (b["used"] - b["limit"]) / limit
    if c.drop is not None and not c.within_drop:
        total += c.drop
    return total


def closest(cands: list[Candidate]) -> Candidate | None:
    ok = [c for c in cands if not c.error]
    return min(ok, key=_overshoot) if ok else None
