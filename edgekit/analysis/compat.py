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
    return tuple(op for op in graph.ops if not op.startswith("CUSTOM:") and not profile.op_supported(op))


def constraint_no_custom_ops(graph: Graph, profile: TargetProfile) -> tuple[str, ...]:
    """Custom operators need an implementation linked into the application"""
    return tuple(op for op in graph.ops if op.startswith("CUSTOM:"))


def constraint_dtypes(graph: Graph, profile: TargetProfile) -> tuple[str, ...]:
    """Every tensor's data type must be one the target's runtime accepts"""
    return tuple(dt for dt in graph.dtypes if dt not in profile.dtypes)


def constraint_single_entry(graph: Graph, profile: TargetProfile) -> tuple[str, ...]:
    """TFLM runs subgraph 0; further subgraphs are only reached through IF/WHILE/CALL_ONCE"""
    if not profile.is_tflm or graph.subgraphs == 1:
        return ()
    if {"IF", "WHILE", "CALL_ONCE"} & set(graph.ops):
        return ()
    return (f"{graph.subgraphs} subgraphs",)


CONSTRAINTS: list[Callable[[Graph, TargetProfile], tuple[str, ...]]] = [
    constraint_ops_registered,
    constraint_no_custom_ops,
    constraint_dtypes,
    constraint_single_entry,
]


def check(graph: Graph, profile: TargetProfile) -> list[Finding]:
    findings = []
    for constraint in CONSTRAINTS:
        items = constraint(graph, profile)
        if items:
            findings.append(Finding(constraint.__name__, (constraint.__doc__ or "").strip(), items))
    return findings


def unsupported_ops(graph: Graph, profile: TargetProfile) -> list[str]:
    return sorted(set(constraint_ops_registered(graph, profile)) | set(constraint_no_custom_ops(graph, profile)))


def supported_ops_markdown(profile: TargetProfile) -> str:
    """The supported-operators document for one target, generated from the constraints."""
    lines = [f"# Supported operators: {profile.name}", "", profile.description, "",
             f"Operator list source: {profile.ops_source or 'profile'}", "", "## Constraints", ""]
    lines += [f"- {(c.__doc__ or '').strip()}" for c in CONSTRAINTS]
    lines += ["", "## Operators", ""]
    lines += ["- every LiteRT builtin operator"] if profile.allow_all_builtin else [
        f"- {op}" for op in sorted(profile.ops)
    ]
    lines += ["", "## Data types", "", ", ".join(profile.dtypes), ""]
    return "\n".join(lines)
