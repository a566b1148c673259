"""One level-3 architecture: a pruning ratio per dependency group, an importance criterion, and a retained
energy for low-rank factorization. Built the same way (deterministically) by the search's cheap proxy and
by a worker process that fine-tunes it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgekit.compress import distill, lowrank, prune
from edgekit.compress.kgraph import Group, KGraph

IMPORTANCE_SAMPLES = 256  # training samples for the Taylor criterion and the BatchNorm re-estimation


@dataclass(frozen=True)
class Spec:
    """``ratios``: (group key, share of its channels removed) pairs; a group's key is its first producer's
    name in sorted order, stable across a save and reload of the model."""

    ratios: tuple[tuple[str, float], ...] = ()
    criterion: str = "l1"
    energy: float = 0.0  # low-rank retained energy (0 = no factorization)
    origin: str = ""  # how the search came to it (uniform / sensitivity / random / low-rank)

    def key(self) -> str:
        body = {"ratios": [[k, round(v, 4)] for k, v in self.ratios], "criterion": self.criterion,
                "energy": round(self.energy, 4)}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def label(self) -> str:
        vals = [v for _, v in self.ratios if v > 0]
        prune_txt = (f"prune {np.mean(vals) * 100:.0f}% avg over {len(vals)} groups ({self.criterion})"
                     if vals else "no pruning")
        return prune_txt + (f", low-rank {self.energy:.2f} energy" if self.energy else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Spec:
        return Spec(tuple((str(k), float(v)) for k, v in d.get("ratios", ())), str(d.get("criterion", "l1")),
                    float(d.get("energy", 0.0)), str(d.get("origin", "")))


def group_key(grp: Group) -> str:
    return sorted(grp.producers)[0]


def groups_by_key(g: KGraph) -> dict[str, Group]:
    return {group_key(grp): grp for grp in g.prunable()}


@dataclass
class Built:
    model: Any
    kept: dict[str, int] = field(default_factory=dict)  # group key -> channels kept (pruned groups)
    factors: list[lowrank.Factor] = field(default_factory=list)


def build(teacher: Any, spec: Spec, x: np.ndarray, y: np.ndarray | None = None, g: KGraph | None = None,
          scores: dict[int, np.ndarray] | None = None) -> Built:
    """The candidate model: pruned by ``spec.ratios`` (``scores``: precomputed importance for ``spec``'s
    criterion), factorized to ``spec.energy``, BatchNorm statistics re-estimated on ``x``."""
    g = g or KGraph(teacher)
    by_key = groups_by_key(g)
    ratios = {by_key[k].gid: r for k, r in spec.ratios if k in by_key and r > 0}
    counts = prune.keep_counts(g, ratios)
    model = teacher
    kept: dict[str, int] = {}
    sample = x[:IMPORTANCE_SAMPLES]
    if counts:
        if scores is None:
            labels = None if y is None else y[:IMPORTANCE_SAMPLES]
            scores = prune.importance(g, spec.criterion, sample, labels)
        model = prune.apply(g, prune.plan(g, counts, scores))
        kept = {group_key(g.groups[gid]): n for gid, n in counts.items()}
    factors: list[lowrank.Factor] = []
    if spec.energy:
        factors = lowrank.plan(model, spec.energy)
        if factors:
            model = lowrank.apply(model, factors)
    if model is teacher:
        model = prune.apply(g, {})  # a copy: fine-tuning never touches the teacher
    distill.recalibrate_batchnorm(model, sample)
    return Built(model, kept, factors)
