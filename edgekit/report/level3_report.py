"""The level-3 search in the fit report: every candidate (proxy and fine-tuned) with its budgets and
held-out drop, and the Pareto front as an SVG (``level3_pareto.svg``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgekit.fitting.types import FitResult

GOAL_AXIS = {"size": ("estimated flash at int8 (KiB)", 1 / 1024), "ram": ("estimated RAM (KiB)", 1 / 1024),
             "latency": ("estimated latency (ms)", 1.0)}


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def level3_section(r: FitResult) -> list[str]:
    s = r.level3
    if not s:
        return []
    trials = s.get("trials", [])
    md = ["", "## Level 3: architecture search", "",
          f"Held-out score: {s.get('why', s.get('metric'))} on {s.get('holdout')} held-out samples of --train "
          f"({s.get('train')} train the candidates); baseline {s.get('baseline_score', 0):.4f}. Budgets below are "
          f"estimates scaled from the original's measured `{s.get('reference_candidate')}` candidate (flash at the "
          "smallest weights the ladder writes, RAM by peak activations, latency by MACs); every "
          "finalist was then converted and measured (its candidates are in the table above, named `<trial>-<rung>`). "
          f"Fine-tunes ran in {s.get('jobs')} worker process(es)"
          + (f"; time budget {s['time_budget_minutes']:g} min" if s.get("time_budget_minutes") else "")
          + (" — **stopped at the time budget**" if s.get("stopped") else "") + ".", "",
          "![level-3 Pareto front](level3_pareto.svg)", "",
          "| trial | architecture | params | MACs | estimates (limit) | proxy drop | tuned drop | status |",
          "|---|---|---|---|---|---|---|---|"]
    for t in trials:
        est = ", ".join(f"{k} {v['estimate']:,} ({v['limit']:,}){'' if v['fits'] else ' over'}"
                        for k, v in t.get("estimates", {}).items())
        md.append(f"| {t['name']}{' (front)' if t.get('front') else ''} | {t['label']} | {t['params']:,} | "
                  f"{t['macs']:,} | {est or '-'} | {_fmt(t.get('proxy_drop'))} | {_fmt(t.get('tuned_drop'))} | "
                  f"{t['status']}{' (cached)' if t.get('cached') else ''} |")
    if s.get("finalists"):
        md += ["", "Finalists (fine-tuned within --max-drop on the held-out data, smallest first): "
               + ", ".join(s["finalists"]) + "."]
    return md


def render_pareto(r: FitResult) -> str | None:
    """Goal estimate vs held-out drop of every trial with a score; the fine-tuned Pareto front as a line."""
    import jinja2

    s = r.level3
    pts = []
    for t in s.get("trials", []) if s else []:
        drop = t.get("tuned_drop") if t.get("tuned_drop") is not None else t.get("proxy_drop")
        if drop is None or t.get("goal_value") is None or t.get("spec", {}).get("origin") == "probe":
            continue
        pts.append((t, float(t["goal_value"]), float(drop), t.get("tuned_drop") is not None))
    if not pts:
        return None
    label, scale = GOAL_AXIS.get(s.get("goal", "size"), ("goal", 1.0))
    width, height, left, right, top, bottom = 640, 400, 70, 610, 30, 350
    xs = [g * scale for _, g, _, _ in pts]
    ys = [d for _, _, d, _ in pts] + [r.max_drop, 0.0]
    x0, x1 = 0.0, max(xs) * 1.1 or 1.0
    y0, y1 = min(ys) - 0.5, max(ys) * 1.05 + 0.5

    def sx(v: float) -> float:
        return round(left + (v - x0) / (x1 - x0) * (right - left), 1)

    def sy(v: float) -> float:
        return round(bottom - (v - y0) / (y1 - y0) * (bottom - top), 1)

    def front(items: list[tuple[float, float]]) -> str:
        best, line = math.inf, []
        for g, d in sorted(items):
            if d < best - 1e-9:
                best = d
                line.append(f"{sx(g * scale)},{sy(d)}")
        return " ".join(line)

    finalists = set(s.get("finalists", []))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             undefined=jinja2.StrictUndefined, autoescape=True)
    return str(env.get_template("level3_pareto.svg.j2").render(
        width=width, height=height, left=left, right=right, top=top, bottom=bottom,
        title=f"{Path(r.model).name} -> {r.target}: level-3 search", xlabel=label,
        ylabel=f"held-out drop ({s.get('metric')})", limit_y=sy(r.max_drop),
        xticks=[{"pos": sx(x0 + (x1 - x0) * i / 4), "label": f"{x0 + (x1 - x0) * i / 4:.3g}"} for i in range(5)],
        yticks=[{"pos": sy(y0 + (y1 - y0) * i / 4), "label": f"{y0 + (y1 - y0) * i / 4:.3g}"} for i in range(5)],
        proxy_front=front([(g, d) for _, g, d, tuned in pts if not tuned]),
        tuned_front=front([(g, d) for _, g, d, tuned in pts if tuned]),
        points=[{"x": sx(g * scale), "y": sy(d), "name": t["name"], "filled": tuned,
                 "detail": f"{t['label']}; {t['params']:,} params; drop {d:.3f}; {t['status']}",
                 "color": "#2a9d2a" if t["name"] in finalists else ("#1f77b4" if tuned else "#888888")}
                for t, g, d, tuned in pts]))
