"""Terminal rendering of reports."""

from __future__ import annotations

from collections.abc import Sequence

from edgekit.analyzer import AnalysisReport


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, row in enumerate(cells):
        parts = []
        for i, c in enumerate(row):
            right = i < len(align) and align[i] == "r"
            parts.append(c.rjust(widths[i]) if right else c.ljust(widths[i]))
        out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _shape(shapes: Sequence[Sequence[int]]) -> str:
    return " ".join("x".join(str(d) for d in s) or "scalar" for s in shapes)


def _cut(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def render_analysis(r: AnalysisReport) -> str:
    g = r.graph
    lines = [
        f"model   {r.model}",
        f"target  {r.target} ({r.runtime}, artifact {r.artifact_kind})",
        f"calib   {r.calibration}",
        "",
    ]
    if g.layers:
        rows: list[tuple[object, ...]] = [
            (la.index, la.op, _shape(la.input_shapes), _shape(la.output_shapes), f"{la.params:,}",
             f"{la.macs:,}", f"{la.weight_bytes:,}")
            for la in g.layers
        ]
        rows.append(("", "TOTAL", "", "", f"{g.params:,}", f"{g.macs:,}", f"{g.weight_bytes:,}"))
        lines += [
            table(["#", "op", "input", "output", "params", "MACs", "weight B"], rows, "rllrrrr"),
            "",
            f"ops     {', '.join(g.ops)}",
            f"dtypes  {', '.join(g.dtypes)}",
        ]
    elif r.params_estimate is not None:
        lines.append(f"params  {r.params_estimate:,} (layers not analysed: the model was not converted)")
    if r.arena_measured is not None and r.measurement is None:
        lines.append(f"arena   {r.arena_measured:,} B measured on the host TFLM interpreter; the firmware reserves "
                     f"{r.ram_bytes:,} B (kTensorArenaSize, measured + margin)")
    if r.firmware is not None:
        lines.append(f"flash   {r.firmware.flash:,} B: .text {r.firmware.text:,} + .data {r.firmware.data:,} of "
                     f"{r.firmware.path} (measured; .bss {r.firmware.bss:,} B)")
    elif r.runtime_code is not None:
        c = r.runtime_code
        total = r.flash_bytes + c.bytes
        lines.append(f"flash   {r.flash_bytes:,} B model + {c.bytes:,} B TFLM runtime code = {total:,} B")
        kernels = ", ".join(f"{op} {n:,}" for op, n in sorted(c.per_op.items(), key=lambda kv: -kv[1]))
        shared = f"; shared code counted once: -{c.shared_saving:,} B" if c.shared_saving else ""
        lines.append(f"        runtime: interpreter {c.interpreter_bytes:,} B + {len(c.per_op)} kernels "
                     f"{c.kernel_bytes:,} B ({kernels}{shared})")
        lines.append(f"        {c.kind}")
    if r.measurement is not None:
        from edgekit.measure.text import render_measurement

        lines += ["", *render_measurement(r.measurement, r.arena_measured)]
    lines.append("")
    brow: list[tuple[object, ...]] = []
    for b in r.budgets:
        if b.unit == "bytes":
            brow.append((b.name, human_bytes(b.used), human_bytes(b.limit),
                         ("+" if b.margin >= 0 else "-") + human_bytes(abs(b.margin)),
                         "fits" if b.fits else "OVER", _cut(b.parts_text or b.note, 90)))
        else:
            brow.append((b.name, b.used, b.limit, b.margin, "fits" if b.fits else "OVER", _cut(b.note)))
    lines.append(table(["budget", "used", "limit", "margin", "verdict", "detail"], brow, "lrrrl"))
    for f in r.findings:
        lines.append(f"unsupported: {f.reason}: {', '.join(f.items)}")
    for blocker in r.blockers:
        if not any(blocker.startswith(f.reason.split(":")[0]) for f in r.findings):
            lines.append(f"runtime: {blocker}")
    for n in r.notes:
        lines.append(f"note: {n}")
    lines.append("")
    lines.append(f"verdict: {'FITS' if r.fits else 'DOES NOT FIT'} {r.target}")
    return "\n".join(lines)
