"""Result types of a fit search: the ladder's rungs, the candidates built from them, the result.

They live below both the search and the reports, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GOALS = ("size", "latency", "ram")


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: a named way to build a candidate."""

    name: str
    stage: str  # quantize | coreml
    mode: str  # quantize mode, or Core ML compression kind
    value: float = 0.0  # palettization bits / pruning sparsity


@dataclass
class Candidate:
    name: str
    stage: str
    mode: str
    value: float
    flash_bytes: int = 0
    ram_bytes: int = 0
    ram_kind: str = ""
    metric: float | None = None
    drop: float | None = None
    latency_ms: float | None = None
    latency_kind: str = ""
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    fits: bool = False
    within_drop: bool = False
    evaluated_on: str = ""
    stripped: str = ""
    memory_plan: str = ""  # what the offline memory planner did (TFLM candidates)
    error: str = ""
    cached: bool = False
    seconds: float = 0.0
    artifact: str = ""  # file name in the cache entry

    @property
    def eligible(self) -> bool:
        return not self.error and self.fits and self.within_drop


@dataclass
class FitResult:
    model: str
    target: str
    metric: str
    max_drop: float
    goal: str
    baseline: float
    candidates: list[Candidate]
    winner: Candidate | None
    closest: Candidate | None
    notes: list[str]
    calibration: str
    eval_source: str
    eval_samples: int
    out_dir: Path | None = None
    artifact_path: Path | None = None
    seconds: float = 0.0

    @property
    def fits(self) -> bool:
        return self.winner is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "fits": self.fits,
            "metric": self.metric,
            "max_drop": self.max_drop,
            "goal": self.goal,
            "baseline": self.baseline,
            "calibration": self.calibration,
            "eval": {"source": self.eval_source, "samples": self.eval_samples},
            "winner": self.winner.name if self.winner else None,
            "closest": self.closest.name if (self.closest and not self.winner) else None,
            "artifact": self.artifact_path.name if self.artifact_path else None,
            "candidates": [asdict(c) for c in self.candidates],
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }
