"""`report.html`: one self-contained page (inline CSS, SVG and a few lines of script; nothing fetched)
for `analyze -o`, `fit -o` and `bench -o`: budgets with their margins, the per-layer table with memory
bars and the tensors live at the peak, the candidates' size/accuracy plot, the latency histogram and
the per-operator times.

The page sets ``data-rendered`` on ``<body>`` once its script ran and records any script error in
``data-errors``: the browser test reads both from the rendered DOM.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.analysis.graph import Graph
    from edgekit.analyzer import AnalysisReport
    from edgekit.bench.runner import BenchResult
    from edgekit.fitting.types import FitResult
    from edgekit.profiles import TargetProfile


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgekit")
    except PackageNotFoundError:
        return "0+unknown"


def liveness(graph: Graph) -> list[tuple[int, int, list[int]]]:
    """Per operator step of the execution order: (step, live bytes, live non-constant tensor indices)."""
    n = len(graph.layers)
    first: dict[int, int] = {i: 0 for i in graph.inputs}
    last: dict[int, int] = {}
    for step, layer in enumerate(graph.layers):
        for t in layer.outputs:
            first.setdefault(t, step)
            last[t] = max(last.get(t, step), step)
        for t in layer.inputs:
            if t < 0 or graph.tensors[t].is_const:
                continue
            first.setdefault(t, 0)
            last[t] = max(last.get(t, step), step)
    for o in graph.outputs:
        last[o] = max(n - 1, 0)
    for tensor in graph.tensors:
        if tensor.is_variable:
            first[tensor.index], last[tensor.index] = 0, max(n - 1, 0)
    steps = []
    for step in range(n):
        live = sorted(t for t in first if first[t] <= step <= last.get(t, first[t]))
        steps.append((step, sum(graph.tensors[t].nbytes for t in live), live))
    return steps


def _budgets(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for b in items:
        limit, used = b["limit"], b["used"]
        frac = (used / limit) if limit else (0.0 if not used else 1.0)
        out.append({**b, "pct": round(min(frac, 1.0) * 100, 1), "over": not b["fits"],
                    "ratio": f"{frac * 100:.1f}%" if limit else ("none" if not used else "any is too many")})
    return out


def _page(title: str, sections: dict[str, Any]) -> str:
    from edgekit.report.svg import render_template

    return render_template("report.html.j2", {"title": title, "version": _version(), **sections})


def analysis_html(r: AnalysisReport) -> str:
    g = r.graph
    steps = liveness(g) if g.layers else []
    peak_step = max(steps, key=lambda s: s[1]) if steps else (0, 0, [])
    peak = max(peak_step[1], 1)
    layers = []
    for la, (_, live, _) in zip(g.layers, steps, strict=False):
        layers.append({"index": la.index, "op": la.op, "inputs": " ".join(str(list(s)) for s in la.input_shapes),
                       "outputs": " ".join(str(list(s)) for s in la.output_shapes), "params": la.params,
                       "macs": la.macs, "weight_bytes": la.weight_bytes, "live": live,
                       "pct": round(100 * live / peak, 1), "peak": la.index == peak_step[0]})
    at_peak = [{"index": t, "name": g.tensors[t].name or f"tensor {t}", "shape": list(g.tensors[t].shape),
                "dtype": g.tensors[t].dtype, "bytes": g.tensors[t].nbytes} for t in peak_step[2]]
    budgets = _budgets([{"name": b.name, **b.to_dict()} for b in r.budgets])
    return _page(f"edgekit analyze: {Path(r.model).name} -> {r.target}", {
        "kind": "analyze", "summary": {"model": r.model, "target": r.target, "runtime": r.runtime,
                                       "artifact": r.artifact_kind, "verdict": "FITS" if r.fits else "DOES NOT FIT",
                                       "fits": r.fits, "flash": r.flash_bytes, "ram": r.ram_bytes,
                                       "ram_kind": r.ram_kind, "params": g.params, "macs": g.macs},
        "budgets": budgets, "layers": layers, "peak": {"step": peak_step[0], "bytes": peak_step[1],
                                                        "tensors": at_peak},
        "notes": list(r.notes), "candidates": [], "plot": None, "bench": None})


def fit_html(r: FitResult, profile: TargetProfile, plot_svg: str | None) -> str:
    from edgekit.report.fit_report import HEADERS, candidate_rows, measured_lines

    chosen = r.winner or r.closest
    budgets = _budgets([{"name": k, **v} for k, v in chosen.budgets.items()]) if chosen else []
    return _page(f"edgekit fit: {Path(r.model).name} -> {r.target}", {
        "kind": "fit", "summary": {"model": r.model, "target": r.target, "runtime": profile.runtime,
                                   "artifact": chosen.name if chosen else "-",
                                   "verdict": f"WINNER {r.winner.name}" if r.winner else "NOTHING FITS",
                                   "fits": r.fits, "flash": chosen.flash_bytes if chosen else 0,
                                   "ram": chosen.ram_bytes if chosen else 0,
                                   "ram_kind": chosen.ram_kind if chosen else "", "params": None, "macs": None},
        "budgets": budgets, "layers": [], "peak": None,
        "notes": list(r.notes) + [f"int8 layer {i}: {e['layer']} ({e['op']}) error {e['error']:.4f}, added "
                                  f"{e['added']:.4f}" for i, e in enumerate(r.layer_errors[:5], 1)]
        + [f"{c.name}: verified: {v}" for c in r.candidates for v in c.verified if "bit-exact" in v]
        + [f"estimate vs measurement: {line}" for line in measured_lines(r)],
        "candidates": {"headers": HEADERS, "rows": [[str(c) for c in row] for row in candidate_rows(r)]},
        "plot": _inline_svg(plot_svg), "bench": None})


def bench_html(r: BenchResult, histogram_svg: str) -> str:
    total = sum(o["total_us"] for o in r.ops) or 1
    ops = [{**o, "pct": round(100 * o["total_us"] / total, 1)} for o in sorted(r.ops, key=lambda o: -o["total_us"])]
    budgets = []
    if r.budget_ms is not None:
        used = round(r.stats["median_us"] / 1000, 4)
        budgets = _budgets([{"name": "latency (median)", "limit": r.budget_ms, "used": used,
                             "fits": used <= r.budget_ms, "margin": round(r.budget_ms - used, 4), "unit": "ms",
                             "note": r.time_kind}])
    return _page(f"edgekit bench: {Path(r.model).name} on {r.device}", {
        "kind": "bench", "summary": {"model": r.model, "target": r.target, "runtime": r.device,
                                     "artifact": r.time_kind, "verdict": {None: "not judged", True: "within budget",
                                                                          False: "OVER BUDGET"}[r.within_budget],
                                     "fits": r.within_budget is not False, "flash": None,
                                     "ram": r.arena_min if r.arena_min is not None else r.arena_used,
                                     "ram_kind": "device arena_min: the smallest arena that allocates"
                                     if r.arena_min is not None else
                                     "device arena_used: TFLM's figure, not a safe arena size",
                                     "params": None, "macs": None},
        "budgets": budgets, "layers": [], "peak": None, "notes": list(r.notes), "candidates": [],
        "plot": _inline_svg(histogram_svg),
        "bench": {"stats": r.stats, "runs": r.runs, "warmup": r.warmup, "checks": r.checks, "ops": ops}})


def _inline_svg(svg: str | None) -> str | None:
    """An SVG document as markup safe to place inline (its XML prolog dropped); None stays None."""
    if not svg:
        return None
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else html.escape(svg)
