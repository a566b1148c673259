"""The human report of a fit: markdown, a size-vs-accuracy plot, and the terminal table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.report.text import human_bytes, table

if TYPE_CHECKING:
    from edgekit.fitting.types import Candidate, FitResult
    from edgekit.profiles import TargetProfile


def _verdict(c: Candidate, winner: Candidate | None) -> str:
    if c.error:
        return "error"
    if winner is not None and c.name == winner.name:
        return "WINNER"
    if not c.fits:
        over = [k for k, b in c.budgets.items() if not b["fits"]]
        return "over " + "/".join(over)
    if not c.within_drop:
        return "accuracy"
    return "ok"


def _latency_tag(c: Candidate) -> str:
    if c.measured and "error" not in c.measured:
        return "meas"
    return "est" if c.latency_kind.startswith("estimate") else "host"


def _flash(c: Candidate) -> str:
    """The model's bytes, plus TFLM's code for its operators where the flash budget counts it."""
    if not c.flash_bytes:
        return "-"
    parts = c.budgets.get("flash", {}).get("parts", {})
    code = parts.get("runtime code")
    return human_bytes(c.flash_bytes) + (f" + {human_bytes(code)}" if code else "")


def candidate_rows(r: FitResult, error_width: int | None = None) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for c in r.candidates:
        metric = "-" if c.metric is None else f"{c.metric:.3f}"
        drop = "-" if c.drop is None else f"{c.drop:+.3f}"
        lat = "-" if c.latency_ms is None else f"{c.latency_ms:.3f} {_latency_tag(c)}"
        rows.append((c.name, _flash(c),
                     human_bytes(c.ram_bytes) if c.ram_bytes else "-", metric, drop, lat,
                     _verdict(c, r.winner) + (" (cached)" if c.cached else ""),
                     (c.error[:error_width] if error_width else c.error) if c.error else c.evaluated_on))
    return rows


HEADERS = ["candidate", "flash (model + TFLM code)", "ram", "metric", "drop", "latency ms (est/host/meas)",
           "verdict", "evaluated on / error"]


def measured_lines(r: FitResult) -> list[str]:
    """Per measured candidate: the estimate beside the device's figure."""
    lines = []
    for c in r.candidates:
        m = c.measured
        if not m:
            continue
        if "error" in m:
            refused = not c.budgets.get("runtime", {"fits": True})["fits"]
            lines.append(f"{c.name}: {'does NOT RUN' if refused else 'not measured'} on {m['device']}: {m['error']}")
            continue
        est = m.get("estimate_ms")
        ratio = f" (measured/estimate {m['latency_ms'] / est:.2f}x)" if est else ""
        arena = (f"; arena {m['arena_host']:,} B on the host -> {m['arena_bytes']:,} B on the core"
                 if m.get("arena_host") and m.get("arena_bytes") else "")
        lines.append(f"{c.name}: estimate {'-' if est is None else f'{est:.3f}'} ms -> measured "
                     f"{m['latency_ms']:.3f} ms on {m['device']}{ratio}{arena}")
    return lines


def render_text(r: FitResult) -> str:
    lines = [f"fit {r.model} -> {r.target}  (metric {r.metric}, baseline {r.baseline:.3f}, "
             f"max drop {r.max_drop}, optimize {r.goal})", "",
             table(HEADERS, candidate_rows(r, error_width=70), "lrrrrrll"), ""]
    lines += [f"{c.name}: {c.error}" for c in r.candidates if c.error and len(c.error) > 70]
    if r.winner:
        lines.append(f"winner: {r.winner.name}, {r.winner.flash_bytes:,} B flash, {r.winner.ram_bytes:,} B RAM, "
                     f"{r.metric} {r.winner.metric:.3f} (drop {r.winner.drop:+.3f})")
        if r.winner.memory_plan:
            lines.append(f"memory plan: {r.winner.memory_plan}")
    else:
        lines.append(f"NOTHING FITS {r.target} within a drop of {r.max_drop}")
        if r.closest:
            c = r.closest
            over = [f"{k} over by {b['used'] - b['limit']:,} {b['unit']}" for k, b in c.budgets.items()
                    if not b["fits"]]
            if c.drop is not None and not c.within_drop:
                over.append(f"{r.metric} drop {c.drop:.3f} > {r.max_drop}")
            lines.append(f"closest: {c.name}: " + "; ".join(over))
    kinds = sorted({c.latency_kind for c in r.candidates if c.latency_kind})
    for kind in kinds:
        lines.append(f"latency: {kind}")
    lines += [f"estimate vs measurement: {line}" for line in measured_lines(r)]
    if r.layer_errors:
        worst = ", ".join(f"{e['layer']} ({e['added']:.3f})" for e in r.layer_errors[:3])
        lines.append(f"per-layer int8 error, worst first (added): {worst}  (report.md has every layer)")
    for n in r.notes:
        lines.append(f"note: {n}")
    if r.out_dir:
        lines.append(f"wrote {r.out_dir}/ (report.json, report.md"
                     + (f", {r.artifact_path.name}" if r.artifact_path else "") + ")")
    return "\n".join(lines)


def render_markdown(r: FitResult, profile: TargetProfile, has_plot: bool) -> str:
    rows = candidate_rows(r)
    md = [f"# edgekit fit: {Path(r.model).name} → {r.target}", "",
          f"- target: **{profile.name}** — {profile.description}",
          f"- budgets: flash {profile.flash_bytes:,} B, RAM {profile.ram_bytes:,} B"
          + (f", latency {profile.latency_ms} ms" if profile.latency_ms is not None else ""),
          f"- metric: `{r.metric}` on {r.eval_samples} samples of {r.eval_source}; baseline (float) "
          f"{r.baseline:.4f}; allowed drop {r.max_drop}",
          f"- calibration: {r.calibration}",
          f"- goal: smallest `{r.goal}` among candidates that meet every budget and the accuracy bound",
          "", "## Candidates (least to most aggressive)", "",
          "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    md.append("")
    if r.winner:
        md.append(f"**Winner: {r.winner.name}** — the smallest {r.goal} of the candidates that fit "
                  f"every budget within the allowed {r.metric} drop.")
        if r.winner.memory_plan:
            md.append(f"\nMemory plan: {r.winner.memory_plan}.")
    else:
        md.append(f"**Nothing fits.** Closest: {r.closest.name if r.closest else 'none'}.")
    if has_plot:
        md += ["", "![flash vs accuracy](candidates.svg)"]
    if len(r.metrics) > 1:
        md += ["", "## Every metric", "", "| candidate | " + " | ".join(r.metrics) + " |",
               "|---|" + "---|" * len(r.metrics),
               "| float baseline | " + " | ".join(f"{r.baselines.get(m, float('nan')):.4f}" for m in r.metrics) + " |"]
        md += ["| " + c.name + " | " + " | ".join("-" if m not in c.metrics else f"{c.metrics[m]:.4f}"
                                                  for m in r.metrics) + " |" for c in r.candidates]
        md += ["", f"`{r.metrics[0]}` governs the allowed drop."]
    if measured_lines(r):
        md += ["", "## Estimate vs measurement", ""] + [f"- {line}" for line in measured_lines(r)]
    md += method_section(r)
    md += layer_error_section(r)
    from edgekit.report.level3_report import level3_section

    md += level3_section(r)
    kinds = sorted({c.latency_kind for c in r.candidates if c.latency_kind})
    if kinds:
        md += ["", "Latency figures: " + "; ".join(kinds) + ". `est` marks an estimate (rank only), `host` a "
               "timing on the machine that ran the fit, `meas` a measurement on the device (fit --device, or QEMU); "
               "`edgekit bench` measures the device."]
    if r.notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    md.append("")
    return "\n".join(md)


def method_section(r: FitResult) -> list[str]:
    """Per candidate: what its method did, the bytes each step saved, and where it was run and checked."""
    rows = [c for c in r.candidates if c.saved or c.verified or c.detail]
    if not rows:
        return []
    md = ["", "## Bytes saved per method, and where each candidate was verified", ""]
    for c in rows:
        md.append(f"- **{c.name}** (level {c.level}, {c.flash_bytes:,} B)" + (f": {c.detail}" if c.detail else ""))
        for what, n in c.saved.items():
            md.append(f"  - {what}: {n:+,} B" if n < 0 else f"  - {what}: {n:,} B saved")
        for v in c.verified:
            md.append(f"  - verified: {v}")
    return md


def layer_error_section(r: FitResult) -> list[str]:
    if not r.layer_errors:
        return []
    md = ["", "## Per-layer quantization error of the int8 model (worst first)", "",
          f"Method: {r.layer_error_method}.", "", "![per-layer error](layer_error.svg)", "",
          "| # | layer | op | error | added | RMSE / scale | cosine |", "|---|---|---|---|---|---|---|"]
    for rank, e in enumerate(r.layer_errors, 1):
        md.append(f"| {rank} | {e['layer']} | {e['op']} | {e['error']:.4f} | {e['added']:.4f} | "
                  f"{e['rmse_scale']:.3f} | {e['cosine']:.5f} |")
    return md


def render_layer_plot(r: FitResult) -> str | None:
    """Horizontal bars per layer (worst first): the error of its int8 output, and the part it adds."""
    import jinja2

    rows = r.layer_errors
    if not rows:
        return None
    width, left, right, top, bar = 640, 170, 610, 30, 18
    bottom = top + bar * len(rows) + 6
    height = bottom + 40
    hi = max(max(float(e["error"]) for e in rows), 1e-6) * 1.05

    def sx(v: float) -> float:
        return round((v / hi) * (right - left), 1)

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             undefined=jinja2.StrictUndefined, autoescape=True)
    return str(env.get_template("layer_error.svg.j2").render(
        width=width, height=height, left=left, right=right, top=top, bottom=bottom,
        title=f"{Path(r.model).name}: per-layer int8 error (red: added by the layer)",
        xlabel="mean per-channel RMSE / RMS of the float output",
        xticks=[{"pos": round(left + sx(v), 1), "label": f"{v:.3g}"} for v in _ticks(0.0, hi)],
        bars=[{"y": top + i * bar, "h": bar - 4, "name": f"{e['layer']} ({e['op']})"[:28],
               "error": f"{e['error']:.4f}", "added": f"{e['added']:.4f}", "error_w": sx(float(e["error"])),
               "added_w": sx(float(e["added"]))} for i, e in enumerate(rows)]))


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def render_plot(r: FitResult) -> str | None:
    """Flash vs metric of every evaluated candidate, as an SVG rendered from a template (None: no points)."""
    import html

    import jinja2

    points = [c for c in r.candidates if c.metric is not None and c.flash_bytes]
    if not points:
        return None
    width, height, left, right, top, bottom = 640, 400, 70, 610, 30, 350
    xs = [c.flash_bytes / 1024 for c in points]
    ys = [float(c.metric) for c in points if c.metric is not None] + [r.baseline]
    x0, x1 = 0.0, max(xs) * 1.1
    pad = max((max(ys) - min(ys)) * 0.15, abs(max(ys)) * 0.01, 1e-6)
    y0, y1 = min(ys) - pad, max(ys) + pad

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * (right - left)

    def sy(v: float) -> float:
        return bottom - (v - y0) / (y1 - y0) * (bottom - top)

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             undefined=jinja2.StrictUndefined, autoescape=True)
    svg = env.get_template("candidates.svg.j2").render(
        width=width, height=height, left=left, right=right, top=top, bottom=bottom,
        title=f"{Path(r.model).name} -> {r.target}", xlabel="flash (KiB)", ylabel=r.metric,
        xticks=[{"pos": round(sx(v), 1), "label": f"{v:.0f}"} for v in _ticks(x0, x1)],
        yticks=[{"pos": round(sy(v), 1), "label": f"{v:.3g}"} for v in _ticks(y0, y1)],
        baseline_y=round(sy(r.baseline), 1),
        points=[{"x": round(sx(c.flash_bytes / 1024), 1), "y": round(sy(float(c.metric or 0)), 1),
                 "name": html.unescape(c.name),
                 "detail": f"{c.flash_bytes:,} B, {r.metric} {c.metric:.4g}",
                 "color": "#2a9d2a" if r.winner and c.name == r.winner.name else (
                     "#1f77b4" if c.eligible else "#d62728")} for c in points],
    )
    return str(svg)
