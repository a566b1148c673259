"""Operator and data-type compatibility of a graph with a target profile.

Each ``constraint_*`` function's docstring is both the user-facing reason
shown when it fails and a line of the generated supported-operators document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgekit.analysis.graph import Graph
from edgekit.profiles import TargetProfile


@dataclass(frozen=True)
class Finding:
    constraint: str
    reason: str
    items: tuple[str, ...]


def constraint_ops_registered(graph: Graph, profile: TargetProfile) -> tuple[str, ...]:
    """Every operator must be one the target's runtime registers"""
    if profile.partial_delegation and not profile.require_full_delegation:
        return ()  # the CPU runs what the delegate does not take: a coverage warning (delegate_coverage)
    return tuple(op for op in graph.ops if not op.startswith("CUSTOM:") and not profile.op_supported(op))


def constraint_no_custom_ops(graph: Graph, profile: TargetProfile) -> tuple[str, ...]:
    """Custom operators need an implementation linked into the application"""
    return tuple(op for op in graph.ops if op.startswith("CUSTOM:"))


def constraint_dtypes(graph: Graph, profile: TargetProfile) -> tuple[str, ...]:
    """Every tensor's data type must be one the target's runtime accepts"""
    if profile.partial_delegation and not profile.require_full_delegation:
        return ()  # as for operators: the delegate's data types decide what falls back to the CPU
    return tuple(dt for dt in graph.dtypes if dt not in profile.dtypes)


def constraint_single_entry(graph: Graph, profile: TargetProfile) -> tuple[str, ...]:
    """TFLM runs subgraph 0; further subgraphs are only reached through IF/WHILE/CALL_ONCE"""
    if not profile.is_tflm or graph.subgraphs == 1:
        return ()
    if {"IF", "WHILE", "CALL_ONCE"} & set(graph.ops):
        return ()
    return (f"{graph.subgraphs} subgraphs",)


def constraint_tflm_no_float16(graph: Graph, profile: TargetProfile) -> tuple[str, ...]:
    """float16 is not a TFLM data type: TFLM has no float16 kernels (deploy int8, or float32 on a core with an FPU)"""
    if not profile.is_tflm or "float16" not in graph.dtypes:
        return ()
    count = sum(1 for t in graph.tensors if t.dtype == "float16")
    return (f"{count} float16 tensor{'s' if count > 1 else ''}",)


def constraint_tflm_no_hybrid(graph: Graph, profile: TargetProfile) -> tuple[str, ...]:
    """hybrid models do not run on TFLM: float activations with int8 weights (dynamic-range quantization) need
    hybrid kernels TFLM does not have (deploy full int8)"""
    if not profile.is_tflm:
        return ()
    hybrid = graph.hybrid_layers()
    items = tuple(f"{la.op} (operator #{la.index})" for la in hybrid[:3])
    return (*items, f"{len(hybrid) - 3} more") if len(hybrid) > 3 else items


CONSTRAINTS: list[Callable[[Graph, TargetProfile], tuple[str, ...]]] = [
    constraint_ops_registered,
    constraint_no_custom_ops,
    constraint_dtypes,
    constraint_single_entry,
    constraint_tflm_no_float16,
    constraint_tflm_no_hybrid,
]

# constraints that stop the TFLM interpreter from running the model at all
TFLM_BLOCKERS = (constraint_tflm_no_float16, constraint_tflm_no_hybrid)


@dataclass(frozen=True)
class OpPlacement:
    index: int
    op: str
    delegated: bool
    reason: str = ""  # why the delegate does not take it (operator, data type or shape)


@dataclass(frozen=True)
class DelegateCoverage:
    """Which operators a LiteRT delegate takes, in how many partitions, and what the CPU runs."""

    delegate: str
    placements: tuple[OpPlacement, ...]

    @property
    def delegated(self) -> int:
        return sum(p.delegated for p in self.placements)

    @property
    def on_cpu(self) -> list[OpPlacement]:
        return [p for p in self.placements if not p.delegated]

    @property
    def partitions(self) -> int:
        """Runs of delegated operators in execution order: each is one delegate partition, with a hand-over
        to the CPU and back between them (LiteRT may merge independent runs; never fewer than this bound's
        connected pieces)."""
        runs, previous = 0, False
        for p in self.placements:
            runs += p.delegated and not previous
            previous = p.delegated
        return runs

    def summary(self) -> str:
        total = len(self.placements)
        text = (f"{self.delegate} delegate: {self.delegated} of {total} operators delegated in {self.partitions} "
                f"partition{'s' if self.partitions != 1 else ''}")
        if self.on_cpu:
            shown = "; ".join(f"{p.op} (#{p.index}: {p.reason})" for p in self.on_cpu[:5])
            more = f"; and {len(self.on_cpu) - 5} more" if len(self.on_cpu) > 5 else ""
            text += f"; on the CPU: {shown}{more}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {"delegate": self.delegate, "operators": len(self.placements), "delegated": self.delegated,
                "partitions": self.partitions,
                "on_cpu": [{"index": p.index, "op": p.op, "reason": p.reason} for p in self.on_cpu]}


MAX_DELEGATE_RANK = 4  # the GPU delegate's tensors are at most 4-D (BHWC)


def delegate_coverage(graph: Graph, profile: TargetProfile) -> DelegateCoverage | None:
    """Per operator, whether the profile's delegate takes it and, if not, why; None for other targets."""
    if not profile.partial_delegation:
        return None
    placements = []
    for layer in graph.layers:
        reason = ""
        if not profile.op_supported(layer.op):
            reason = f"operator not supported by the {profile.delegate} delegate"
        else:
            tensors = [graph.tensors[t] for t in (*layer.inputs, *layer.outputs) if t >= 0]
            bad = sorted({t.dtype for t in tensors if t.dtype not in profile.dtypes})
            deep = max((len(t.shape) for t in tensors), default=0)
            if bad:
                reason = f"data type {', '.join(bad)}"
            elif profile.delegate == "gpu" and deep > MAX_DELEGATE_RANK:
                reason = f"{deep}-D tensor (the GPU delegate takes up to {MAX_DELEGATE_RANK}-D)"
        placements.append(OpPlacement(layer.index, layer.op, not reason, reason))
    return DelegateCoverage(profile.delegate, tuple(placements))


def _doc(constraint: Callable[..., object]) -> str:
    """A constraint's docstring as one line: the user-facing reason."""
    return " ".join((constraint.__doc__ or "").split())


def check(graph: Graph, profile: TargetProfile) -> list[Finding]:
    findings = []
    for constraint in CONSTRAINTS:
        items = constraint(graph, profile)
        if items:
            findings.append(Finding(constraint.__name__, _doc(constraint), items))
    return findings


def tflm_blockers(graph: Graph, profile: TargetProfile) -> list[str]:
    """Why the TFLM interpreter cannot run ``graph`` at all (empty when it can, or for other runtimes):
    each a reason with the items it concerns."""
    out = []
    for constraint in TFLM_BLOCKERS:
        items = constraint(graph, profile)
        if items:
            reason = _doc(constraint).split(":")[0]
            out.append(f"{reason}: {', '.join(items)}")
    return out


def unsupported_ops(graph: Graph, profile: TargetProfile) -> list[str]:
    return sorted(set(constraint_ops_registered(graph, profile)) | set(constraint_no_custom_ops(graph, profile)))


def supported_ops_markdown(profile: TargetProfile) -> str:
    """The supported-operators document for one target, generated from the constraints."""
    lines = [f"# Supported operators: {profile.name}", "", profile.description, "",
             f"Operator list source: {profile.ops_source or 'profile'}", "", "## Constraints", ""]
    lines += [f"- {_doc(c)}" for c in CONSTRAINTS]
    lines += ["", "## Operators", ""]
    lines += ["- every LiteRT builtin operator"] if profile.allow_all_builtin else [
        f"- {op}" for op in sorted(profile.ops)
    ]
    lines += ["", "## Data types", "", ", ".join(profile.dtypes), ""]
    return "\n".join(lines)
