"""bench's outputs: the text summary, bench.json and the latency histogram."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgekit.bench.runner import BenchResult


def render_text(r: BenchResult) -> str:
    from edgekit.report.text import table

    s = r.stats
    lines = [f"bench {Path(r.model).name} on {r.device} ({r.target}); times: {r.time_kind}"]
    if r.method == "window":
        lines.append(f"method: window (MLPerf Tiny's runner method): {r.runs} windows of `infer "
                     f"{r.window_inferences} {r.warmup}`, time per inference from each window's device stamps; "
                     f"median throughput {r.throughput_inf_per_s:.3f} inf/s")
    else:
        lines.append(f"method: per-inference: {r.runs} runs of `infer 1 0` after {r.warmup} warm-up")
    lines.append(f"latency per inference: min {s['min_us']:.1f} / median {s['median_us']:.1f} / p90 {s['p90_us']:.1f}"
                 f" / max {s['max_us']:.1f} us, std {s['std_us']:.1f} us")
    if r.budget_ms is not None:
        verdict = "not judged" if r.within_budget is None else ("within" if r.within_budget else "OVER")
        lines.append(f"latency budget {r.budget_ms} ms: {verdict}")
    lines.append(f"input: {r.input_convention}")
    for k, v in r.checks.items():
        lines.append(f"check {k}: {v}")
    if r.ops:
        lines.append(table(["op", "calls", "total us"], [(o["op"], o["calls"], o["total_us"]) for o in r.ops], "lrr"))
    overhead = ("not computed" if r.host_overhead_ms_per_command is None
                else f"{r.host_overhead_ms_per_command:.3f} ms per command")
    lines.append(f"wire: {r.wire_bytes_per_input_byte} bytes per input byte (hex, {r.upload_bytes_per_line} bytes "
                 f"per line); host overhead {overhead}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def write_report(r: BenchResult, out: Path, force: bool) -> None:
    from edgekit.codegen import render
    from edgekit.report.html import bench_html

    svg = histogram_svg(r)
    files = {"bench.json": json.dumps(r.to_dict(), indent=2) + "\n", "latency.svg": svg,
             "report.html": bench_html(r, svg)}
    render.write_tree(out, files, force, inputs=[r.model], command="bench")


def histogram_svg(r: BenchResult, bins: int = 20) -> str:
    from edgekit.report.svg import render_template

    a = np.asarray(r.latencies_us)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(a, bins=bins, range=(lo, hi))
    width, height, left, bottom, top = 640, 360, 60, 310, 30
    bw = (width - left - 20) / bins
    peak = max(int(counts.max()), 1)
    bars = [{"x": round(left + i * bw, 1), "w": round(bw - 1, 1), "h": round((bottom - top) * c / peak, 1),
             "y": round(bottom - (bottom - top) * c / peak, 1), "count": int(c),
             "lo": f"{edges[i]:.1f}", "hi": f"{edges[i + 1]:.1f}"} for i, c in enumerate(counts)]
    return render_template("latency.svg.j2", {
        "width": width, "height": height, "left": left, "bottom": bottom, "top": top, "bars": bars,
        "title": f"{Path(r.model).name} on {r.device}", "xlabel": f"latency (us, {r.time_kind.split(' (')[0]})",
        "lo": f"{lo:.1f}", "hi": f"{hi:.1f}", "peak": peak})
