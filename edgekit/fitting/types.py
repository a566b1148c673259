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
    stage: str  # a builder of fitting.build.BUILDERS: quantize | coreml | int4 | lut | mixed | aeq | cluster
    mode: str  # quantize mode, Core ML compression kind, or the stage's variant
    value: float = 0.0  # palettization bits / pruning sparsity / layers kept in higher precision / clusters k
    level: int = 1  # the --level that introduces it


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
    level: int = 1
    metrics: dict[str, float] = field(default_factory=dict)  # every --metric, by name (metric = the first)
    saved: dict[str, int] = field(default_factory=dict)  # bytes each method saved, in the order applied
    verified: list[str] = field(default_factory=list)  # where the artifact was run and checked, and how
    detail: str = ""  # what the method did (layers packed, kept in higher precision, ...)
    measured: dict[str, Any] = field(default_factory=dict)  # a device's figures beside the estimate (fit.measured)

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
    level: int = 1
    metrics: list[str] = field(default_factory=list)  # every metric measured (the first governs)
    baselines: dict[str, float] = field(default_factory=dict)
    layer_errors: list[dict[str, Any]] = field(default_factory=list)  # the int8 candidate's, worst first
    layer_error_method: str = ""
    level3: dict[str, Any] = field(default_factory=dict)  # the level-3 search: every candidate, the front

    @property
    def fits(self) -> bool:
        return self.winner is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "fits": self.fits,
            "metric": self.metric,
            "metrics": self.metrics or [self.metric],
            "level": self.level,
            "max_drop": self.max_drop,
            "goal": self.goal,
            "baseline": self.baseline,
            "baselines": self.baselines or {self.metric: self.baseline},
            "calibration": self.calibration,
            "eval": {"source": self.eval_source, "samples": self.eval_samples},
            "winner": self.winner.name if self.winner else None,
            "closest": self.closest.name if (self.closest and not self.winner) else None,
            "artifact": self.artifact_path.name if self.artifact_path else None,
            "candidates": [asdict(c) for c in self.candidates],
            "layer_errors": {"method": self.layer_error_method, "layers": self.layer_errors},
            **({"level3": self.level3} if self.level3 else {}),
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }
